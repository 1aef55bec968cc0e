"""Shared plumbing for commands that talk to the database."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from pbxctl.errors import EXIT_USAGE, CliError, Invalid, Unreachable
from sorcery_backend.db import DatabaseUnavailable, MissingDsn, connect, dsn_from, refusal_message

__all__ = ["add_dsn_argument", "run_with_connection"]

T = TypeVar("T")


def add_dsn_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dsn", help="Postgres DSN (default: $PBX_DATABASE_URL)")


def run_with_connection(args: argparse.Namespace, body: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """Run ``body`` with a connection, mapping failures onto the contract's exit codes."""
    try:
        dsn = dsn_from(getattr(args, "dsn", None))
    except MissingDsn as exc:
        raise CliError(str(exc), EXIT_USAGE) from None

    async def go() -> T:
        async with connect(dsn) as conn:
            return await body(conn)

    try:
        return asyncio.run(go())
    except DatabaseUnavailable as exc:
        raise Unreachable(str(exc)) from None
    except (asyncpg.IntegrityConstraintViolationError, asyncpg.RaiseError, asyncpg.DataError) as exc:
        raise Invalid(refusal_message(exc)) from None
    except asyncpg.UndefinedTableError as exc:
        raise CliError(f"the schema is missing or outdated ({exc}): run `pbxctl db migrate`") from None
    except (asyncpg.SerializationError, asyncpg.DeadlockDetectedError) as exc:
        raise Invalid(f"refused: a concurrent change conflicts ({exc}); nothing was changed") from None
