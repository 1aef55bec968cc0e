"""From a channel that entered Stasis to a routing tree: tenant, caller, called, devices.

The tenant is the domain of the endpoint the call arrived on (Asterisk ids are ``name@domain``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import asyncpg

from routing.stage1 import CallRequest, Tree, build_tree
from sorcery_backend.routing_cache import RoutingData
from sorcery_backend.routing_loader import CallData, UnknownTenant, load_for_call

__all__ = ["CallLookup", "DbLookup", "Routed", "split_endpoint_id"]


@dataclass(frozen=True)
class Routed:
    status: str  # ok | noroute | error:<code>
    domain: str
    request: CallRequest | None = None
    data: CallData | None = None
    tree: Tree | None = None
    contact_uris: dict[str, str] = field(default_factory=dict)  # contact id -> SIP URI


class CallLookup(Protocol):
    async def route(self, endpoint_id: str, caller_number: str, caller_name: str, called: str) -> Routed: ...


def split_endpoint_id(endpoint_id: str) -> tuple[str, str]:
    name, _, domain = endpoint_id.rpartition("@")
    return name, domain


class DbLookup:
    """``routing``: the routing cache shared with `pbxctl serve`'s routing API (exact at every call,
    see sorcery_backend/routing_cache.py); without it every call loads its routing data."""

    def __init__(self, pool: asyncpg.Pool, routing: RoutingData | None = None) -> None:
        self.pool = pool
        self.routing = routing
        # domain -> tenant name; checked on every call against the domain the data comes with.
        self._tenants: dict[str, str] = {}

    async def _load(
        self, conn: asyncpg.Connection, tenant: str, caller: str, called: str, endpoint: str
    ) -> CallData | None:
        try:
            if self.routing is not None:
                return await self.routing.for_call(conn, tenant, caller, called, endpoint)
            return await load_for_call(conn, tenant, caller, called, endpoint)
        except UnknownTenant:
            return None

    async def route(self, endpoint_id: str, caller_number: str, caller_name: str, called: str) -> Routed:
        name, domain = split_endpoint_id(endpoint_id)
        async with self.pool.acquire() as conn:
            tenant = self._tenants.get(domain)
            data = await self._load(conn, tenant, caller_number, called, name) if tenant is not None else None
            if data is None or data.domain != domain:
                # First call of the domain, or the domain moved: ask the database, not the memo.
                tenant = await conn.fetchval("SELECT name FROM pbx.tenants WHERE domain = $1", domain)
                if tenant is None:
                    self._tenants.pop(domain, None)
                    return Routed("noroute", domain)
                self._tenants[domain] = tenant
                data = await self._load(conn, tenant, caller_number, called, name)
                if data is None:
                    return Routed("noroute", domain)
            assert tenant is not None
            request = CallRequest(tenant, caller_number, called, endpoint=name, callername=caller_name or None)
            tree = build_tree(data.directory, request)
            uris = dict(data.contact_uris)
            missing = [c for contacts in data.contacts.values() for c in contacts if c not in uris]
            if missing:  # the uncached loader reads contact ids only
                rows = await conn.fetch("SELECT id, uri FROM public.ps_contacts WHERE id = any($1::text[])", missing)
                uris.update((r["id"], r["uri"]) for r in rows)
        return Routed(tree.status, domain, request, data, tree, uris)
