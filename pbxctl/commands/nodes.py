"""`pbxctl nodes add|list|remove`: the Asterisk nodes the pusher delivers changes to and, for those
with a SIP address, the cluster's SIP edge dispatches to: after a change the edge reloads its node
list over its RPC socket (``PBX_KAMAILIO_RPC``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import asyncpg

from pbx_base.settings import get_settings
from pbxctl.commands._db import add_dsn_argument, run_with_connection
from pbxctl.errors import Invalid, Unreachable
from sorcery_backend.kamailio_rpc import EdgeRefused, EdgeUnreachable, reload_dispatcher
from sorcery_backend.nodes import NodeRefused, add_node, list_nodes, remove_node

__all__ = ["register"]


def register(subparsers: Any) -> None:
    nodes = subparsers.add_parser("nodes", help="Asterisk nodes that receive the change push")
    sub = nodes.add_subparsers(dest="nodes_command", metavar="ACTION", required=True)

    p = sub.add_parser("add", help="add a node: its AMI address and credentials")
    p.add_argument("name")
    p.add_argument("--ami", required=True, metavar="HOST:PORT", help="the node's AMI address")
    p.add_argument("--user", required=True, help="AMI user (manager.conf section)")
    p.add_argument(
        "--sip",
        metavar="HOST:PORT",
        help="the node's SIP address, where the cluster's SIP edge (Kamailio) sends requests; without it the "
        "edge does not use the node",
    )
    p.add_argument(
        "--ari",
        metavar="HOST:PORT",
        help="the node's ARI address, where the other nodes' controllers read which devices are on a call there "
        "(the cluster's one ARI user, PBX_ARI_USER/PBX_ARI_PASSWORD); without it the node's calls are not seen "
        "by the others",
    )
    p.add_argument(
        "--secret-env",
        default="PBX_AMI_PASSWORD",
        metavar="VAR",
        help="environment variable holding the AMI secret (default PBX_AMI_PASSWORD; never on the command line)",
    )
    p.add_argument(
        "--replace", action="store_true", help="a node of that name takes this address and credentials (no error)"
    )
    p.add_argument("--json", action="store_true")
    add_dsn_argument(p)
    p.set_defaults(func=_add)

    p = sub.add_parser("list", help="list the nodes")
    p.add_argument("--json", action="store_true")
    add_dsn_argument(p)
    p.set_defaults(func=_list)

    p = sub.add_parser("remove", help="remove a node (its undelivered changes are dropped)")
    p.add_argument("name")
    add_dsn_argument(p)
    p.set_defaults(func=_remove)


def _add(args: argparse.Namespace) -> int:
    secret = os.environ.get(args.secret_env)
    if secret is None:
        raise Invalid(f"node {args.name}: the AMI secret is read from ${args.secret_env}, which is not set")

    async def body(conn: asyncpg.Connection) -> Any:
        try:
            return await add_node(
                conn, args.name, args.ami, args.user, secret, sip=args.sip, ari=args.ari, replace=args.replace
            )
        except NodeRefused as exc:
            raise Invalid(str(exc)) from None

    node = run_with_connection(args, body)
    print(f"node {node.name} added ({node.ami_addr})", file=sys.stderr)
    if args.json:
        print(json.dumps(node.to_json()))
    _reload_edge(f"node {node.name} added")
    return 0


def _list(args: argparse.Namespace) -> int:
    nodes = run_with_connection(args, list_nodes)
    if args.json:
        print(json.dumps({"nodes": [n.to_json() for n in nodes]}, indent=1))
    else:
        for n in nodes:
            print(f"{n.name}\t{n.ami_addr}\t{n.ami_user}\t{n.sip_addr or '-'}\t{n.ari_addr or '-'}")
    return 0


def _remove(args: argparse.Namespace) -> int:
    async def body(conn: asyncpg.Connection) -> None:
        try:
            await remove_node(conn, args.name)
        except NodeRefused as exc:
            raise Invalid(str(exc)) from None

    run_with_connection(args, body)
    print(f"node {args.name} removed", file=sys.stderr)
    _reload_edge(f"node {args.name} removed")
    return 0


def _reload_edge(done: str) -> None:
    """The edge re-reads its node list; without an edge configured there is nothing to tell."""
    rpc = get_settings().kamailio_rpc
    if rpc is None:
        return
    try:
        reload_dispatcher(rpc)
    except (EdgeUnreachable, EdgeRefused) as exc:
        raise Unreachable(f"{done}, but the SIP edge did not reload its node list: {exc}") from None
    print(f"SIP edge reloaded its node list ({rpc})", file=sys.stderr)
