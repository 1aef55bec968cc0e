"""Waiting for a process of a stack: healthy after its start, gone after its stop; the log lines an
error shows."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["log_tail", "wait_gone", "wait_healthy"]


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


def wait_gone(pid: int, running: Callable[[], bool], timeout: float) -> None:
    """Until ``running()`` is false for a process asked to stop; after ``timeout`` s it is killed
    (-9), as a stop must never leave a process behind."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and running():
        time.sleep(0.05)
    if running():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while running():
            time.sleep(0.05)
