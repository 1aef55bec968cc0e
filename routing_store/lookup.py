"""The ARI controller's call lookup on the routing store: from the endpoint a call arrived on to
its routed tree.

The tenant is the domain of that endpoint (Asterisk ids are ``name@domain``).
"""

from __future__ import annotations

import asyncpg

from pbx_base.errors import UnknownTenant
from routing.lookup import CallData, Routed, route_call, split_endpoint_id
from routing_store.cache import RoutingData
from routing_store.loader import tenant_of_domain

__all__ = ["DbLookup"]


class DbLookup:
    """A `routing.lookup.CallLookup` on the routing cache shared with `pbxctl serve`'s routing API
    (exact at every call, see routing_store/cache.py)."""

    def __init__(self, pool: asyncpg.Pool, routing: RoutingData) -> None:
        self.pool = pool
        self.routing = routing
        # domain -> tenant name; checked on every call against the domain the data comes with.
        self._tenants: dict[str, str] = {}

    async def _load(
        self, conn: asyncpg.Connection, tenant: str, caller: str, called: str, endpoint: str
    ) -> CallData | None:
        try:
            return await self.routing.for_call(conn, tenant, caller, called, endpoint)
        except UnknownTenant:
            return None

    async def route(self, endpoint_id: str, caller_number: str, caller_name: str, called: str) -> Routed:
        name, domain = split_endpoint_id(endpoint_id)
        async with self.pool.acquire() as conn:
            tenant = self._tenants.get(domain)
            data = await self._load(conn, tenant, caller_number, called, name) if tenant is not None else None
            if data is None or data.domain != domain:
                # First call of the domain, or the domain moved: ask the database, not the memo.
                tenant = await tenant_of_domain(conn, domain)
                if tenant is None:
                    self._tenants.pop(domain, None)
                    return Routed("noroute", domain)
                self._tenants[domain] = tenant
                data = await self._load(conn, tenant, caller_number, called, name)
                if data is None:
                    return Routed("noroute", domain)
        return route_call(data, name, caller_number, caller_name, called)
