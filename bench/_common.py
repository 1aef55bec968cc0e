"""Helpers shared by the bench scripts: a private Postgres, timing and percentiles."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devstack.ports import free_port
from devstack.postgres import PostgresCluster
from sorcery_backend.schema import migrate_sync

__all__ = ["percentile", "private_postgres", "timed"]


# The benches dial through the node's own contexts (pbx-dial-test: a plain Dial(), pbx-ari-floor),
# which the fences refuse as reserved: the operator's override for a lab stack, as tests/stack.py.
def percentile(samples: list[float], p: float) -> float:
    s = sorted(samples)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


@contextmanager
def private_postgres(dsn: str | None = None) -> Iterator[str]:
    """A migrated database: the given DSN, or a throwaway cluster made for this run."""
    if dsn:
        migrate_sync(dsn)
        yield dsn
        return
    root = Path(tempfile.mkdtemp(prefix="pbx-bench-pg-"))
    os.chmod(root, 0o755)
    cluster = PostgresCluster(root=root, port=free_port())
    cluster.start()
    try:
        cluster.create_database("bench")
        migrate_sync(cluster.dsn("bench"))
        yield cluster.dsn("bench")
    finally:
        cluster.destroy()


@contextmanager
def timed() -> Iterator[list[float]]:
    out: list[float] = []
    t0 = time.perf_counter()
    yield out
    out.append(time.perf_counter() - t0)


def median(xs: list[float]) -> float:
    return statistics.median(xs)
