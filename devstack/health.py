"""Waiting for a process of a stack to become healthy, and the log lines an error shows."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["log_tail", "wait_healthy"]


def log_tail(path: Path, lines: int = 6) -> str:
    """The last ``lines`` lines of a log, on one line (for an error message)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return " | ".join(x.strip() for x in text.strip().splitlines()[-lines:]) or "(empty log)"


def wait_healthy(
    what: str,
    problem: Callable[[], str | None],
    timeout: float,
    *,
    log: Path,
    error: type[Exception],
    ended: Callable[[], str | None] = lambda: None,
    interval: float = 0.1,
) -> None:
    """Until ``problem()`` is None; raises ``error`` naming ``what``, the last problem and the log
    tail after ``timeout`` s, or at once when ``ended()`` says how the process ended."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        how = ended()
        if how is not None:
            raise error(f"{what} {how} at start: {log_tail(log)}")
        found = problem()
        if found is None:
            return
        last = found
        time.sleep(interval)
    raise error(f"{what} not healthy after {timeout:g}s ({last}): {log_tail(log)}")
