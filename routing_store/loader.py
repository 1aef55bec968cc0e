"""Reading routing data from Postgres: a whole tenant, or what one call needs in one round trip.

Both read the column lists of routing_store.decode and decode with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from pbx_base.errors import UnknownTenant
from routing.lookup import CallData
from routing.model import Directory
from routing.stage1 import MAX_DEPTH
from routing_store.decode import (
    ENDPOINT_COLUMNS,
    EXTENSION_COLUMNS,
    MEMBER_COLUMNS,
    RANK_COLUMNS,
    SETTINGS,
    STATIC_COLUMNS,
    decode_contacts,
    decode_directory,
)

__all__ = ["Tenant", "load_for_call", "load_tenant", "tenant_of_domain"]


@dataclass(frozen=True)
class Tenant:
    """A whole tenant's routing data as of one committed state (its routing `version`, which
    sql/010_routing_notify.sql bumps in every transaction that changes routing data)."""

    id: int
    name: str
    domain: str
    version: int
    directory: Directory


_TENANT = """
SELECT t.id, t.name, t.domain, coalesce(v.version, 0) AS version
FROM pbx.tenants t LEFT JOIN pbx.routing_versions v ON v.tenant_id = t.id WHERE t.name = $1
"""
_EXTENSIONS = f"SELECT {EXTENSION_COLUMNS} FROM pbx.extensions e WHERE e.tenant_id = $1"
_ENDPOINTS = f"""
SELECT {ENDPOINT_COLUMNS} FROM pbx.extension_endpoints x JOIN pbx.objects o ON o.id = x.endpoint_id
WHERE x.tenant_id = $1
"""
_RANKS = f"SELECT {RANK_COLUMNS} FROM pbx.ranks r WHERE r.tenant_id = $1"
_MEMBERS = f"SELECT {MEMBER_COLUMNS} FROM pbx.rank_members m WHERE m.tenant_id = $1"
_STATIC = f"SELECT {STATIC_COLUMNS} FROM pbx.routing_static_contacts($1) s"
_SETTINGS = f"SELECT {SETTINGS} FROM (SELECT $1::bigint AS id) ten"


async def load_tenant(conn: asyncpg.Connection, tenant: str) -> Tenant:
    """Every piece of a tenant's routing data, read in one consistent snapshot. Raises UnknownTenant."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        t = await conn.fetchrow(_TENANT, tenant)
        if t is None:
            raise UnknownTenant(tenant)
        tid = t["id"]
        directory = decode_directory(
            tenant,
            await conn.fetch(_EXTENSIONS, tid),
            await conn.fetch(_ENDPOINTS, tid),
            await conn.fetch(_RANKS, tid),
            await conn.fetch(_MEMBERS, tid),
            await conn.fetch(_STATIC, tid),
            await conn.fetchval(_SETTINGS, tid),
        )
    return Tenant(tid, t["name"], t["domain"], t["version"], directory)


# The extensions of routing.stage1.reachable, by the same rule, and the registered contacts of
# their endpoints with their URIs. Every lookup is an index probe (LATERAL ... OFFSET 0), never a
# scan of the tenant's tens of thousands of extensions: a call reaches tens of them, which the
# planner cannot know from the recursive CTE's estimate. Rows come back as arrays of anonymous
# records (tuples), in decode's column order.
_CALL_QUERY = f"""
WITH RECURSIVE ten AS (
    SELECT id, domain FROM pbx.tenants WHERE name = $1
), seed AS (
    SELECT e.number FROM ten, LATERAL (
        SELECT number FROM pbx.extensions WHERE tenant_id = ten.id AND number IN ($2, $3)
        UNION ALL
        SELECT number FROM pbx.extensions WHERE tenant_id = ten.id AND type = 'trunk'
        UNION ALL
        SELECT x.number FROM pbx.objects o JOIN pbx.extension_endpoints x ON x.endpoint_id = o.id
        WHERE o.tenant_id = ten.id AND o.kind = 'endpoint' AND o.name = $4
        UNION ALL
        -- A call from a carrier: what the DID rules of the trunks listing its endpoint map the
        -- called number to (every matching rule: the decoder's model picks the longest).
        SELECT coalesce(d.target_extension, substr($3, length(d.match) + 1))
        FROM pbx.objects o JOIN pbx.extension_endpoints x ON x.endpoint_id = o.id
        JOIN pbx.trunk_dids d ON (d.tenant_id, d.number) = (x.tenant_id, x.number)
        WHERE o.tenant_id = ten.id AND o.kind = 'endpoint' AND o.name = $4
          AND ((d.kind = 'number' AND d.match = $3) OR (d.kind = 'prefix' AND left($3, length(d.match)) = d.match))
    ) e
), reach(number, depth) AS (
    SELECT number, 0 FROM seed
    UNION
    SELECT nxt.number, r.depth + 1
    FROM reach r, ten, LATERAL (
        SELECT m.member AS number FROM pbx.rank_members m WHERE m.tenant_id = ten.id AND m.number = r.number
        UNION ALL
        SELECT e.forward_to FROM pbx.extensions e
        WHERE e.tenant_id = ten.id AND e.number = r.number AND e.forward_to IS NOT NULL
    ) nxt
    WHERE r.depth <= {MAX_DEPTH}
), exts AS MATERIALIZED (
    SELECT e.* FROM (SELECT DISTINCT number FROM reach) r, ten, LATERAL (
        SELECT * FROM pbx.extensions x WHERE x.tenant_id = ten.id AND x.number = r.number OFFSET 0
    ) e
), eps AS MATERIALIZED (
    SELECT {ENDPOINT_COLUMNS} FROM exts e, LATERAL (
        SELECT number, ordinal, endpoint_id FROM pbx.extension_endpoints x
        WHERE x.tenant_id = e.tenant_id AND x.number = e.number OFFSET 0
    ) x JOIN pbx.objects o ON o.id = x.endpoint_id
)
SELECT (SELECT domain FROM ten) AS domain,
       (SELECT {SETTINGS} FROM ten) AS settings,
       array(SELECT ROW({STATIC_COLUMNS}) FROM ten, pbx.routing_static_contacts(
           ten.id, array(SELECT DISTINCT name FROM eps)) s) AS static,
       array(SELECT ROW({EXTENSION_COLUMNS}) FROM exts e) AS extensions,
       array(SELECT x FROM eps x) AS endpoints,
       array(SELECT ROW({RANK_COLUMNS}) FROM exts e, LATERAL (
           SELECT * FROM pbx.ranks r WHERE r.tenant_id = e.tenant_id AND r.number = e.number OFFSET 0) r) AS ranks,
       array(SELECT ROW({MEMBER_COLUMNS}) FROM exts e, LATERAL (
           SELECT * FROM pbx.rank_members m WHERE m.tenant_id = e.tenant_id AND m.number = e.number OFFSET 0) m
       ) AS members,
       array(SELECT ROW(c.endpoint, c.id, c.uri) FROM (SELECT DISTINCT name FROM eps) x, ten, LATERAL (
           SELECT endpoint, id, uri FROM public.ps_contacts WHERE endpoint = x.name || '@' || ten.domain OFFSET 0) c
       ) AS contacts
"""


async def load_for_call(
    conn: asyncpg.Connection, tenant: str, caller: str, called: str, endpoint: str | None = None
) -> CallData:
    """`endpoint`: the PJSIP endpoint name the call arrived on (None: unauthenticated, or not
    given). Raises UnknownTenant."""
    row = await conn.fetchrow(_CALL_QUERY, tenant, caller, called, endpoint or "")
    if row is None or row["domain"] is None:
        raise UnknownTenant(tenant)
    domain = row["domain"]
    directory = decode_directory(
        tenant, row["extensions"], row["endpoints"], row["ranks"], row["members"], row["static"], row["settings"]
    )
    contacts, uris = decode_contacts(row["contacts"], domain)
    return CallData(directory, contacts, domain, contact_uris=uris)


async def tenant_of_domain(conn: asyncpg.Connection, domain: str) -> str | None:
    name: str | None = await conn.fetchval("SELECT name FROM pbx.tenants WHERE domain = $1", domain)
    return name
