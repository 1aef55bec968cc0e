"""Schema migrations: the numbered SQL files in ``sql/`` applied in order, once each.

The runner holds an advisory lock so two ``pbxctl db migrate`` never interleave, and records each
file in ``pbx.schema_migrations`` in the same transaction as the file itself.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

__all__ = ["SQL_DIR", "Migration", "migrate", "migrate_sync", "migrations", "reset"]

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
_MIGRATION_FILE = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
_LOCK_KEY = 0x70627863  # "pbxc": any constant shared by every migrate run


@dataclass(frozen=True)
class Migration:
    version: int
    path: Path

    @property
    def name(self) -> str:
        return self.path.stem


def migrations(sql_dir: Path = SQL_DIR) -> list[Migration]:
    found = []
    for path in sorted(sql_dir.iterdir()):
        m = _MIGRATION_FILE.match(path.name)
        if m:
            found.append(Migration(int(m.group(1)), path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration numbers in {sql_dir}")
    return found


async def migrate(conn: asyncpg.Connection, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply the migrations not applied yet; returns the names applied (empty when up to date)."""
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            """
            CREATE SCHEMA IF NOT EXISTS pbx;
            CREATE TABLE IF NOT EXISTS pbx.schema_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            );
            """
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM pbx.schema_migrations")}
        for mig in migrations(sql_dir):
            if mig.version in done:
                continue
            async with conn.transaction():
                await conn.execute(mig.path.read_text())
                await conn.execute(
                    "INSERT INTO pbx.schema_migrations (version, name) VALUES ($1, $2)", mig.version, mig.name
                )
            applied_now.append(mig.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied_now


async def reset(conn: asyncpg.Connection) -> None:
    """Drop everything the project owns in this database (tests and dev only)."""
    async with conn.transaction():
        await conn.execute(
            """
            DROP SCHEMA IF EXISTS pbx CASCADE;
            DROP SCHEMA IF EXISTS public CASCADE;
            CREATE SCHEMA public;
            GRANT USAGE ON SCHEMA public TO PUBLIC;
            """
        )


def migrate_sync(dsn: str) -> None:
    """Blocking wrapper for callers outside an event loop (the dev stack)."""

    async def run() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()

    asyncio.run(run())
