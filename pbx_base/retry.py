"""The one retry delay of the project: capped exponential backoff with optional jitter.

Every reconnect loop (the pusher's database and AMI sessions, the routing cache's LISTEN
connection, the ARI event stream) asks it how long to wait before its next attempt.
"""

from __future__ import annotations

import dataclasses

__all__ = ["Backoff"]


@dataclasses.dataclass(frozen=True)
class Backoff:
    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    # Up to this fraction of each delay is taken off at random, so that processes restarted
    # together do not all knock on a restarted server at the same instant.
    jitter: float = 0.5
    # A session that stayed up this long starts the next outage from ``initial`` again; a server
    # that accepts and drops at once keeps climbing instead of being hammered.
    reset_after: float = 30.0

    def delay(self, attempt: int, rand: float = 0.0) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based); ``rand`` in [0, 1)."""
        # The exponent is capped so a long outage cannot overflow the float.
        base = min(self.maximum, self.initial * self.factor ** min(attempt, 64))
        return float(base * (1.0 - self.jitter * rand))
