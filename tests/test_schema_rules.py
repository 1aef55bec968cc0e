"""The database's own rules, exercised through plain SQL (a supported admin interface)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg
import pytest

from sorcery_backend.apply import apply_config
from sorcery_backend.declarative import load_yaml, parse_config

DATA = Path(__file__).resolve().parent.parent / "sorcery_backend" / "data" / "realtime_columns.json"

CONFIG = """
tenants:
  acme:
    domain: acme.example
    templates:
      a: {endpoint: {context: a}}
      b: {endpoint: {context: b}}
      c: {parents: [a]}
    endpoints:
      "1001": {templates: [c], auth: {password: x}, aor: {max_contacts: 1}}
  beta:
    domain: beta.example
    templates:
      t: {endpoint: {context: t}}
    endpoints:
      "1001": {templates: [t], auth: {password: y}}
"""


async def seeded(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await apply_config(conn, parse_config(load_yaml(CONFIG)))
    return conn


async def oid(conn: asyncpg.Connection, tenant: str, name: str) -> int:
    return int(
        await conn.fetchval(
            "SELECT o.id FROM pbx.objects o JOIN pbx.tenants t ON t.id = o.tenant_id WHERE t.name = $1 AND o.name = $2",
            tenant,
            name,
        )
    )


async def test_views_have_exactly_asterisks_realtime_columns(db: str) -> None:
    expected = json.loads(DATA.read_text())["tables"]
    conn = await asyncpg.connect(db)
    try:
        for table, cols in expected.items():
            got = [
                r["column_name"]
                for r in await conn.fetch(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
                    "AND table_name = $1 ORDER BY ordinal_position",
                    table,
                )
            ]
            assert got == [c["name"] for c in cols], table
    finally:
        await conn.close()


async def test_lookup_by_id_uses_the_index(db: str) -> None:
    conn = await seeded(db)
    try:
        for view in ("ps_endpoints", "ps_aors", "ps_auths"):
            plan = "\n".join(
                r[0] for r in await conn.fetch(f"EXPLAIN SELECT * FROM {view} WHERE id = '1001@acme.example' LIMIT 1")
            )
            assert f"Index Scan using rt_{view}_id" in plan, plan
    finally:
        await conn.close()


async def test_plain_sql_edit_flattens_and_feeds_the_outbox(db: str) -> None:
    conn = await seeded(db)
    try:
        a = await oid(conn, "acme", "a")
        await conn.execute(
            "UPDATE pbx.object_options SET value = '{new-ctx}' WHERE object_id = $1 AND option = 'context'", a
        )
        assert await conn.fetchval("SELECT context FROM ps_endpoints WHERE id = '1001@acme.example'") == "new-ctx"
        rows = await conn.fetch("SELECT view, object_id, op FROM pbx.outbox ORDER BY seq DESC LIMIT 1")
        assert [tuple(r) for r in rows] == [("ps_endpoints", "1001@acme.example", "changed")]
    finally:
        await conn.close()


async def test_cross_tenant_parent_is_impossible(db: str) -> None:
    conn = await seeded(db)
    try:
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await conn.execute(
                "INSERT INTO pbx.object_parents (tenant_id, object_id, ordinal, parent_id) "
                "SELECT o.tenant_id, o.id, 5, $2 FROM pbx.objects o WHERE o.id = $1",
                await oid(conn, "acme", "1001"),
                await oid(conn, "beta", "t"),
            )
    finally:
        await conn.close()


async def test_two_transactions_closing_one_cycle_cannot_both_commit(db: str) -> None:
    c1, c2 = await seeded(db), await asyncpg.connect(db)
    try:
        a, b = await oid(c1, "acme", "a"), await oid(c1, "acme", "b")
        t1, t2 = c1.transaction(), c2.transaction()
        await t1.start()
        await t2.start()
        link = (
            "INSERT INTO pbx.object_parents (tenant_id, object_id, ordinal, parent_id) "
            "SELECT tenant_id, $1, 0, $2 FROM pbx.objects WHERE id = $1"
        )
        await c1.execute(link, a, b)  # a -> b
        second = asyncio.ensure_future(c2.execute(link, b, a))  # b -> a: waits for the first
        await asyncio.sleep(0)
        await t1.commit()
        with pytest.raises(asyncpg.CheckViolationError, match="parent cycle"):
            await second
        await t2.rollback()
    finally:
        await c1.close()
        await c2.close()


async def test_asterisk_role_reads_views_and_writes_contacts_only(db: str) -> None:
    admin = await seeded(db)
    role = "ast_" + db.rsplit("/", 1)[1]
    await admin.execute(f"CREATE ROLE {role} LOGIN IN ROLE pbx_asterisk")
    dsn = db.replace("postgres@", f"{role}@")
    ast = await asyncpg.connect(dsn)
    try:
        assert await ast.fetchval("SELECT count(*) FROM ps_endpoints") == 2
        await ast.execute(
            "INSERT INTO ps_contacts (id, uri, endpoint) VALUES ('1001@acme.example^3B@x', "
            "'sip:1001@127.0.0.1', '1001@acme.example')"
        )
        await ast.execute("DELETE FROM ps_contacts")
        for sql in ("SELECT * FROM pbx.objects", "DELETE FROM ps_endpoints", "SELECT * FROM pbx.rt_ps_auths"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await ast.execute(sql)
    finally:
        await ast.close()
        await admin.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
        await admin.close()


async def test_tenant_admin_sees_and_edits_only_its_tenant(db: str) -> None:
    admin = await seeded(db)
    role = "adm_" + db.rsplit("/", 1)[1]
    await admin.execute(f"CREATE ROLE {role} LOGIN")
    await admin.execute("SELECT pbx.grant_tenant_admin('acme', $1)", role)
    ta = await asyncpg.connect(db.replace("postgres@", f"{role}@"))
    try:
        assert [r["name"] for r in await ta.fetch("SELECT name FROM pbx.tenants")] == ["acme"]
        assert {r["name"] for r in await ta.fetch("SELECT name FROM pbx.objects")} == {"a", "b", "c", "1001"}
        assert await ta.fetchval("SELECT count(*) FROM pbx.rt_ps_endpoints") == 1
        beta_t = await oid(admin, "beta", "t")
        assert await ta.execute("DELETE FROM pbx.object_options WHERE object_id = $1", beta_t) == "DELETE 0"
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await ta.execute(
                "INSERT INTO pbx.objects (tenant_id, kind, name) "
                "SELECT id, 'template', 'x' FROM pbx.tenants WHERE false UNION ALL "
                "SELECT $1::bigint, 'template', 'x'",
                await admin.fetchval("SELECT id FROM pbx.tenants WHERE name = 'beta'"),
            )
        # Its own edits flatten like anyone else's (the flush runs with the owner's rights).
        await ta.execute(
            "UPDATE pbx.object_options SET value = '{z}' WHERE object_id = $1 AND option = 'context'",
            await oid(admin, "acme", "a"),
        )
        assert await admin.fetchval("SELECT context FROM ps_endpoints WHERE id = '1001@acme.example'") == "z"
    finally:
        await ta.close()
        await admin.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
        await admin.close()
