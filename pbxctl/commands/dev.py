"""`pbxctl dev up|down|status|chroot`: the embedded local stack."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import Any

from pbx_base.settings import DEFAULTS, get_settings
from pbxctl.errors import CliError, Invalid, Unreachable

__all__ = ["register"]


def register(subparsers: Any) -> None:
    dev = subparsers.add_parser("dev", help="the embedded local stack (Postgres, Asterisk 22)")
    sub = dev.add_subparsers(dest="dev_command", metavar="ACTION", required=True)
    for name, func, help_text in (
        ("up", _up, "start the stack (idempotent) and print its export lines"),
        ("down", _down, "stop the stack; no process is left behind"),
        ("status", _status, "what runs, and the export lines"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--name", help=f"stack name (default: $PBX_STACK, else {DEFAULTS.stack})")
        if name == "up":
            p.add_argument(
                "--nodes",
                type=int,
                metavar="N",
                help="Asterisk nodes: 1 is the plain stack; 2 to 9 a cluster behind a Kamailio SIP edge "
                "(default: as the stack was made, 1 for a new one)",
            )
        if name == "status":
            p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)
    p = sub.add_parser("chroot", help="build (once) and check the cached Asterisk chroot")
    p.set_defaults(func=_chroot)


def _name(args: argparse.Namespace) -> str:
    return str(args.name or get_settings().stack)


def _guard_root() -> None:
    if os.geteuid() != 0:
        raise CliError("the embedded stack needs root (chroot, mount, a Postgres run as `postgres`)", 3)


def _print_exports(exports: dict[str, str]) -> None:
    for k, v in exports.items():
        print(f"export {k}={shlex.quote(v)}")


def _up(args: argparse.Namespace) -> int:
    from devstack.asterisk import AsteriskError
    from devstack.chroot import ChrootError
    from devstack.kamailio import KamailioError
    from devstack.postgres import PostgresError
    from devstack.services import ServicesError
    from devstack.settings import MAX_NODES
    from devstack.stack import Stack, StackResized

    if args.nodes is not None and not 1 <= args.nodes <= MAX_NODES:
        raise Invalid(f"stack {_name(args)}: --nodes must be 1 to {MAX_NODES}, not {args.nodes}")
    _guard_root()
    try:
        stack = Stack.named(_name(args), args.nodes)
    except StackResized as exc:
        raise Invalid(str(exc)) from None
    try:
        stack.up()
    except (AsteriskError, ChrootError, KamailioError, PostgresError, ServicesError) as exc:
        raise Unreachable(f"stack {_name(args)}: {exc}") from None
    print(f"stack {_name(args)} is up", file=sys.stderr)
    _print_exports(stack.settings.exports())
    return 0


def _down(args: argparse.Namespace) -> int:
    from devstack.stack import Stack

    _guard_root()
    Stack.named(_name(args)).down()
    print(f"stack {_name(args)} is down", file=sys.stderr)
    return 0


def _status(args: argparse.Namespace) -> int:
    from devstack.stack import Stack

    status = Stack.named(_name(args)).status()
    if args.json:
        print(json.dumps(status, indent=1))
    else:
        print(
            f"stack {status['name']}: postgres {status['postgres']}, asterisk {status['asterisk']}"
            f" ({status['asterisk_version']})",
            file=sys.stderr,
        )
        nodes = status.get("nodes")
        for node in nodes if isinstance(nodes, list) else []:
            print(
                f"  node {node['name']}: asterisk {node['asterisk']}, serve {node['serve']}, SIP {node['sip_addr']}",
                file=sys.stderr,
            )
        edge = status.get("edge")
        if isinstance(edge, dict):
            targets = ", ".join(f"{uri} ({flags})" for uri, flags in (edge["dispatching_to"] or {}).items())
            print(
                f"  edge {edge['sip_addr']}: kamailio {edge['kamailio']}, dispatching to {targets or 'nothing'}",
                file=sys.stderr,
            )
        _print_exports(Stack.named(_name(args)).settings.exports())
    return 0


def _chroot(args: argparse.Namespace) -> int:
    from devstack.chroot import ChrootError, asterisk_version, ensure_chroot
    from devstack.stack import chroot_path

    _guard_root()
    try:
        root = ensure_chroot(chroot_path())
    except ChrootError as exc:
        raise Unreachable(str(exc)) from None
    print(f"chroot {root}: {asterisk_version(root)}", file=sys.stderr)
    return 0
