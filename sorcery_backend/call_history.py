"""Call records (sql/020_call_records.sql) read back, for `pbxctl calls history` and `GET /calls/history`.

The controller writes them (ari_app/controller/record_writer.py); this module only reads. Under
row-level security a tenant admin's connection reads its own tenants' calls with the same query.
The JSON shape of one call (README, "Call records"): the call's columns, times as ISO-8601 UTC,
and its legs in the order they were dialed.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import asyncpg

from pbx_base.errors import UnknownTenant

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "read_calls", "summary"]

DEFAULT_LIMIT = 100
MAX_LIMIT = 10000

_TIMES = ("started_at", "ring_at", "answered_at", "ended_at", "ringing_at")

# One query: each call with its legs as a JSON array, newest call first.
_QUERY = """
SELECT c.node, c.call_id, c.tenant, c.caller, c.caller_name, c.endpoint, c.called, c.did, c.routed_to, c.route,
       c.started_at, c.ring_at, c.answered_at, c.ended_at, c.result, c.hangup_cause, c.answered_by,
       c.transferred_from, c.transferred_to,
       coalesce((SELECT json_agg(json_build_object(
                    'channel_id', l.channel_id, 'kind', l.kind, 'endpoint', l.endpoint, 'device', l.device,
                    'extension', l.extension, 'started_at', l.started_at, 'ringing_at', l.ringing_at,
                    'answered_at', l.answered_at, 'ended_at', l.ended_at, 'result', l.result,
                    'hangup_cause', l.hangup_cause, 'transferred_from', l.transferred_from,
                    'transferred_to', l.transferred_to) ORDER BY l.started_at, l.channel_id)
                 FROM pbx.call_legs l WHERE l.node = c.node AND l.call_id = c.call_id), '[]') AS legs
FROM pbx.call_records c
WHERE ($1::text IS NULL OR c.tenant_id IN (SELECT id FROM pbx.tenants WHERE name = $1) OR c.tenant = $1)
  AND ($2::timestamptz IS NULL OR c.started_at >= $2)
ORDER BY c.started_at DESC, c.call_id DESC
LIMIT $3
"""


def _iso(value: Any) -> Any:
    return value.astimezone(UTC).isoformat() if isinstance(value, datetime) else value


def _leg_json(leg: dict[str, Any]) -> dict[str, Any]:
    # json_build_object writes timestamptz in Postgres' own text form: the ISO form instead.
    return {k: _iso(datetime.fromisoformat(v)) if k in _TIMES and v is not None else v for k, v in leg.items()}


async def read_calls(
    conn: asyncpg.Connection,
    *,
    tenant: str | None = None,
    since: datetime | None = None,
    limit: int = DEFAULT_LIMIT,
) -> list[dict[str, Any]]:
    """The newest ``limit`` calls (newest first) as JSON-ready dicts. A tenant is its current
    name or the name its records carry (a deleted tenant keeps its history); a name neither knows
    (or, under row-level security, the caller may not see) is UnknownTenant."""
    rows = await conn.fetch(_QUERY, tenant, since, limit)
    if tenant is not None and not rows and not await _known(conn, tenant):
        raise UnknownTenant(f"tenant {tenant}: unknown tenant (no such tenant and no call records under that name)")
    out = []
    for r in rows:
        call = {k: _iso(v) for k, v in r.items() if k != "legs"}
        call["legs"] = [_leg_json(leg) for leg in json.loads(r["legs"])]
        out.append(call)
    return out


async def _known(conn: asyncpg.Connection, tenant: str) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pbx.tenants WHERE name = $1)"
            " OR EXISTS (SELECT 1 FROM pbx.call_records WHERE tenant = $1)",
            tenant,
        )
    )


def summary(call: dict[str, Any]) -> str:
    """One line of `pbxctl calls history`: when, tenant, who called what, how it ended."""
    did = f" (DID {call['did']})" if call["did"] else ""
    to = f" -> {call['routed_to']}" if call["routed_to"] and call["routed_to"] != call["called"] else ""
    cause = f" cause {call['hangup_cause']}" if call["hangup_cause"] is not None else ""
    answered = [leg["endpoint"] for leg in call["legs"] if leg["result"] == "answered"]
    by = f" by {','.join(answered)}" if answered else ""
    return (
        f"{call['started_at']}\t{call['tenant'] or '-'}\t{call['caller']} -> {call['called']}{did}{to}"
        f"\t{call['route']}\t{call['result']}{by}{cause}\t{len(call['legs'])} legs"
    )
