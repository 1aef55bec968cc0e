"""Schema migrations: the numbered SQL files of ``sql/`` applied in order, once each, never edited.

The runner holds an advisory lock so two ``pbxctl db migrate`` never interleave, and records each
file in ``pbx.schema_migrations`` with the SHA-256 of its content, in the same transaction as the
file itself. A file is immutable once released: a change to the schema is a new file. Before it
applies anything the runner compares every recorded checksum with the file of that number and
refuses (:class:`MigrationRefused`, nothing changed) when one differs, when a number holds another
file's name, or when the database has a migration this code does not know (it is newer).

Databases migrated before checksums existed have rows without one. Which content of a file such a
database applied cannot be read from its row: sql/002, 004, 005, 006, 008 and 009 were edited after
their first commit, and a database built in between applied the edited content. So those rows are
trusted on first sight: the first run of this runner records the current file's checksum for them.
That is sound because every content any commit shipped converges: the files are back to their first
content, sql/013 carries their later edits written to apply on either content, and
tests/test_schema_upgrade.py replays the sql/ of every commit that changed it and checks that the
result is the schema of a fresh migrate.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from importlib.resources.abc import Traversable

import asyncpg

from pbx_base import resources
from pbx_base.errors import PbxError

__all__ = ["Migration", "MigrationRefused", "migrate", "migrate_sync", "migrations", "reset"]

_MIGRATION_FILE = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
_LOCK_KEY = 0x70627863  # "pbxc": any constant shared by every migrate run


class MigrationRefused(PbxError):
    """The database's migration record disagrees with the files; the message names the file."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str  # the file name without .sql
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations(sql_dir: Traversable | None = None) -> list[Migration]:
    found = []
    for res in sorted((sql_dir or resources.sql_dir()).iterdir(), key=lambda r: r.name):
        m = _MIGRATION_FILE.match(res.name)
        if m:
            found.append(Migration(int(m.group(1)), res.name.removesuffix(".sql"), res.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError("duplicate migration numbers in sql/")
    return found


def _check(applied: list[asyncpg.Record], files: dict[int, Migration]) -> None:
    for row in applied:
        mig = files.get(row["version"])
        if mig is None:
            raise MigrationRefused(
                f"sql/{row['name']}.sql: applied to this database but unknown to this pbxctl (a newer release?)"
            )
        if row["name"] != mig.name:
            raise MigrationRefused(f"sql/{mig.name}.sql: number {mig.version} was applied as {row['name']}.sql")
        if row["checksum"] is not None and row["checksum"] != mig.checksum:
            raise MigrationRefused(
                f"sql/{mig.name}.sql: changed since it was applied to this database"
                " (put schema changes in a new migration)"
            )


async def migrate(conn: asyncpg.Connection, sql_dir: Traversable | None = None) -> list[str]:
    """Apply the migrations not applied yet; returns the names applied (empty when up to date).

    Raises :class:`MigrationRefused` before changing anything when an applied file changed."""
    files = {m.version: m for m in migrations(sql_dir)}
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        async with conn.transaction():  # a refusal leaves even the record as it was
            await conn.execute(
                """
                CREATE SCHEMA IF NOT EXISTS pbx;
                CREATE TABLE IF NOT EXISTS pbx.schema_migrations (
                    version integer PRIMARY KEY,
                    name text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                );
                -- NULL: applied by a runner older than checksums (see the module's docstring).
                ALTER TABLE pbx.schema_migrations ADD COLUMN IF NOT EXISTS checksum text;
                """
            )
            applied = await conn.fetch("SELECT version, name, checksum FROM pbx.schema_migrations ORDER BY version")
            _check(applied, files)
            trust = [(r["version"], files[r["version"]].checksum) for r in applied if r["checksum"] is None]
            await conn.executemany("UPDATE pbx.schema_migrations SET checksum = $2 WHERE version = $1", trust)
        done = {r["version"] for r in applied}
        for mig in files.values():
            if mig.version in done:
                continue
            async with conn.transaction():
                await conn.execute(mig.sql)
                await conn.execute(
                    "INSERT INTO pbx.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    mig.version,
                    mig.name,
                    mig.checksum,
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
            DROP SCHEMA IF EXISTS kamailio CASCADE;
            DROP SCHEMA IF EXISTS public CASCADE;
            CREATE SCHEMA public;
            GRANT USAGE ON SCHEMA public TO PUBLIC;
            """
        )


async def ensure_login(conn: asyncpg.Connection, user: str, password: str, group: str) -> None:
    """A login role created or given this password, and made a member of ``group``: Asterisk's
    (``pbx_asterisk``: read the realtime views, write ps_contacts) or the SIP edge's
    (``pbx_kamailio``: read its dispatcher view)."""
    async with conn.transaction():
        # Several controllers start at once (compose): the migrations' lock makes one create the
        # role and the others see it, instead of a duplicate-key error from the second CREATE.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", user)
        verb = "ALTER" if exists else "CREATE"
        # format() quotes the name and the password on the server: neither is pasted into SQL here.
        statement = await conn.fetchval(
            f"SELECT format('{verb} ROLE %I LOGIN PASSWORD %L', $1::text, $2::text)", user, password
        )
        await conn.execute(statement)
        await conn.execute(await conn.fetchval("SELECT format('GRANT %I TO %I', $1::text, $2::text)", group, user))


def migrate_sync(dsn: str) -> None:
    """Blocking wrapper for callers outside an event loop (the dev stack)."""

    async def run() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()

    asyncio.run(run())
