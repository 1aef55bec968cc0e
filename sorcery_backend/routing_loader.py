"""Load what the routing engine needs for one call from Postgres, in one round trip.

Only the extensions a call can reach are read: the called number and everything reachable from it
through rank members and forwards (as deep as the engine may go), the caller's own extension, the
trunks (for prefix routing), with the registered contacts of their endpoints from ps_contacts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import asyncpg

from routing.model import Directory, directory_from_config
from routing.stage1 import MAX_DEPTH

__all__ = ["CallData", "UnknownTenant", "load_directory", "load_for_call"]


class UnknownTenant(LookupError):
    pass


@dataclass(frozen=True)
class CallData:
    directory: Directory
    contacts: dict[str, list[str]]  # endpoint name -> contact ids (registered devices)
    domain: str


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
    SELECT e.number FROM pbx.extensions e, ten
    WHERE e.tenant_id = ten.id AND (e.number IN ($2, $3) OR e.type = 'trunk')
    UNION
    SELECT x.number FROM pbx.extension_endpoints x JOIN pbx.objects o ON o.id = x.endpoint_id, ten
    WHERE x.tenant_id = ten.id AND o.name = $4
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
), exts AS (
    SELECT e.* FROM pbx.extensions e, ten
    WHERE e.tenant_id = ten.id AND e.number IN (SELECT DISTINCT number FROM reach)
)
SELECT (SELECT domain FROM ten) AS domain,
       (SELECT jsonb_object_agg(e.number, {_EXTENSION_JSON}) FROM exts e) AS extensions,
       (SELECT jsonb_object_agg(ep, ids) FROM (
            SELECT o.name AS ep, jsonb_agg(c.id ORDER BY c.id) AS ids
            FROM exts e JOIN pbx.extension_endpoints x ON x.tenant_id = e.tenant_id AND x.number = e.number
            JOIN pbx.objects o ON o.id = x.endpoint_id
            JOIN public.ps_contacts c ON c.endpoint = o.name || '@' || (SELECT domain FROM ten)
            GROUP BY o.name) s) AS contacts
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
