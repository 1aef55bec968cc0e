"""Bearer-token authentication of every route of the API (tokens: http_api/tokens.py).

Without a valid token a request gets 401; a tenant token reaching for another tenant's call or
routing gets 403 from the route itself (`principal(request).sees_...`). Fail closed: a route that
asks for the principal of a request the middleware did not authenticate gets 401.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from http_api.errors import json_error
from http_api.tokens import Principal
from pbx_base.errors import Unavailable

__all__ = ["PRINCIPAL", "Verifier", "auth_middleware", "forbidden", "principal"]

Verifier = Callable[[str], Awaitable[Principal | None]]

PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="pbx"'}


def auth_middleware(verify: Verifier, *, open_paths: Collection[str] = ()) -> Middleware:
    """Every request but those to `open_paths` needs ``Authorization: Bearer <token>``."""

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in open_paths:
            return await handler(request)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return json_error(401, "authorization: a bearer token is required", headers=_CHALLENGE)
        try:
            found = await verify(token.strip())
        except Unavailable as exc:
            return json_error(503, str(exc))
        if found is None:
            return json_error(401, "authorization: the token is unknown, revoked or expired", headers=_CHALLENGE)
        request[PRINCIPAL] = found
        return await handler(request)

    return authenticate


def principal(request: web.Request) -> Principal:
    if PRINCIPAL not in request:
        raise web.HTTPUnauthorized(
            text='{"error": "authorization: no authenticated principal"}', content_type="application/json"
        )
    return request[PRINCIPAL]


def forbidden(what: str, who: Principal) -> web.Response:
    return json_error(403, f"{what}: not visible to token {who.token} (tenant {who.tenant})")
