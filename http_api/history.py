"""`GET /calls/history?tenant=&since=&limit=`: the call records, newest first (JSON shape: README).

Answered from the database, so it works with or without the controller running. A tenant token
reads its own tenant's calls only: without `tenant` it gets them, with another tenant's name 403.
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from http_api.auth import forbidden, principal
from http_api.errors import json_error
from http_api.route import POOL
from pbx_base.errors import UnknownTenant
from pbxctl.when import parse_when
from sorcery_backend.call_history import DEFAULT_LIMIT, MAX_LIMIT, read_calls

__all__ = ["add_history_route"]


async def _history(request: web.Request) -> web.Response:
    q = request.query
    who = principal(request)
    tenant = q.get("tenant") or who.tenant
    if tenant is not None and not who.sees_tenant(tenant):
        return forbidden(f"tenant {tenant}", who)
    since = None
    if q.get("since"):
        try:
            since = parse_when(q["since"], datetime.now(UTC), ago=True)
        except ValueError as exc:
            return json_error(400, f"since: {exc}")
    raw_limit = q.get("limit", str(DEFAULT_LIMIT))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
        return json_error(400, f"limit {raw_limit!r}: expected a whole number from 1 to {MAX_LIMIT}")
    async with request.app[POOL].acquire() as conn:
        try:
            calls = await read_calls(conn, tenant=tenant, since=since, limit=int(raw_limit))
        except UnknownTenant as exc:
            return json_error(404, str(exc))
    return web.json_response({"calls": calls})


def add_history_route(app: web.Application) -> None:
    app.router.add_get("/calls/history", _history)
