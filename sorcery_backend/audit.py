"""The audit trail (sql/016_audit.sql) read back: who changed what in which tenant, and when.

The database writes it; this module only reads and trims it. Under row-level security a tenant
admin's connection reads its own tenants' rows only, with the same queries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from pbx_base.errors import UnknownTenant
from sorcery_backend.changes import ChangeSet

__all__ = ["AuditEntry", "read_audit", "trim_audit"]


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    tenant: str
    session_role: str
    roles: list[str]
    actor: str | None
    touched: dict[str, list[str]]
    change_set: dict[str, dict[str, list[str]]]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "tenant": self.tenant,
            "session_role": self.session_role,
            "roles": self.roles,
            "actor": self.actor,
            "touched": self.touched,
            "change_set": self.change_set,
        }

    def summary(self) -> str:
        changes = ChangeSet({op: {v: list(ids) for v, ids in views.items()} for op, views in self.change_set.items()})
        touched = "; ".join(f"{kind} {','.join(keys)}" for kind, keys in sorted(self.touched.items()))
        return f"{changes.summary()} ({touched})"


_COLUMNS = "id, at, tenant, session_role, roles, actor, touched, change_set"


async def read_audit(
    conn: asyncpg.Connection, *, tenant: str | None = None, since: datetime | None = None
) -> list[AuditEntry]:
    """Rows oldest first. A tenant is its current name or any name it had in the trail (tenant ids
    are never reused), so a renamed or deleted tenant keeps its whole history; a name neither
    knows (or, under row-level security, the caller may not see) is UnknownTenant."""
    rows = await conn.fetch(
        f"""
        SELECT {_COLUMNS} FROM pbx.audit
        WHERE ($1::text IS NULL OR tenant_id IN (SELECT id FROM pbx.tenants WHERE name = $1
                                                 UNION SELECT tenant_id FROM pbx.audit WHERE tenant = $1))
          AND ($2::timestamptz IS NULL OR at >= $2)
        ORDER BY at, id
        """,
        tenant,
        since,
    )
    if tenant is not None and not rows and not await _known(conn, tenant):
        raise UnknownTenant(f"tenant {tenant}: unknown tenant (no such tenant and no audit rows under that name)")
    return [
        AuditEntry(
            id=r["id"],
            at=r["at"],
            tenant=r["tenant"],
            session_role=r["session_role"],
            roles=list(r["roles"]),
            actor=r["actor"],
            touched=json.loads(r["touched"]),
            change_set=json.loads(r["change_set"]),
        )
        for r in rows
    ]


async def _known(conn: asyncpg.Connection, tenant: str) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pbx.tenants WHERE name = $1)"
            " OR EXISTS (SELECT 1 FROM pbx.audit WHERE tenant = $1)",
            tenant,
        )
    )


async def trim_audit(conn: asyncpg.Connection, keep: timedelta | None = None) -> int:
    """Delete rows older than ``keep`` (default: the database's pbx.audit_keep setting, else 90 days)."""
    if keep is None:
        return int(await conn.fetchval("SELECT pbx.trim_audit()"))
    return int(await conn.fetchval("SELECT pbx.trim_audit($1::interval)", keep))
