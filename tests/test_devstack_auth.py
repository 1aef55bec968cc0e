"""The dev stack's secrets: its Postgres trusts nobody, its stack.json is private (issue #15)."""

from __future__ import annotations

import asyncio
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from devstack.ports import free_port
from devstack.postgres import PostgresCluster
from devstack.settings import StackSettings
from pbx_base.settings import get_settings


@pytest.fixture(scope="module")
def locked() -> Iterator[PostgresCluster]:
    root = Path(tempfile.mkdtemp(prefix="pbx-test-pg-auth-"))
    os.chmod(root, 0o755)
    cluster = PostgresCluster(root=root, port=free_port(), password="s3cret-superuser")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()


def test_a_password_cluster_trusts_nobody(locked: PostgresCluster) -> None:
    hba = (locked.datadir / "pg_hba.conf").read_text()
    rules = [line.split() for line in hba.splitlines() if line.strip() and not line.startswith("#")]
    assert rules and all("trust" not in r for r in rules)
    assert not list(locked.root.glob(".initdb-pw"))

    async def attempt(dsn: str) -> object:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return await conn.fetchval("SELECT current_user")
        finally:
            await conn.close()

    assert asyncio.run(attempt(locked.dsn())) == "postgres"
    with pytest.raises(asyncpg.InvalidPasswordError):
        asyncio.run(attempt(locked.dsn(password="")))
    with pytest.raises(asyncpg.InvalidPasswordError):
        asyncio.run(attempt(locked.dsn(password="guess")))
    # The stack's own tools still work (psql gets the password by environment, not argv).
    assert locked.psql("SELECT 1").strip() == "1"


def test_stack_json_is_private_and_its_url_carries_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PBX_STACKS_DIR", str(tmp_path))
    get_settings.cache_clear()  # the settings are read once per process
    try:
        settings = StackSettings.load_or_create("private")
        path = tmp_path / "private" / "stack.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert f":{settings.pg_password}@" in settings.database_url()
        path.chmod(0o644)
        assert StackSettings.load_or_create("private") == settings
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        get_settings.cache_clear()
