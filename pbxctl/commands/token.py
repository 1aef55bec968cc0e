"""`pbxctl token create|list|revoke`: bearer tokens of `pbxctl serve`'s HTTP API.

A token is printed once, by `create`; the database keeps only its hash (http_api/tokens.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

import asyncpg

from http_api.tokens import TokenInfo, UnknownToken, create_token, list_tokens, revoke_token
from pbx_base.errors import InvalidInput
from pbxctl.commands._db import add_dsn_argument, run_with_connection
from pbxctl.errors import Invalid
from pbxctl.when import parse_when

__all__ = ["parse_expiry", "register"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("token", help="bearer tokens of the HTTP API (pbxctl serve)")
    sub = p.add_subparsers(dest="token_command", required=True)

    create = sub.add_parser("create", help="make a token and print it (once: only its hash is kept)")
    create.add_argument("--name", required=True, help="the token's name (unique among active tokens)")
    create.add_argument("--tenant", help="scope it to this tenant's calls and routing (default: operator-wide)")
    create.add_argument("--expires", metavar="WHEN", help="a duration (90d, 12h, 30m) or an ISO date/time (UTC)")
    create.add_argument("--json", action="store_true")
    add_dsn_argument(create)
    create.set_defaults(func=_create)

    ls = sub.add_parser("list", help="every token: name, tenant, created, expires, revoked (never the token)")
    ls.add_argument("--json", action="store_true")
    add_dsn_argument(ls)
    ls.set_defaults(func=_list)

    revoke = sub.add_parser("revoke", help="revoke the active token of that name")
    revoke.add_argument("name")
    add_dsn_argument(revoke)
    revoke.set_defaults(func=_revoke)


def parse_expiry(text: str, now: dt.datetime) -> dt.datetime:
    """`--expires`: a duration from `now` or an absolute date/time (naive = UTC), in the future."""
    try:
        when = parse_when(text, now, ago=False)
    except ValueError:
        raise Invalid(f"--expires {text}: expected a duration (90d, 12h, 30m, 45s) or an ISO date/time") from None
    if when <= now:
        raise Invalid(f"--expires {text}: not in the future")
    return when


def _create(args: argparse.Namespace) -> int:
    now = dt.datetime.now(dt.UTC)
    expires = parse_expiry(args.expires, now) if args.expires else None

    async def body(conn: asyncpg.Connection) -> str:
        try:
            return await create_token(conn, args.name, args.tenant, expires)
        except InvalidInput as exc:
            raise Invalid(str(exc)) from None

    token = run_with_connection(args, body)
    if args.json:
        out = {"name": args.name, "tenant": args.tenant, "expires_at": expires.isoformat() if expires else None}
        print(json.dumps({**out, "token": token}))
    else:
        print(token)
    return 0


def _list(args: argparse.Namespace) -> int:
    tokens: list[TokenInfo] = run_with_connection(args, list_tokens)
    if args.json:
        print(json.dumps([t.as_json() for t in tokens]))
        return 0
    for t in tokens:
        row = t.as_json()
        state = f"revoked {row['revoked_at']}" if t.revoked_at else f"expires {row['expires_at'] or 'never'}"
        print(f"{t.name}\t{t.tenant or '(operator)'}\tcreated {row['created_at']}\t{state}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    async def body(conn: asyncpg.Connection) -> None:
        try:
            await revoke_token(conn, args.name)
        except UnknownToken as exc:
            raise Invalid(str(exc)) from None

    run_with_connection(args, body)
    return 0
