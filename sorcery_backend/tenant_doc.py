"""One tenant read back from the database as the declarative file describes it (contract section 2).

The imperative commands edit this document and hand it to ``apply`` like a file, so they share
its validation and its write path. Read back and applied unchanged, it changes nothing. It holds
the tenant's secrets (auth passwords): it is for editing, never for printing.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from pbx_base.errors import UnknownTenant
from sorcery_backend.declarative import Extension

__all__ = ["read_tenant"]

# Columns of pbx.extensions that are not plain fields of the file's extension.
_EXTENSION_KEYS = {"tenant_id", "number", "forward_mode", "forward_to", "forward_delay_ms"}


async def read_tenant(conn: asyncpg.Connection, name: str) -> dict[str, Any]:
    tenant = await conn.fetchrow("SELECT id, domain FROM pbx.tenants WHERE name = $1", name)
    if tenant is None:
        raise UnknownTenant(f"tenant {name}: unknown tenant")
    doc: dict[str, Any] = {"domain": tenant["domain"], "templates": {}, "endpoints": {}, "extensions": {}}
    settings = json.loads(await conn.fetchval("SELECT pbx.routing_settings($1)", tenant["id"]))
    if settings:
        doc["settings"] = settings
    for r in await conn.fetch(
        """
        SELECT o.kind, o.name, o.transport,
               coalesce((SELECT array_agg(p.name ORDER BY l.ordinal) FROM pbx.object_parents l
                         JOIN pbx.objects p ON p.id = l.parent_id WHERE l.object_id = o.id), '{}') AS parents,
               coalesce((SELECT jsonb_agg(jsonb_build_array(x.section, x.option, x.value))
                         FROM pbx.object_options x WHERE x.object_id = o.id), '[]') AS options
        FROM pbx.objects o WHERE o.tenant_id = $1
        """,
        tenant["id"],
    ):
        obj: dict[str, Any] = {"parents" if r["kind"] == "template" else "templates": list(r["parents"])}
        if r["transport"] is not None:
            obj["transport"] = r["transport"]
        for section, option, value in json.loads(r["options"]):
            obj.setdefault(section, {})[option] = value
        doc[f"{r['kind']}s"][r["name"]] = obj
    for r in await conn.fetch(
        """
        SELECT to_jsonb(e) AS row, pbx.routing_trunk_keys(e.tenant_id, e.number) AS trunk,
               coalesce((SELECT jsonb_agg(o.name ORDER BY x.ordinal) FROM pbx.extension_endpoints x
                         JOIN pbx.objects o ON o.id = x.endpoint_id
                         WHERE x.tenant_id = e.tenant_id AND x.number = e.number), '[]') AS endpoints,
               coalesce((SELECT jsonb_agg(jsonb_build_object('mode', r.mode, 'delay_ms', r.delay_ms, 'members',
                            coalesce((SELECT jsonb_agg(jsonb_build_object('number', m.member, 'active', m.active)
                                                       ORDER BY m.ordinal)
                                      FROM pbx.rank_members m WHERE m.tenant_id = r.tenant_id
                                      AND m.number = r.number AND m.rank_ordinal = r.ordinal), '[]'))
                            ORDER BY r.ordinal)
                         FROM pbx.ranks r WHERE r.tenant_id = e.tenant_id AND r.number = e.number), '[]') AS ranks
        FROM pbx.extensions e WHERE e.tenant_id = $1
        """,
        tenant["id"],
    ):
        row = json.loads(r["row"])
        # Every other column is the file's field of the same name (a NULL is the field left out).
        ext: dict[str, Any] = {
            k: v for k, v in row.items() if k not in _EXTENSION_KEYS and k in Extension.model_fields and v is not None
        }
        # A trunk's outbound rules, fallbacks and DIDs, in the file's own shape (sql/014).
        ext.update(json.loads(r["trunk"]))
        ext["endpoints"] = json.loads(r["endpoints"])
        ext["ranks"] = json.loads(r["ranks"])
        if row["forward_mode"] is not None:
            ext["forward"] = {
                "mode": row["forward_mode"],
                "to": row["forward_to"],
                "delay_ms": row["forward_delay_ms"] or 0,
            }
        doc["extensions"][row["number"]] = ext
    return doc
