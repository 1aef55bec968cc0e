"""The ARI controller's HTTP routes: live calls, adding a party to a conference, metrics.

A tenant token sees its tenant's calls only and adds parties to them only; the controller knows a
call's tenant by its domain (the domain of the endpoint the call arrived on).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg
from aiohttp import web

from ari_app.ari import AriError
from ari_app.controller.party import BadPartyEndpoint, ForeignEndpoint, party_endpoint
from http_api.auth import PRINCIPAL, forbidden, principal
from http_api.errors import json_error
from http_api.route import POOL
from pbx_base.errors import NotFound

if TYPE_CHECKING:
    from ari_app.controller.controller import Controller
    from ari_app.controller.service import ControllerRef

__all__ = ["CONTROLLER", "add_routes", "endpoint_exists"]

CONTROLLER: web.AppKey[ControllerRef] = web.AppKey("controller")


def _controller(request: web.Request) -> Controller:
    controller = request.app[CONTROLLER].current
    if controller is None:
        raise web.HTTPServiceUnavailable(
            text='{"error": "controller: the ARI controller is not connected yet"}', content_type="application/json"
        )
    return controller


async def endpoint_exists(pool: asyncpg.Pool, domain: str, name: str) -> bool:
    """An endpoint `name` of the tenant of `domain` is configured (pbx.objects)."""
    found = await pool.fetchval(
        "SELECT 1 FROM pbx.objects o JOIN pbx.tenants t ON t.id = o.tenant_id"
        " WHERE t.domain = $1 AND o.kind = 'endpoint' AND o.name = $2",
        domain,
        name,
    )
    return found is not None


async def _calls(request: web.Request) -> web.Response:
    who = principal(request)
    if who.tenant is not None and who.domain is None:
        return forbidden("calls", who)  # unreachable while the tenant exists: its tokens go with it
    return web.json_response(_controller(request).snapshot(who.domain))


async def _add_party(request: web.Request) -> web.Response:
    who = principal(request)
    controller = _controller(request)
    call_id = request.match_info["call_id"]
    try:
        body = await request.json()
    except ValueError:
        return json_error(400, 'body: expected JSON {"endpoint": NAME}')
    endpoint = body.get("endpoint") if isinstance(body, dict) else None
    if not isinstance(endpoint, str) or not endpoint:
        return json_error(400, "body: endpoint (an endpoint name of the call's tenant) is required")
    try:
        domain = controller.call_domain(call_id)
    except NotFound as exc:
        return json_error(404, str(exc))
    if not who.sees_domain(domain):
        return forbidden(f"call {call_id}", who)
    try:
        name = party_endpoint(endpoint, domain)
    except BadPartyEndpoint as exc:
        return json_error(400, str(exc))
    except ForeignEndpoint as exc:
        return json_error(403, str(exc))
    if not await endpoint_exists(request.app[POOL], domain, name):
        return json_error(404, f"endpoint {name}@{domain}: no such endpoint in the call's tenant")
    try:
        channel_id = await controller.add_party(call_id, name)
    except NotFound as exc:  # the conference ended meanwhile
        return json_error(404, str(exc))
    except AriError as exc:
        return json_error(502, f"endpoint {name}@{domain}: {exc}")
    return web.json_response({"call_id": call_id, "channel_id": channel_id}, status=201)


async def _metrics(request: web.Request) -> web.Response:
    # Counts of every tenant: operator tokens only (or no token at all where serve leaves it open).
    if PRINCIPAL in request and (who := request[PRINCIPAL]).tenant is not None:
        return forbidden("metrics", who)
    return web.Response(text=_controller(request).metrics.render(), content_type="text/plain")


def add_routes(app: web.Application, ref: ControllerRef) -> None:
    app[CONTROLLER] = ref
    app.router.add_get("/calls", _calls)
    app.router.add_post("/calls/{call_id}/parties", _add_party)
    app.router.add_get("/metrics", _metrics)
