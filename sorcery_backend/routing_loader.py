"""Load what the routing engine needs for one call from Postgres, in one round trip.

Only the extensions a call can reach are read: the called number and everything reachable from it
through rank members and forwards (as deep as the engine may go), the caller's own extension, the
trunks (for prefix routing), with the registered contacts of their endpoints from ps_contacts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from pbx_base.errors import UnknownTenant
from routing.model import Directory, directory_from_config
from routing.stage1 import MAX_DEPTH

__all__ = ["CallData", "UnknownTenant", "load_directory", "load_for_call"]


@dataclass(frozen=True)
class CallData:
    directory: Directory
    contacts: dict[str, list[str]]  # endpoint name -> contact ids (registered devices)
    domain: str
    cached: bool = False  # the directory came from RoutingData's memory (routing_cache.py)
    # contact id -> SIP URI, when the loader read them with the ids (the cached path does)
    contact_uris: Mapping[str, str] = field(default_factory=dict)


_EXTENSION_JSON = """
    jsonb_strip_nulls(jsonb_build_object(
        'type', e.type, 'name', e.name, 'short_name', e.short_name, 'call_waiting', e.call_waiting,
        'dialout', e.dialout, 'outgoing_number', e.outgoing_number, 'outgoing_name', e.outgoing_name,
        'ringback', e.ringback, 'language', e.language,
        'forward', CASE WHEN e.forward_mode IS NOT NULL THEN jsonb_build_object(
            'mode', e.forward_mode, 'to', e.forward_to, 'delay_ms', coalesce(e.forward_delay_ms, 0)) END,
        'endpoints', (SELECT jsonb_agg(o.name ORDER BY x.ordinal) FROM pbx.extension_endpoints x
                      JOIN pbx.objects o ON o.id = x.endpoint_id
                      WHERE x.tenant_id = e.tenant_id AND x.number = e.number),
        'ranks', (SELECT jsonb_agg(jsonb_build_object('mode', r.mode, 'delay_ms', r.delay_ms, 'members',
                      coalesce((SELECT jsonb_agg(jsonb_build_object('number', m.member, 'active', m.active)
                                                 ORDER BY m.ordinal)
                                FROM pbx.rank_members m WHERE m.tenant_id = r.tenant_id AND m.number = r.number
                                AND m.rank_ordinal = r.ordinal), '[]')) ORDER BY r.ordinal)
                  FROM pbx.ranks r WHERE r.tenant_id = e.tenant_id AND r.number = e.number)))
"""

_CALL_QUERY = f"""
WITH RECURSIVE ten AS (
    SELECT id, domain FROM pbx.tenants WHERE name = $1
), seed AS (
    -- Every lookup below is an index probe (LATERAL), never a scan of the tenant's extensions.
    SELECT e.number FROM ten, LATERAL (
        SELECT number FROM pbx.extensions WHERE tenant_id = ten.id AND number IN ($2, $3)
        UNION ALL
        SELECT number FROM pbx.extensions WHERE tenant_id = ten.id AND type = 'trunk'
        UNION ALL
        SELECT x.number FROM pbx.objects o JOIN pbx.extension_endpoints x ON x.endpoint_id = o.id
        WHERE o.tenant_id = ten.id AND o.kind = 'endpoint' AND o.name = $4
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
    -- OFFSET 0 keeps each LATERAL a per-row index probe: a call reaches tens of extensions out of
    -- tens of thousands, which the planner cannot know from the recursive CTE's estimate.
    SELECT e.* FROM (SELECT DISTINCT number FROM reach) r, ten, LATERAL (
        SELECT * FROM pbx.extensions x WHERE x.tenant_id = ten.id AND x.number = r.number OFFSET 0
    ) e
)
SELECT (SELECT domain FROM ten) AS domain,
       (SELECT jsonb_object_agg(e.number, {_EXTENSION_JSON}) FROM exts e) AS extensions,
       (SELECT jsonb_object_agg(o.name, c.ids)
        FROM exts e,
        LATERAL (SELECT endpoint_id FROM pbx.extension_endpoints x
                 WHERE x.tenant_id = e.tenant_id AND x.number = e.number OFFSET 0) x
        JOIN pbx.objects o ON o.id = x.endpoint_id,
        LATERAL (SELECT jsonb_agg(pc.id ORDER BY pc.id) AS ids FROM public.ps_contacts pc
                 WHERE pc.endpoint = o.name || '@' || (SELECT domain FROM ten)) c
        WHERE c.ids IS NOT NULL) AS contacts
"""


def _decode(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


async def load_for_call(
    conn: asyncpg.Connection, tenant: str, caller: str, called: str, endpoint: str | None = None
) -> CallData:
    row = await conn.fetchrow(_CALL_QUERY, tenant, caller, called, endpoint or "")
    if row is None or row["domain"] is None:
        raise UnknownTenant(tenant)
    exts = _decode(row["extensions"]) or {}
    contacts = _decode(row["contacts"]) or {}
    return CallData(directory_from_config(tenant, {"extensions": exts}), contacts, row["domain"])


async def load_directory(conn: asyncpg.Connection, tenant: str) -> Directory:
    """Every extension of a tenant (for `route explain` and tools; calls use load_for_call)."""
    row = await conn.fetchrow(
        f"SELECT t.id, (SELECT jsonb_object_agg(e.number, {_EXTENSION_JSON}) FROM pbx.extensions e "
        "WHERE e.tenant_id = t.id) AS extensions FROM pbx.tenants t WHERE t.name = $1",
        tenant,
    )
    if row is None:
        raise UnknownTenant(tenant)
    return directory_from_config(tenant, {"extensions": _decode(row["extensions"]) or {}})
