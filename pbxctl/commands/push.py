"""`pbxctl push status`: per node, how far the change push is behind."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pbxctl.commands._db import add_dsn_argument, run_with_connection
from sorcery_backend.nodes import push_status

__all__ = ["register"]


def register(subparsers: Any) -> None:
    push = subparsers.add_parser("push", help="the change push to the Asterisk nodes")
    sub = push.add_subparsers(dest="push_command", metavar="ACTION", required=True)
    p = sub.add_parser("status", help="per node: connected, undelivered changes, lag, last error")
    p.add_argument("--json", action="store_true")
    add_dsn_argument(p)
    p.set_defaults(func=_status)


def _status(args: argparse.Namespace) -> int:
    statuses = run_with_connection(args, push_status)
    if args.json:
        print(json.dumps({"nodes": [s.to_json() for s in statuses]}, indent=1))
        return 0
    print("node\tconnected\tundelivered\tlag_s\tlast_error")
    for s in statuses:
        error = f"{s.last_error} ({s.last_error_at:%Y-%m-%d %H:%M:%S})" if s.last_error and s.last_error_at else "-"
        print(f"{s.name}\t{'yes' if s.connected else 'no'}\t{s.undelivered}\t{s.lag_s:.3f}\t{error}")
        for obj, why in sorted(s.refused.items()):
            print(f"  refused {obj}: {why}")
    return 0
