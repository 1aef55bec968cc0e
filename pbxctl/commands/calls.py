"""`pbxctl calls history [--tenant T] [--since WHEN] [--limit N] [--json]`: the call records.

`pbxctl call` acts on live calls through `pbxctl serve`; this reads what the controller recorded of
calls that are over, straight from the database (as `pbxctl audit` reads the audit trail).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import asyncpg

from pbx_base.errors import UnknownTenant
from pbxctl.commands._db import add_dsn_argument, run_with_connection
from pbxctl.commands.audit import parse_since
from pbxctl.errors import EXIT_USAGE, CliError, Invalid
from sorcery_backend.call_history import DEFAULT_LIMIT, MAX_LIMIT, read_calls, summary

__all__ = ["register"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("calls", help="records of the calls the controller handled")
    sub = p.add_subparsers(dest="calls_command", metavar="ACTION", required=True)
    h = sub.add_parser("history", help="calls and their legs, newest first")
    h.add_argument("--tenant", help="only this tenant")
    h.add_argument("--since", metavar="WHEN", help="only calls since an age (1h, 7d) or an ISO-8601 time")
    h.add_argument(
        "--limit", type=int, default=DEFAULT_LIMIT, metavar="N", help=f"at most N calls (default {DEFAULT_LIMIT})"
    )
    h.add_argument("--json", action="store_true", help="print the calls as JSON")
    add_dsn_argument(h)
    h.set_defaults(func=_history)


def _history(args: argparse.Namespace) -> int:
    try:
        since = parse_since(args.since) if args.since is not None else None
    except ValueError as exc:
        raise CliError(f"--since {exc}", EXIT_USAGE) from None
    if not 1 <= args.limit <= MAX_LIMIT:
        raise CliError(f"--limit {args.limit}: out of range (rule: 1 to {MAX_LIMIT})", EXIT_USAGE)

    async def body(conn: asyncpg.Connection) -> list[dict[str, Any]]:
        try:
            return await read_calls(conn, tenant=args.tenant, since=since, limit=args.limit)
        except UnknownTenant as exc:
            raise Invalid(str(exc)) from None

    calls = run_with_connection(args, body)
    if args.json:
        json.dump({"calls": calls}, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    for call in calls:
        print(summary(call))
    return 0
