"""`pbxctl tenant|template|endpoint|extension ...`: one object at a time, through `apply`'s validation.

Each command edits the tenant's document (sorcery_backend.edit) and applies it in one transaction;
`--json` prints the change set it caused (contract section 4), a summary goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import asyncpg

from pbx_base.errors import UnknownTenant
from pbxctl.actor import cli_actor
from pbxctl.commands._db import add_dsn_argument, run_with_connection
from pbxctl.errors import EXIT_USAGE, CliError, Invalid
from sorcery_backend.declarative import ConfigError, load_yaml
from sorcery_backend.edit import (
    Edit,
    EditRefused,
    TenantDoc,
    delete_key,
    edit_tenant,
    existing,
    set_fields,
    set_forward,
    set_member_active,
    set_password,
)

__all__ = ["parse_assignment", "register"]


def parse_assignment(text: str) -> tuple[str, Any]:
    """KEY=VALUE; a value in [...] or {...} is YAML (lists, rank mappings), an empty one unsets."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ValueError(f"{text!r}: expected KEY=VALUE")
    if raw == "":
        return key, None
    # Only brackets go through YAML: a plain value stays a string (`!all,ulaw` is a YAML tag).
    return key, load_yaml(raw, key) if raw[0] in "[{" else raw


def _parser(sub: Any, name: str, help_text: str, *args: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
    for a in args:
        p.add_argument(a)
    p.add_argument("--json", action="store_true", help="print the change set as JSON")
    add_dsn_argument(p)
    return p


def register(subparsers: Any) -> None:
    sub = subparsers.add_parser("tenant", help="create or delete a tenant").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    p = _parser(sub, "create", "create an empty tenant", "tenant")
    p.add_argument("--domain", required=True, help="its SIP domain")
    p.set_defaults(func=_tenant_create)
    p = _parser(sub, "delete", "delete a tenant and everything in it", "tenant")
    p.add_argument("--yes", action="store_true", help="required: the whole tenant goes")
    p.set_defaults(func=_tenant_delete)

    for kind, example in (("endpoint", "templates=[base]"), ("template", "parents=[base]")):
        sub = subparsers.add_parser(kind, help=f"edit one {kind}").add_subparsers(
            dest="action", metavar="ACTION", required=True
        )
        p = _parser(sub, "set", f"create or change one {kind}", "tenant", "name")
        p.add_argument("fields", nargs="*", metavar="KEY=VALUE", help=f"{example} endpoint.context=x aor.x= ...")
        p.set_defaults(func=_pjsip_set, group=f"{kind}s")
        _parser(sub, "delete", f"delete one {kind}", "tenant", "name").set_defaults(
            func=_pjsip_delete, group=f"{kind}s"
        )
        if kind == "endpoint":
            p = _parser(sub, "passwd", "set an endpoint's auth password", "tenant", "name")
            p.add_argument(
                "--password-env",
                default="PBX_ENDPOINT_PASSWORD",
                metavar="VAR",
                help="environment variable holding the password (default PBX_ENDPOINT_PASSWORD; "
                "never on the command line)",
            )
            p.set_defaults(func=_endpoint_passwd)

    sub = subparsers.add_parser("extension", help="edit one extension").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    p = _parser(sub, "set", "create or change an extension", "tenant", "number")
    p.add_argument("fields", nargs="*", metavar="KEY=VALUE", help="type=simple name=Alice endpoints=[1001] ...")
    p.set_defaults(func=_extension_set)
    p = _parser(sub, "forward", "set or clear an extension's forward", "tenant", "number")
    p.add_argument("--mode", choices=("always", "busy", "unavailable"))
    p.add_argument("--to", metavar="NUMBER")
    p.add_argument("--delay-ms", type=int, default=0)
    p.add_argument("--off", action="store_true", help="clear the forward")
    p.set_defaults(func=_extension_forward)
    _parser(sub, "delete", "delete an extension", "tenant", "number").set_defaults(func=_extension_delete)
    member = sub.add_parser("member", help="pause or resume a rank member").add_subparsers(
        dest="member_action", metavar="ACTION", required=True
    )
    for name, active in (("pause", False), ("resume", True)):
        p = _parser(member, name, f"{name} MEMBER in the extension's ranks", "tenant", "number", "member")
        p.set_defaults(func=_extension_member, active=active)


def _run(args: argparse.Namespace, label: str, edit: Edit) -> int:
    async def body(conn: asyncpg.Connection) -> Any:
        try:
            return await edit_tenant(conn, args.tenant, edit, actor=cli_actor())
        except (ConfigError, EditRefused, UnknownTenant) as exc:
            raise Invalid(str(exc)) from None
        except asyncpg.InsufficientPrivilegeError as exc:
            raise Invalid(f"{label}: {exc} (rule: a tenant admin edits its own tenants only)") from None

    changes = run_with_connection(args, body)
    print(f"{label}: applied: {changes.summary()}", file=sys.stderr)
    if args.json:
        json.dump(changes.to_json(), sys.stdout, indent=1)
        sys.stdout.write("\n")
    return 0


def _assignments(args: argparse.Namespace) -> list[tuple[str, Any]]:
    try:
        return [parse_assignment(f) for f in args.fields]
    except (ValueError, ConfigError) as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def _tenant_create(args: argparse.Namespace) -> int:
    def edit(doc: TenantDoc | None) -> TenantDoc:
        if doc is not None:
            raise EditRefused(f"tenant {args.tenant}: already exists (rule: create makes a new tenant)")
        return {"domain": args.domain}

    return _run(args, f"tenant {args.tenant}", edit)


def _tenant_delete(args: argparse.Namespace) -> int:
    if not args.yes:
        raise CliError(f"tenant {args.tenant}: deleting a tenant deletes everything in it: pass --yes", EXIT_USAGE)

    def edit(doc: TenantDoc | None) -> None:
        existing(doc, args.tenant)

    return _run(args, f"tenant {args.tenant}", edit)


def _object_edit(args: argparse.Namespace, group: str, key: str, change: Callable[[dict[str, Any], str], None]) -> int:
    label = f"{group[:-1]} {args.tenant}/{key}"

    def edit(doc: TenantDoc | None) -> TenantDoc:
        doc = existing(doc, args.tenant)
        change(doc.setdefault(group, {}), label)
        return doc

    return _run(args, label, edit)


def _pjsip_set(args: argparse.Namespace) -> int:
    fields = _assignments(args)
    return _object_edit(
        args, args.group, args.name, lambda g, label: set_fields(g.setdefault(args.name, {}), fields, label)
    )


def _endpoint_passwd(args: argparse.Namespace) -> int:
    password = os.environ.get(args.password_env)
    if not password:
        raise Invalid(
            f"endpoint {args.tenant}/{args.name}: the password is read from ${args.password_env}, which is not set"
        )

    def change(group: dict[str, Any], label: str) -> None:
        if args.name not in group:
            raise EditRefused(f"{label}: no such endpoint (rule: passwd changes an existing endpoint)")
        set_password(group[args.name], password)

    return _object_edit(args, "endpoints", args.name, change)


def _pjsip_delete(args: argparse.Namespace) -> int:
    return _object_edit(args, args.group, args.name, lambda g, label: delete_key(g, args.name, label))


def _extension_set(args: argparse.Namespace) -> int:
    fields = _assignments(args)
    return _object_edit(
        args, "extensions", args.number, lambda g, label: set_fields(g.setdefault(args.number, {}), fields, label)
    )


def _extension_of(group: dict[str, Any], number: str, label: str) -> dict[str, Any]:
    if number not in group:
        raise EditRefused(f"{label}: no such extension (rule: only existing extensions are changed)")
    ext: dict[str, Any] = group[number]
    return ext


def _extension_forward(args: argparse.Namespace) -> int:
    if args.off == bool(args.mode or args.to):
        raise CliError("extension forward: give --mode and --to, or --off", EXIT_USAGE)
    if not args.off and not (args.mode and args.to):
        raise CliError("extension forward: --mode and --to go together", EXIT_USAGE)
    forward = None if args.off else {"mode": args.mode, "to": args.to, "delay_ms": args.delay_ms}
    return _object_edit(
        args, "extensions", args.number, lambda g, label: set_forward(_extension_of(g, args.number, label), forward)
    )


def _extension_member(args: argparse.Namespace) -> int:
    return _object_edit(
        args,
        "extensions",
        args.number,
        lambda g, label: set_member_active(_extension_of(g, args.number, label), args.member, args.active, label),
    )


def _extension_delete(args: argparse.Namespace) -> int:
    return _object_edit(args, "extensions", args.number, lambda g, label: delete_key(g, args.number, label))
