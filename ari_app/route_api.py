"""`GET /route?tenant=&caller=&called=[&endpoint=]`: the routing decision for one call, over HTTP.

Stage 1 and stage 2 from the database (one query), then the fork's first commands: what the
controller would do at the moment the call arrives. Useful to operators (what happens if 1001
calls 2000 now?) and the like-for-like comparison with ywsd's /stage1 in bench/routing.py.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import asyncpg
from aiohttp import web

from routing.explain import explain_tree
from routing.fork import Fork, Start
from routing.stage1 import CallRequest, build_tree
from sorcery_backend.routing_loader import CallData, UnknownTenant, load_for_call

__all__ = ["decide", "make_app"]

POOL: web.AppKey[asyncpg.Pool] = web.AppKey("pool", asyncpg.Pool)


@dataclasses.dataclass
class _Contacts:
    """Stage-2 input from the loaded contacts; nothing is in use from the API's point of view."""

    contacts_by_endpoint: dict[str, list[str]]

    def contacts(self, endpoint: str) -> Sequence[str]:
        return self.contacts_by_endpoint.get(endpoint, [])

    def in_use(self, endpoint: str) -> bool:
        return False


def decide(data: CallData, call: CallRequest) -> dict[str, Any]:
    tree = build_tree(data.directory, call)
    out: dict[str, Any] = {"status": tree.status, "tree": explain_tree(tree, call)}
    if tree.status == "ok":
        fork = Fork(tree, call.called, _Contacts(data.contacts))
        out["commands"] = [{"command": type(c).__name__, **dataclasses.asdict(c)} for c in fork.handle(Start(), 0)]
    return out


async def _route(request: web.Request) -> web.Response:
    q = request.query
    missing = [k for k in ("tenant", "caller", "called") if not q.get(k)]
    if missing:
        return web.json_response({"error": f"missing query parameters: {', '.join(missing)}"}, status=400)
    kwargs: dict[str, Any] = {"endpoint": q["endpoint"]} if "endpoint" in q else {}
    call = CallRequest(q["tenant"], q["caller"], q["called"], **kwargs)
    t0 = time.perf_counter()
    async with request.app[POOL].acquire() as conn:
        try:
            data = await load_for_call(conn, call.tenant, call.caller, call.called, q.get("endpoint"))
        except UnknownTenant:
            return web.json_response({"error": f"tenant {call.tenant}: unknown tenant"}, status=404)
    out = decide(data, call)
    out["routing_time_us"] = int((time.perf_counter() - t0) * 1e6)
    return web.json_response(out)


def make_app(pool: asyncpg.Pool) -> web.Application:
    app = web.Application()
    app[POOL] = pool
    app.router.add_get("/route", _route)
    return app
