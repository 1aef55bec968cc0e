"""`GET /route?tenant=&caller=&called=[&endpoint=][&explain=1]`: the routing decision for one call.

Stage 1 and stage 2, then the fork's first commands: what the controller would do at the moment the
call arrives. Useful to operators (what happens if 1001 calls 2000 now?) and the like-for-like
comparison with ywsd's /stage1 in bench/routing.py. The routing data comes from `RoutingData`
(memory, exact at every call); the explained tree is added only on `explain=1`, since building and
encoding it costs more than the decision itself on a large tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Collection
from typing import Any

import asyncpg
from aiohttp import web

from http_api.auth import Verifier, auth_middleware, forbidden, principal
from http_api.errors import json_error
from pbx_base.errors import UnknownTenant
from routing.explain import explain_tree
from routing.fork import Fork, Start
from routing.lookup import CallData
from routing.simulate import ScenarioDevices
from routing.stage1 import CallRequest, build_tree
from routing_store.cache import RoutingData

__all__ = ["POOL", "ROUTING", "decide", "make_app"]

POOL: web.AppKey[asyncpg.Pool] = web.AppKey("pool", asyncpg.Pool)
ROUTING: web.AppKey[RoutingData] = web.AppKey("routing", RoutingData)
_log = logging.getLogger(__name__)


def decide(data: CallData, call: CallRequest, *, explain: bool = False) -> dict[str, Any]:
    """The decision as JSON-ready data: status, the first commands, and the tree if asked for."""
    tree = build_tree(data.directory, call)
    out: dict[str, Any] = {"status": tree.status}
    if explain:
        out["tree"] = explain_tree(tree, call)
    if tree.status == "ok":
        # Nothing is in use from the API's point of view.
        fork = Fork(tree, call.called, ScenarioDevices(data.contacts, {}))
        # Commands are flat frozen dataclasses: their __dict__ is what dataclasses.asdict would
        # build, without its recursive deep copy.
        out["commands"] = [{"command": type(c).__name__, **vars(c)} for c in fork.handle(Start(), 0)]
    return out


async def _route(request: web.Request) -> web.Response:
    q = request.query
    missing = [k for k in ("tenant", "caller", "called") if not q.get(k)]
    if missing:
        return json_error(400, f"query: missing parameters {', '.join(missing)}")
    who = principal(request)
    if not who.sees_tenant(q["tenant"]):
        return forbidden(f"tenant {q['tenant']}", who)
    kwargs: dict[str, Any] = {"endpoint": q["endpoint"]} if "endpoint" in q else {}
    call = CallRequest(q["tenant"], q["caller"], q["called"], **kwargs)
    t0 = time.perf_counter()
    async with request.app[POOL].acquire() as conn:
        try:
            data = await request.app[ROUTING].for_call(conn, call.tenant, call.caller, call.called, q.get("endpoint"))
        except UnknownTenant:
            return json_error(404, f"tenant {call.tenant}: unknown tenant")
    out = decide(data, call, explain=q.get("explain", "") not in ("", "0", "false"))
    out["cached"] = data.cached
    out["routing_time_us"] = int((time.perf_counter() - t0) * 1e6)
    return web.json_response(out)


def make_app(
    pool: asyncpg.Pool,
    routing: RoutingData | None = None,
    *,
    verify: Verifier,
    open_paths: Collection[str] = (),
    listen: bool = True,
) -> web.Application:
    """The routing API on `pool`, every route behind bearer tokens checked by `verify` (but
    `open_paths`). With `listen`, the app runs the routing cache's LISTEN task and loads every
    tenant for as long as it is up; pass `routing` to share a cache with the caller."""
    app = web.Application(middlewares=[auth_middleware(verify, open_paths=open_paths)])
    app[POOL] = pool
    app[ROUTING] = routing if routing is not None else RoutingData(pool)
    app.router.add_get("/route", _route)
    if listen:
        app.cleanup_ctx.append(_run_cache)
    return app


async def _run_cache(app: web.Application) -> AsyncIterator[None]:
    routing = app[ROUTING]
    listener = asyncio.create_task(routing.listen())
    # Loading waits for LISTEN: whatever is loaded before it is dropped when it starts.
    warm = asyncio.create_task(_warm(routing))
    yield
    for task in (warm, listener):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _warm(routing: RoutingData) -> None:
    await routing.listening.wait()
    try:
        await routing.preload_all()
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        # Not fatal: every call is still routed, uncached, and loads its tenant on the way.
        _log.warning("routing API: cannot preload the routing cache: %s", exc)
