"""`pbxctl call play|add-party|list`: live calls on the running stack."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

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
    play.add_argument(
        "--lane",
        type=int,
        metavar="N",
        help="play beside other plays: tenants renamed NAME-lN, domains lN.DOMAIN, 127.0.x.y addresses 127.N.x.y",
    )
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
    if args.lane is not None:
        from devstack.play_lane import in_lane

        try:
            scenario = in_lane(scenario, args.lane)
        except ValueError as exc:  # the lane's range, checked in one place
            raise Invalid(f"--{exc}") from None
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
    settings = get_settings()
    scheme = "https" if settings.http_tls_cert is not None else "http"
    return f"{scheme}://{args.http or settings.http_addr}"


async def _request(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    # Imported here: aiohttp costs `call play`, which the scenario checker starts once per
    # scenario, a good part of its start-up, and play talks no HTTP to pbxctl serve.
    import aiohttp

    from http_api.listen import client_context

    settings = get_settings()
    token = settings.http_token.get_secret_value()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    ctx = client_context(settings)
    try:
        async with (
            aiohttp.ClientSession(headers=headers) as http,
            http.request(method, url, json=body, ssl=ctx if ctx is not None else True) as resp,
        ):
            text = await resp.text()
            status = resp.status
    except aiohttp.ClientError as exc:
        raise Unreachable(f"pbxctl serve at {url}: {exc}") from None
    try:
        return status, json.loads(text)
    except ValueError:
        raise Unreachable(f"pbxctl serve at {url}: not a JSON answer (HTTP {status})") from None


def _refused(status: int, body: Any) -> CliError:
    message = str(body.get("error") if isinstance(body, dict) else body)
    if status == 401:
        message += " (set PBX_HTTP_TOKEN: pbxctl token create)"
    return CliError(message, 1)


def _add_party(args: argparse.Namespace) -> int:
    status, body = asyncio.run(
        _request("POST", f"{_base(args)}/calls/{quote(args.call_id, safe='')}/parties", {"endpoint": args.endpoint})
    )
    if status != 201:
        raise _refused(status, body)
    print(json.dumps(body))
    return 0


def _list(args: argparse.Namespace) -> int:
    status, body = asyncio.run(_request("GET", f"{_base(args)}/calls"))
    if status != 200:
        raise _refused(status, body)
    print(json.dumps(body))
    return 0
