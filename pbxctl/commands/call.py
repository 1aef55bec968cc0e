"""`pbxctl call play|add-party|list`: live calls on the running stack."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp

from pbx_base.settings import get_settings
from pbxctl.errors import CliError, Invalid, Unreachable

__all__ = ["register"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("call", help="live calls on the running stack")
    sub = p.add_subparsers(dest="call_command", required=True)

    play = sub.add_parser("play", help="play a routing scenario live (sipp devices and caller)")
    play.add_argument("scenario", type=Path)
    play.add_argument("--json", action="store_true")
    play.add_argument("--horizon", type=float, metavar="S", help="the caller hangs up after S seconds")
    play.set_defaults(func=_play)

    add = sub.add_parser("add-party", help="dial an endpoint into an answered call's conference")
    add.add_argument("call_id")
    add.add_argument("endpoint", help="an endpoint name of the call's tenant")
    add.add_argument("--http", default=None, metavar="HOST:PORT", help="pbxctl serve's address ($PBX_HTTP_ADDR)")
    add.set_defaults(func=_add_party)

    ls = sub.add_parser("list", help="calls ringing and conferences up, as the controller sees them")
    ls.add_argument("--http", default=None, metavar="HOST:PORT", help="pbxctl serve's address ($PBX_HTTP_ADDR)")
    ls.set_defaults(func=_list)


def _play(args: argparse.Namespace) -> int:
    # The one place a product command uses the dev stack's harness (sipp devices, the pbx-hold
    # dialplan of devstack/asterisk_dev/): `call play` drives live devices, which is that harness.
    from devstack.play import PlayError, PlayTarget, play
    from pbxctl.commands.route import load_scenario, print_outcome

    scenario = load_scenario(args.scenario)
    try:
        out = asyncio.run(play(scenario, PlayTarget.from_env(), args.horizon))
    except PlayError as exc:
        raise Invalid(f"scenario {args.scenario}: {exc}") from None
    except OSError as exc:
        raise Unreachable(f"the stack: {exc}") from None
    out.pop("horizon_s", None)
    print_outcome(out, args.json)
    return 0


def _base(args: argparse.Namespace) -> str:
    addr = args.http or get_settings().http_addr
    return f"http://{addr}"


async def _request(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    try:
        async with aiohttp.ClientSession() as http, http.request(method, url, json=body) as resp:
            return resp.status, await resp.json()
    except aiohttp.ClientError as exc:
        raise Unreachable(f"pbxctl serve at {url}: {exc}") from None


def _add_party(args: argparse.Namespace) -> int:
    status, body = asyncio.run(
        _request("POST", f"{_base(args)}/calls/{args.call_id}/parties", {"endpoint": args.endpoint})
    )
    if status != 201:
        raise CliError(str(body.get("error") if isinstance(body, dict) else body), 1)
    print(json.dumps(body))
    return 0


def _list(args: argparse.Namespace) -> int:
    status, body = asyncio.run(_request("GET", f"{_base(args)}/calls"))
    if status != 200:
        raise CliError(str(body), 1)
    print(json.dumps(body))
    return 0
