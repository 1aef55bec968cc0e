"""Database connections for the CLI and services, with the contract's error mapping."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from pbx_base.errors import NotConfigured, Unavailable
from pbx_base.settings import get_settings

__all__ = ["DatabaseUnavailable", "MissingDsn", "connect", "dsn_from", "refusal_message", "service_pool"]


class DatabaseUnavailable(Unavailable, ConnectionError):
    """The database cannot be reached (exit 3)."""


class MissingDsn(NotConfigured, ValueError):
    """Neither --dsn nor PBX_DATABASE_URL was given (exit 2)."""


def dsn_from(explicit: str | None) -> str:
    dsn = explicit or get_settings().database_url
    if not dsn:
        raise MissingDsn("no database: pass --dsn or set PBX_DATABASE_URL")
    return dsn


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to undo: no code on the service pool sets session state (no SET, no advisory lock,
    and the routing listener UNLISTENs before it lets its connection go). asyncpg still rolls back
    an open transaction and drops Python-side listeners before calling this."""


# Every statement on the service pool is a short lookup by key, prepared once per connection by
# asyncpg. Left to `auto`, Postgres kept planning the per-call routing statement afresh on every
# call (its generic plan estimates ten rows for the unnested endpoint array, so it never looks
# cheaper than a custom one): ~40% of the statement's time on an idle node (bench/RESULTS.md).
_SERVICE_SETTINGS = {"plan_cache_mode": "force_generic_plan"}


async def service_pool(dsn: str, *, max_size: int | None = None) -> asyncpg.Pool:
    """The pool of `pbxctl serve` (routing API, call lookups). asyncpg's default release sends
    ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` every time, a second
    round trip per call lookup (0.3-0.6 ms of its ~1 ms on a busy node) that undoes nothing here.
    Its prepared statements run on generic plans (see ``_SERVICE_SETTINGS``). ``max_size``: the
    settings' ``pool_size`` when not given."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=max_size or get_settings().pool_size,
        reset=_keep_session,
        server_settings=_SERVICE_SETTINGS,
    )
    return pool


@asynccontextmanager
async def connect(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        raise DatabaseUnavailable(f"cannot reach the database: {exc}") from None
    try:
        yield conn
    finally:
        await conn.close()


def refusal_message(exc: asyncpg.PostgresError) -> str:
    """One line for a refusal raised by the database's own rules."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    detail = getattr(exc, "detail", None)
    if detail and getattr(exc, "sqlstate", "") != "P0001":
        msg = f"{msg} ({detail.strip()})"
    return msg
