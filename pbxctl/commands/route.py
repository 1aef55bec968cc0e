"""`pbxctl route simulate|explain` (contract section 5)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pbxctl.errors import Invalid

__all__ = ["register"]


def register(subparsers: Any) -> None:
    route = subparsers.add_parser("route", help="routing: simulate a scenario, explain a call")
    sub = route.add_subparsers(dest="route_command", metavar="ACTION", required=True)

    p = sub.add_parser("simulate", help="run a routing scenario on a virtual clock")
    p.add_argument("scenario", type=Path, metavar="SCENARIO.yaml")
    p.add_argument("--json", action="store_true")
    p.add_argument("--horizon", type=float, help="the caller hangs up after S seconds")
    p.set_defaults(func=_simulate)

    p = sub.add_parser("explain", help="the routing tree of one call")
    p.add_argument("--tenant", required=True)
    p.add_argument("--caller", required=True)
    p.add_argument("--called", required=True)
    p.add_argument("--endpoint", help="the PJSIP endpoint the call arrives on (default: the caller's first)")
    p.add_argument("--config", type=Path, help="read the tenant from this declarative file, not the database")
    p.add_argument("--json", action="store_true")
    p.add_argument("--svg", type=Path, metavar="FILE", help="also draw the tree as SVG")
    p.add_argument("--dsn", help="Postgres DSN (default: $PBX_DATABASE_URL)")
    p.set_defaults(func=_explain)


def load_scenario(path: Path) -> dict[str, Any]:
    from sorcery_backend.declarative import ConfigError, load_yaml

    try:
        doc = load_yaml(path.read_text(), str(path))
    except (OSError, ConfigError) as exc:
        raise Invalid(f"scenario {path}: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("call"), dict):
        raise Invalid(f"scenario {path}: needs a `call` mapping (rule: contract section 5)")
    return doc


def _simulate(args: argparse.Namespace) -> int:
    from routing.simulate import simulate

    print_outcome(simulate(load_scenario(args.scenario), args.horizon), args.json)
    return 0


def print_outcome(out: dict[str, Any], as_json: bool) -> None:
    """A call's outcome and timeline (contract section 5): JSON, or one line per event."""
    if as_json:
        json.dump(out, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(f"{out['status']}: {out['result']}")
        for ev in out["timeline"]:
            print("  " + ", ".join(f"{k}={v}" for k, v in ev.items()))


def _explain(args: argparse.Namespace) -> int:
    from routing.explain import explain
    from routing.model import Directory, directory_from_config
    from routing.stage1 import CallRequest
    from routing_store.render import render_svg, render_text

    directory: Directory
    if args.config is not None:
        from sorcery_backend.declarative import ConfigError, load_yaml

        try:
            doc = load_yaml(args.config.read_text(), str(args.config))
        except (OSError, ConfigError) as exc:
            raise Invalid(str(exc)) from None
        tenants = (doc or {}).get("tenants") or {}
        if args.tenant not in tenants:
            raise Invalid(f"tenant {args.tenant}: not in {args.config}")
        directory = directory_from_config(args.tenant, tenants[args.tenant] or {})
    else:
        from pbx_base.errors import UnknownTenant
        from pbxctl.commands._db import run_with_connection
        from routing_store.loader import load_tenant

        async def body(conn: Any) -> Directory:
            try:
                return (await load_tenant(conn, args.tenant)).directory
            except UnknownTenant:
                raise Invalid(f"tenant {args.tenant}: unknown tenant") from None

        directory = run_with_connection(args, body)
    kwargs: dict[str, Any] = {} if args.endpoint is None else {"endpoint": args.endpoint}
    tree = explain(directory, CallRequest(args.tenant, args.caller, args.called, **kwargs))
    if args.svg is not None:
        args.svg.write_text(render_svg(tree))
    if args.json:
        json.dump(tree, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_text(tree))
    return 0
