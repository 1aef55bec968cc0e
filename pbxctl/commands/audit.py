"""`pbxctl audit [--tenant T] [--since WHEN] [--json]` and `pbxctl audit trim [--keep AGE]`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg

from pbx_base.errors import UnknownTenant
from pbxctl.commands._db import add_dsn_argument, run_with_connection
from pbxctl.errors import EXIT_USAGE, CliError, Invalid
from pbxctl.when import parse_age, parse_when
from sorcery_backend.audit import read_audit, trim_audit

__all__ = ["parse_age", "parse_since", "register"]

T = TypeVar("T")


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """An age back from ``now`` (``1h``) or an ISO-8601 time (without an offset: UTC)."""
    return parse_when(text, now or datetime.now(UTC), ago=True)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("audit", help="who changed what, when (the audit trail)")
    p.add_argument("--tenant", help="only this tenant")
    p.add_argument("--since", metavar="WHEN", help="only rows since an age (1h, 7d) or an ISO-8601 time")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    add_dsn_argument(p)
    p.set_defaults(func=_list)
    sub = p.add_subparsers(dest="audit_command", metavar="ACTION")
    t = sub.add_parser("trim", help="delete rows older than the retention")
    t.add_argument(
        "--keep",
        metavar="AGE",
        help="keep this much (30d); default: the database's pbx.audit_keep, else 90d",
    )
    add_dsn_argument(t)
    t.set_defaults(func=_trim)


def _option(name: str, parse: Callable[[str], T], text: str | None) -> T | None:
    if text is None:
        return None
    try:
        return parse(text)
    except ValueError as exc:
        raise CliError(f"{name} {exc}", EXIT_USAGE) from None


def _list(args: argparse.Namespace) -> int:
    since = _option("--since", parse_since, args.since)

    async def body(conn: asyncpg.Connection) -> Any:
        try:
            return await read_audit(conn, tenant=args.tenant, since=since)
        except UnknownTenant as exc:
            raise Invalid(str(exc)) from None

    entries = run_with_connection(args, body)
    if args.json:
        json.dump({"audit": [e.to_json() for e in entries]}, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    for e in entries:
        who = f"{e.actor} ({e.session_role})" if e.actor else e.session_role
        print(f"{e.at.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}\t{e.tenant}\t{who}\t{e.summary()}")
    return 0


def _trim(args: argparse.Namespace) -> int:
    keep = _option("--keep", parse_age, args.keep)

    async def body(conn: asyncpg.Connection) -> int:
        try:
            return await trim_audit(conn, keep)
        except asyncpg.InsufficientPrivilegeError as exc:
            raise Invalid(f"audit: {exc} (rule: tenant admins read the trail, only its owner trims it)") from None

    print(f"audit: {run_with_connection(args, body)} rows trimmed", file=sys.stderr)
    return 0
