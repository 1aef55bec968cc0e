"""`pbxctl export`: what Asterisk sees, read back through the realtime views themselves."""

from __future__ import annotations

from typing import Any

import asyncpg

from pbx_base.errors import UnknownTenant
from sorcery_backend.changes import REALTIME_VIEWS

__all__ = ["REDACTED", "SECRET_COLUMNS", "UnknownTenant", "export"]

# Columns that hold a credential or what stands for one (a digest is as good as the password for
# this realm). Printed only to an operator who asks (--show-secrets).
SECRET_COLUMNS = frozenset({"password", "md5_cred", "oauth_secret", "refresh_token", "password_digest"})
REDACTED = "<redacted>"


async def export(conn: asyncpg.Connection, tenant: str | None = None, *, show_secrets: bool = False) -> dict[str, Any]:
    """{"tenants": {tenant: {"endpoints": {name: {table key: row}}}}}; rows exactly as the views
    return them, but secret columns that are set read ``"<redacted>"`` unless ``show_secrets``."""
    tenants = await conn.fetch(
        "SELECT id, name FROM pbx.tenants WHERE $1::text IS NULL OR name = $1 ORDER BY name", tenant
    )
    if tenant is not None and not tenants:
        raise UnknownTenant(tenant)
    out: dict[str, Any] = {t["name"]: {"endpoints": {}} for t in tenants}
    for view in REALTIME_VIEWS:
        # The view's own columns, in its own order, joined to the bookkeeping of the flat table
        # behind it only to learn which endpoint each row belongs to.
        rows = await conn.fetch(
            f"""
            SELECT f.table_key AS "__key", o.name AS "__endpoint", t.name AS "__tenant", v.*
            FROM public.{view} v
            JOIN pbx.rt_owner f ON f.view = '{view}' AND f.id = v.id
            JOIN pbx.objects o ON o.id = f.object_id
            JOIN pbx.tenants t ON t.id = o.tenant_id
            WHERE $1::text IS NULL OR t.name = $1
            ORDER BY t.name, o.name, f.table_key
            """,
            tenant,
        )
        for r in rows:
            row = {
                k: REDACTED if v is not None and k in SECRET_COLUMNS and not show_secrets else v
                for k, v in r.items()
                if not k.startswith("__")
            }
            eps = out[r["__tenant"]]["endpoints"]
            eps.setdefault(r["__endpoint"], {})[r["__key"]] = row
    return {"tenants": out}
