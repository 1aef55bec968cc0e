"""Ports on 127.0.0.1 for the dev stacks, the test run and sipp, never handed out twice.

A port found free by a bind check can be taken before its user binds it: a live play once failed
with sipp's "Unable to bind main socket, errno = 98". Two things close that gap:

- ports come from ``RANGE``, below the kernel's ephemeral range (32768 and up: every bind to
  port 0 and every outgoing connection takes its port there) and below the stacks' RTP ranges
  (see :func:`rtp_range`), so neither the kernel nor Asterisk hands one out behind our back;
- every port handed out is written, under an exclusive lock, to one reservation file shared by
  every process on the machine, and is not handed out again while its process lives, nor for
  ``LEASE_S`` after (a stack's ports outlive the `dev up` that chose them).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

__all__ = ["LEASE_S", "RANGE", "PortRegistry", "free_port", "port_free", "rtp_range"]

Kind = Literal["tcp", "udp", "both"]

RANGE = range(10000, 20000)
LEASE_S = 3600.0
_RTP_BASE, _RTP_BLOCK, _RTP_BLOCKS = 20000, 100, 127  # 20000-32699: below the ephemeral range


def port_free(port: int, kind: Kind = "tcp", host: str = "127.0.0.1") -> bool:
    """Whether a listener of ``kind`` could bind host:port now."""
    types = {"tcp": [socket.SOCK_STREAM], "udp": [socket.SOCK_DGRAM], "both": [socket.SOCK_STREAM, socket.SOCK_DGRAM]}
    for sock_type in types[kind]:
        with socket.socket(socket.AF_INET, sock_type) as s:
            if sock_type == socket.SOCK_STREAM:
                # As servers bind: a port in TIME_WAIT from an earlier run is free to them.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PortRegistry:
    """The reservation file (``ports.json``, guarded by ``ports.lock``) in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, list[float]]]:
        self.directory.mkdir(parents=True, exist_ok=True)
        data_file = self.directory / "ports.json"
        with open(self.directory / "ports.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                try:
                    held: dict[str, list[float]] = json.loads(data_file.read_text())
                except (OSError, ValueError):
                    held = {}
                yield held
                tmp = data_file.with_suffix(".tmp")
                tmp.write_text(json.dumps(held))
                tmp.replace(data_file)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def reserve(self, kind: Kind = "tcp") -> int:
        """A port free for ``kind`` now that no other caller was given within the lease."""
        now = time.time()
        with self._locked() as held:
            for key, (pid, at) in list(held.items()):
                if now - at > LEASE_S and not _alive(int(pid)):
                    del held[key]
            candidates = [p for p in RANGE if str(p) not in held]
            random.shuffle(candidates)
            for port in candidates[:500]:
                if port_free(port, kind):
                    held[str(port)] = [os.getpid(), now]
                    return port
        raise OSError(f"no free {kind} port on 127.0.0.1 in {RANGE.start}-{RANGE.stop - 1}")


_REGISTRY = PortRegistry(Path(tempfile.gettempdir()) / "pbx-ports")


def free_port(kind: Kind = "tcp") -> int:
    """A port on 127.0.0.1 for a listener of ``kind``, reserved machine-wide (see the module doc)."""
    return _REGISTRY.reserve(kind)


def rtp_range() -> tuple[int, int]:
    """A block of RTP ports for a stack's Asterisk (it skips a port in use by itself)."""
    start = _RTP_BASE + (free_port() % _RTP_BLOCKS) * _RTP_BLOCK
    return start, start + _RTP_BLOCK - 2
