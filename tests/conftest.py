"""Fixtures shared by the suite. The suite starts its own services, never the system's:

- ``pg``: a private Postgres cluster for the whole session (initdb in a temp dir, free port).
- ``db``: a fresh, migrated database per test, cloned from a template migrated once.
- ``stack``: the embedded real stack (Postgres + Asterisk 22 in the sid chroot), see tests/stack.py.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.ports import free_port
from devstack.postgres import PostgresCluster
from sorcery_backend.schema import migrate_sync

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("PBX_SHARED_DIR") or REPO.parent / "shared")


pytest_plugins = ["stack", "compose_build"]

_db_counter = itertools.count()


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresCluster]:
    # Not under pytest's tmp dir: that one is private to root, and the server runs as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="pbx-test-pg-"))
    os.chmod(root, 0o755)
    cluster = PostgresCluster(root=root, port=free_port())
    cluster.start()
    cluster.create_database("pbx_template")
    migrate_sync(cluster.dsn("pbx_template"))
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def db(pg: PostgresCluster) -> Iterator[str]:
    """DSN of a fresh database with the schema migrated."""
    name = f"t{os.getpid()}_{next(_db_counter)}"
    pg.psql(f'CREATE DATABASE "{name}" TEMPLATE pbx_template')
    try:
        yield pg.dsn(name)
    finally:
        pg.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "tools" / "check-scenarios").exists():
        pytest.fail(f"shared/ not found at {SHARED}: set PBX_SHARED_DIR")
    return SHARED
