"""The ARI controller's HTTP routes: live calls, adding a party to a conference, metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from ari_app.ari import AriError

if TYPE_CHECKING:
    from ari_app.controller.controller import Controller
    from ari_app.controller.service import ControllerRef

__all__ = ["CONTROLLER", "add_routes"]

CONTROLLER: web.AppKey[ControllerRef] = web.AppKey("controller")


def _controller(request: web.Request) -> Controller:
    controller = request.app[CONTROLLER].current
    if controller is None:
        raise web.HTTPServiceUnavailable(text="the ARI controller is not connected yet")
    return controller


async def _calls(request: web.Request) -> web.Response:
    return web.json_response(_controller(request).snapshot())


async def _add_party(request: web.Request) -> web.Response:
    controller = _controller(request)
    call_id = request.match_info["call_id"]
    try:
        body = await request.json()
    except ValueError:
        return web.json_response({"error": 'body: expected JSON {"endpoint": NAME}'}, status=400)
    endpoint = body.get("endpoint") if isinstance(body, dict) else None
    if not isinstance(endpoint, str) or not endpoint:
        return web.json_response(
            {"error": "body: endpoint (an endpoint name of the call's tenant) is required"}, status=400
        )
    try:
        channel_id = await controller.add_party(call_id, endpoint)
    except LookupError as exc:
        return web.json_response({"error": str(exc)}, status=404)
    except AriError as exc:
        return web.json_response({"error": f"endpoint {endpoint}: {exc}"}, status=502)
    return web.json_response({"call_id": call_id, "channel_id": channel_id}, status=201)


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(text=_controller(request).metrics.render(), content_type="text/plain")


def add_routes(app: web.Application, ref: ControllerRef) -> None:
    app[CONTROLLER] = ref
    app.router.add_get("/calls", _calls)
    app.router.add_post("/calls/{call_id}/parties", _add_party)
    app.router.add_get("/metrics", _metrics)
