"""`pbxctl db migrate|reset`."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import asyncpg

from pbx_base.settings import get_settings
from pbxctl.commands._db import add_dsn_argument, run_with_connection
from pbxctl.errors import EXIT_USAGE, CliError, Unreachable
from sorcery_backend.schema import MigrationRefused, ensure_login, migrate, reset

__all__ = ["register"]


def register(subparsers: Any) -> None:
    db = subparsers.add_parser("db", help="schema management")
    sub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)

    p = sub.add_parser(
        "migrate",
        help="create or upgrade the schema (idempotent); with PBX_ASTERISK_DB_PASSWORD set, also the login "
        "role Asterisk reads with (PBX_ASTERISK_DB_USER), and with PBX_KAMAILIO_DB_PASSWORD the SIP edge's "
        "(PBX_KAMAILIO_DB_USER)",
    )
    p.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to SECONDS for the database to accept connections (a container starting beside it)",
    )
    add_dsn_argument(p)
    p.set_defaults(func=_migrate)

    p = sub.add_parser("reset", help="drop and recreate everything in the database (tests only)")
    add_dsn_argument(p)
    p.add_argument("--yes", action="store_true", help="really drop everything")
    p.set_defaults(func=_reset)


def _logins() -> list[tuple[str, str, str, str]]:
    """The login roles to provision: (user, password, group, who reads with it), those with a password set."""
    s = get_settings()
    wanted = [
        (s.asterisk_db_user, s.asterisk_db_password.get_secret_value(), "pbx_asterisk", "Asterisk"),
        (s.kamailio_db_user, s.kamailio_db_password.get_secret_value(), "pbx_kamailio", "the SIP edge"),
    ]
    return [login for login in wanted if login[1]]


def _migrate(args: argparse.Namespace) -> int:
    logins = _logins()

    async def body(conn: asyncpg.Connection) -> list[str]:
        applied = await migrate(conn)
        for user, password, group, _ in logins:
            await ensure_login(conn, user, password, group)
        return applied

    deadline = time.monotonic() + args.wait
    while True:
        try:
            applied = run_with_connection(args, body)
            break
        except MigrationRefused as exc:
            raise CliError(str(exc)) from None
        except Unreachable:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)
    print(f"applied {', '.join(applied)}" if applied else "schema is up to date", file=sys.stderr)
    for user, _, _, reader in logins:
        print(f"login role {user} is ready for {reader}", file=sys.stderr)
    return 0


def _reset(args: argparse.Namespace) -> int:
    if not args.yes:
        raise CliError("db reset drops every table: pass --yes to confirm", EXIT_USAGE)

    async def body(conn: asyncpg.Connection) -> None:
        await reset(conn)
        await migrate(conn)

    run_with_connection(args, body)
    print("database reset and migrated", file=sys.stderr)
    return 0
