"""`pbxctl apply|plan|export`: the declarative configuration (contract sections 2-4)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import asyncpg

from pbxctl.actor import cli_actor
from pbxctl.commands._db import add_dsn_argument, run_with_connection
from pbxctl.errors import Invalid
from sorcery_backend.apply import apply_config
from sorcery_backend.db import refusal_message
from sorcery_backend.declarative import ConfigError, load_config
from sorcery_backend.export import UnknownTenant, export

__all__ = ["register"]


def register(subparsers: Any) -> None:
    for name, dry_run, help_text in (
        ("apply", False, "converge the database to FILE in one transaction"),
        ("plan", True, "print the change set FILE would make, change nothing"),
    ):
        p = subparsers.add_parser(name, help=help_text)
        p.add_argument("file", type=Path, metavar="FILE")
        p.add_argument("--json", action="store_true", help="print the change set as JSON")
        add_dsn_argument(p)
        p.set_defaults(func=_apply, dry_run=dry_run)

    p = subparsers.add_parser("export", help="print what Asterisk sees")
    p.add_argument("--tenant", help="only this tenant")
    p.add_argument("--json", action="store_true", help="JSON output (the only format)")
    p.add_argument(
        "--show-secrets",
        action="store_true",
        help="print passwords and digests instead of <redacted> (for the operator)",
    )
    add_dsn_argument(p)
    p.set_defaults(func=_export)


def _apply(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        raise Invalid(str(exc)) from None

    async def body(conn: asyncpg.Connection) -> Any:
        try:
            return await apply_config(conn, config, dry_run=args.dry_run, actor=cli_actor())
        except asyncpg.PostgresError as exc:
            # Every refusal the database raises (its rules, a privilege, a limit) is one line and
            # nothing changed: the transaction is gone.
            raise Invalid(_refusal(exc)) from None

    changes = run_with_connection(args, body)
    verb = "would change" if args.dry_run else "applied"
    print(f"{verb}: {changes.summary()}", file=sys.stderr)
    if args.json:
        json.dump(changes.to_json(), sys.stdout, indent=1)
        sys.stdout.write("\n")
    return 0


def _refusal(exc: asyncpg.PostgresError) -> str:
    """The database's refusal in one line, without a check constraint's "Failing row contains
    (...)": that detail echoes the row, which may hold a password."""
    if (getattr(exc, "detail", None) or "").startswith("Failing row contains"):
        exc.detail = None
    return " ".join(refusal_message(exc).split())


def _export(args: argparse.Namespace) -> int:
    async def body(conn: asyncpg.Connection) -> Any:
        try:
            return await export(conn, args.tenant, show_secrets=args.show_secrets)
        except UnknownTenant:
            raise Invalid(f"tenant {args.tenant}: unknown tenant") from None
        except asyncpg.InsufficientPrivilegeError as exc:
            raise Invalid(f"export: {_refusal(exc)} (rule: export reads what Asterisk reads)") from None

    json.dump(run_with_connection(args, body), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0
