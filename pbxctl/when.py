"""Times on the command line: an age (``90s``, ``30m``, ``1h``, ``7d``, ``2w``) or an ISO-8601 time.

One reading for every command (`audit --since`, `audit trim --keep`, `token create --expires`). An
ISO time without an offset is UTC, as the database and the logs write times.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

__all__ = ["parse_age", "parse_when"]

_AGE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_age(text: str) -> timedelta:
    m = _AGE.match(text.strip())
    if m is None:
        raise ValueError(f"{text!r}: not an age like 30m, 1h, 7d, 2w")
    return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})


def parse_when(text: str, now: datetime, *, ago: bool) -> datetime:
    """An age counted back from ``now`` (``ago``) or forward from it, or an ISO-8601 time."""
    try:
        age = parse_age(text)
    except ValueError:
        pass
    else:
        return now - age if ago else now + age
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r}: neither an age like 1h, 7d nor an ISO-8601 time") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)
