"""Tenant fences and secrets (issue #15) in the database: plain SQL, as the operator and as a
tenant admin, meets the same checks as `pbxctl apply`."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from pbx_base.errors import InvalidInput
from sorcery_backend.apply import apply_config
from sorcery_backend.declarative import load_yaml, parse_config

REPO = Path(__file__).resolve().parent.parent

CONFIG = """
tenants:
  acme:
    domain: acme.example
    templates:
      phone: {endpoint: {context: acme-internal, allow: "!all,ulaw"}, aor: {max_contacts: 1}}
    endpoints:
      "1001": {templates: [phone], auth: {password: s3cret}}
      carrier: {endpoint: {context: acme-in}, identify: {match: [192.0.2.10]}}
    extensions:
      "1001": {type: simple, name: Alice, endpoints: ["1001"]}
  beta:
    domain: beta.example
    templates:
      phone: {endpoint: {context: beta-internal}}
    endpoints:
      "1005": {templates: [phone], auth: {password: b-pass}}
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


async def refused(conn: asyncpg.Connection, sql: str, *args: object) -> str:
    """The one-line refusal of a statement (which must be refused)."""
    with pytest.raises(asyncpg.PostgresError) as exc:
        async with conn.transaction():
            await conn.execute(sql, *args)
    message = str(exc.value)
    assert "\n" not in message
    return message


@pytest.fixture
async def tenant_admin(db: str) -> AsyncIterator[tuple[asyncpg.Connection, asyncpg.Connection]]:
    """(operator, admin of tenant acme) connections on the seeded database."""
    admin = await seeded(db)
    role = "adm_" + db.rsplit("/", 1)[1]
    await admin.execute(f"CREATE ROLE {role} LOGIN")
    await admin.execute("SELECT pbx.grant_tenant_admin('acme', $1)", role)
    ta = await asyncpg.connect(db.replace("postgres@", f"{role}@"))
    try:
        yield admin, ta
    finally:
        await ta.close()
        await admin.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
        await admin.close()


# ---------------------------------------------------------------------------------------------
# What the fences compare with matches the shipped node configuration


def test_reserved_contexts_are_the_shipped_dialplans_contexts(db: str) -> None:
    """Every context a node's own dialplan defines: the shipped one and the dev stack's test contexts."""
    shipped: set[str] = set()
    for path in (
        REPO / "asterisk_conf" / "extensions.conf",
        REPO / "devstack" / "asterisk_dev" / "extensions_dev.conf",
    ):
        shipped |= set(re.findall(r"^\[([^\]]+)\]", path.read_text(), re.M))
    shipped.discard("general")

    async def run() -> set[str]:
        conn = await asyncpg.connect(db)
        try:
            return {r["name"] for r in await conn.fetch("SELECT name FROM pbx.reserved_contexts")}
        finally:
            await conn.close()

    assert asyncio.run(run()) == shipped


def test_every_shipped_transport_is_listed(db: str) -> None:
    text = (REPO / "asterisk_conf" / "pjsip.conf").read_text()
    shipped = {m.group(1) for m in re.finditer(r"^\[([^\]]+)\]\s*\ntype\s*=\s*transport", text, re.M)}
    assert shipped

    async def run() -> set[str]:
        conn = await asyncpg.connect(db)
        try:
            return {r["name"] for r in await conn.fetch("SELECT name FROM pbx.transports")}
        finally:
            await conn.close()

    assert shipped <= asyncio.run(run())


# ---------------------------------------------------------------------------------------------
# Credentials at rest


async def test_inbound_passwords_are_stored_only_as_digests(db: str) -> None:
    conn = await seeded(db)
    try:
        stored = await conn.fetch("SELECT value FROM pbx.object_options WHERE section = 'auth' AND option = 'password'")
        assert len(stored) == 2 and all(r["value"][0].startswith("md5:") for r in stored)
        assert "s3cret" not in str(await conn.fetch("SELECT * FROM pbx.object_options"))
        row = await conn.fetchrow("SELECT * FROM ps_auths WHERE id = '1001@acme.example'")
        assert row["password"] is None and row["auth_type"] == "md5" and row["realm"] == "acme.example"
        assert row["md5_cred"] == hashlib.md5(b"1001:acme.example:s3cret").hexdigest()
        # A plain-SQL password change is hashed at commit like apply's.
        await conn.execute(
            "UPDATE pbx.object_options SET value = '{n3w}' WHERE object_id = $1 AND option = 'password'",
            await oid(conn, "acme", "1001"),
        )
        assert await conn.fetchval("SELECT md5_cred FROM ps_auths WHERE id = '1001@acme.example'") == (
            hashlib.md5(b"1001:acme.example:n3w").hexdigest()
        )
        # A renamed domain keeps the realm the digest was made for, so the phone keeps working.
        await conn.execute("UPDATE pbx.tenants SET domain = 'acme.test' WHERE name = 'acme'")
        row = await conn.fetchrow("SELECT * FROM ps_auths WHERE id = '1001@acme.test'")
        assert row["realm"] == "acme.example" and row["md5_cred"] == hashlib.md5(b"1001:acme.example:n3w").hexdigest()
    finally:
        await conn.close()


async def test_a_template_cannot_hold_an_inbound_password(db: str) -> None:
    conn = await seeded(db)
    try:
        msg = await refused(
            conn,
            "INSERT INTO pbx.object_options VALUES ($1, 'auth', 'password', '{x}')",
            await oid(conn, "acme", "phone"),
        )
        assert "template acme/phone" in msg and "belongs to one endpoint" in msg
    finally:
        await conn.close()


async def test_the_asterisk_role_reads_no_inbound_password(db: str) -> None:
    admin = await seeded(db)
    role = "ast_" + db.rsplit("/", 1)[1]
    await admin.execute(f"CREATE ROLE {role} LOGIN IN ROLE pbx_asterisk")
    ast = await asyncpg.connect(db.replace("postgres@", f"{role}@"))
    try:
        assert await ast.fetchval("SELECT count(*) FROM ps_auths WHERE password IS NOT NULL") == 0
        assert await ast.fetchval("SELECT count(*) FROM ps_auths WHERE md5_cred IS NOT NULL") == 2
    finally:
        await ast.close()
        await admin.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
        await admin.close()


# ---------------------------------------------------------------------------------------------
# What a tenant admin may do in plain SQL


async def test_tenant_admin_cannot_alias_another_tenants_domain(
    tenant_admin: tuple[asyncpg.Connection, asyncpg.Connection],
) -> None:
    admin, ta = tenant_admin
    acme = await ta.fetchval("SELECT id FROM pbx.tenants WHERE name = 'acme'")
    for alias in ("beta.example", "BETA.Example", "acme.EXAMPLE"):
        msg = await refused(ta, "INSERT INTO pbx.domain_aliases (tenant_id, alias) VALUES ($1, $2)", acme, alias)
        assert "already claimed" in msg and "case-insensitively" in msg
    await ta.execute("INSERT INTO pbx.domain_aliases (tenant_id, alias) VALUES ($1, 'acme.net')", acme)
    # ... nor can the operator give another tenant a domain that is already an alias.
    msg = await refused(admin, "UPDATE pbx.tenants SET domain = 'ACME.net' WHERE name = 'beta'")
    assert "tenant beta: domain 'ACME.net' is already claimed" in msg
    msg = await refused(admin, "INSERT INTO pbx.tenants (name, domain) VALUES ('gamma', $1)", "a" * 200_000)
    assert "is not a domain name" in msg and len(msg) < 300


async def test_tenant_admin_applies_a_file_of_its_own_tenant_and_no_other(
    tenant_admin: tuple[asyncpg.Connection, asyncpg.Connection],
) -> None:
    """`pbxctl apply` as a tenant admin: its own tenant converges (also its domain); a tenant it
    does not administer, existing or new, is refused and nothing of the file is kept."""
    admin, ta = tenant_admin
    own = CONFIG.split("  beta:")[0].replace("acme.example", "acme.net").replace("1001", "1002")
    await apply_config(ta, parse_config(load_yaml(own)))
    assert await admin.fetchval("SELECT domain FROM pbx.tenants WHERE name = 'acme'") == "acme.net"
    got = await admin.fetch(
        "SELECT o.name FROM pbx.objects o JOIN pbx.tenants t ON t.id = o.tenant_id "
        "WHERE t.name = 'acme' AND o.kind = 'endpoint' ORDER BY 1"
    )
    assert [r["name"] for r in got] == ["1002", "carrier"]
    for other in (
        CONFIG.split("  beta:")[0].replace("acme", "gamma"),
        "tenants:\n  beta:" + CONFIG.split("  beta:")[1],
    ):
        with pytest.raises(InvalidInput, match=r"^tenant (gamma|beta): not one of this role's tenants \(rule: "):
            await apply_config(ta, parse_config(load_yaml(other.replace("1001", "1003"))))
    assert await admin.fetchval("SELECT count(*) FROM pbx.tenants WHERE name = 'gamma'") == 0
    assert await admin.fetchval("SELECT count(*) FROM pbx.objects WHERE name = '1003'") == 0


async def test_tenant_admin_meets_the_fences_in_sql(
    tenant_admin: tuple[asyncpg.Connection, asyncpg.Connection],
) -> None:
    admin, ta = tenant_admin
    ep = await oid(admin, "acme", "1001")
    carrier = await oid(admin, "acme", "carrier")
    upsert = (
        "INSERT INTO pbx.object_options (object_id, section, option, value) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (object_id, section, option) DO UPDATE SET value = EXCLUDED.value"
    )
    cases = [
        (ep, "endpoint", "context", ["pbx-dial-test"], "project reserves"),
        (ep, "endpoint", "context", ["c" * 1100], "longer than 79"),
        (ep, "endpoint", "callerid", ["x" * (1 << 20)], "longer than 255"),
        (ep, "endpoint", "rtp_engine", ["asterisk"], "operator policy"),
        (ep, "endpoint", "set_var", ["GLOBAL(X)=1"], "functions and globals reach the node"),
        (ep, "endpoint", "allow", ["!all,bogus"], "codec"),
        (ep, "endpoint", "callerid", ['"A"\r\n <1>'], "control character"),
        (ep, "endpoint", "transport", ["transport-nowhere"], "names no transport"),
        (ep, "aor", "contact", ["not a uri"], "not a SIP URI"),
        (ep, "aor", "max_contacts", ["12345678901234567890"], "whole number"),
        (ep, "auth", "realm", ["beta.example"], "operator policy"),
        (carrier, "identify", "match_header", ["X-Carrier: beta"], "operator policy"),
        (carrier, "identify", "match", ["carrier.beta.example"], "not an IP address or network"),
    ]
    for obj, section, option, value, rule in cases:
        msg = await refused(ta, upsert, obj, section, option, value)
        assert rule in msg, msg
        assert len(msg) < 400
    msg = await refused(ta, "UPDATE pbx.objects SET transport = 'transport-x' WHERE id = $1", ep)
    assert "endpoint acme/1001: transport 'transport-x' names no transport" in msg
    msg = await refused(ta, "UPDATE pbx.extensions SET name = E'Al\\r\\nice' WHERE number = '1001'")
    assert "extension acme/1001: name contains a control character" in msg
    # A secret is never quoted back.
    msg = await refused(ta, upsert, ep, "auth", "password", ["hunter2\n"])
    assert "hunter2" not in msg


async def test_tenant_admin_cannot_take_another_tenants_carrier_calls(
    tenant_admin: tuple[asyncpg.Connection, asyncpg.Connection],
) -> None:
    admin, ta = tenant_admin
    beta_ep = await oid(admin, "beta", "1005")
    msg = await refused(
        admin, "INSERT INTO pbx.object_options VALUES ($1, 'identify', 'match', '{192.0.2.0/24}')", beta_ep
    )
    assert "identify match 192.0.2.0/24 overlaps 192.0.2.10/32 of an endpoint of another tenant" in msg
    ep = await oid(admin, "acme", "1001")
    msg = await refused(ta, "INSERT INTO pbx.object_options VALUES ($1, 'identify', 'match', '{192.0.2.10}')", ep)
    assert "of endpoint acme/carrier" in msg
    # Not overlapping: fine, for anyone.
    await admin.execute("INSERT INTO pbx.object_options VALUES ($1, 'identify', 'match', '{192.0.2.11}')", beta_ep)


async def test_two_concurrent_overlapping_matches_cannot_both_commit(db: str) -> None:
    admin = await seeded(db)
    c1, c2 = await asyncpg.connect(db), await asyncpg.connect(db)
    try:
        t1, t2 = c1.transaction(), c2.transaction()
        await t1.start()
        await t2.start()
        await c1.execute(
            "INSERT INTO pbx.object_options VALUES ($1, 'identify', 'match', '{198.51.100.0/24}')",
            await oid(admin, "acme", "1001"),
        )
        await c2.execute(
            "INSERT INTO pbx.object_options VALUES ($1, 'identify', 'match', '{198.51.100.7}')",
            await oid(admin, "beta", "1005"),
        )
        await c1.execute("SET CONSTRAINTS ALL IMMEDIATE")
        second = asyncio.create_task(c2.execute("SET CONSTRAINTS ALL IMMEDIATE"))
        await asyncio.sleep(0.2)
        await t1.commit()
        with pytest.raises(asyncpg.ExclusionViolationError):
            await asyncio.wait_for(second, 10)
        await t2.rollback()
    finally:
        await c1.close()
        await c2.close()
        await admin.close()


async def test_tenant_admin_cannot_reach_other_tenants_through_the_projects_functions(
    tenant_admin: tuple[asyncpg.Connection, asyncpg.Connection],
) -> None:
    admin, ta = tenant_admin
    me = await ta.fetchval("SELECT current_user")
    other = f"{me}_b"
    await admin.execute(f"CREATE ROLE {other}")
    try:
        await admin.execute("SELECT pbx.grant_tenant_admin('beta', $1)", other)
        beta = await admin.fetchval("SELECT id FROM pbx.tenants WHERE name = 'beta'")
        await refused(ta, "SELECT pbx.routing_changed(ARRAY[$1::bigint])", beta)
        assert [r["role_name"] for r in await ta.fetch("SELECT role_name FROM pbx.tenant_admins")] == [me]
    finally:
        await admin.execute(f"DROP OWNED BY {other}; DROP ROLE {other}")
    await refused(ta, "UPDATE pbx.tenants SET plan = 'gold'")
    await refused(ta, "UPDATE pbx.tenants SET name = 'evil'")
    await refused(ta, "INSERT INTO pbx.option_policy VALUES ('default', 'endpoint', 'context', true, true)")


async def test_the_operators_plan_may_lift_a_fence(db: str) -> None:
    conn = await seeded(db)
    try:
        ep = await oid(conn, "acme", "1001")
        await conn.execute(
            "INSERT INTO pbx.option_policy (plan, section, option, allowed, unfenced) VALUES "
            "('lab', 'endpoint', 'context', true, true), ('lab', 'endpoint', 'rtp_engine', true, false), "
            "('lab', 'identify', 'match', true, true)"
        )
        await conn.execute("UPDATE pbx.tenants SET plan = 'lab' WHERE name = 'acme'")
        await conn.execute("INSERT INTO pbx.object_options VALUES ($1, 'endpoint', 'context', '{pbx-dial-test}')", ep)
        await conn.execute("INSERT INTO pbx.object_options VALUES ($1, 'endpoint', 'rtp_engine', '{asterisk}')", ep)
        row = await conn.fetchrow("SELECT context, rtp_engine FROM ps_endpoints WHERE id = '1001@acme.example'")
        assert tuple(row) == ("pbx-dial-test", "asterisk")
        await conn.execute(
            "UPDATE pbx.object_options SET value = '{gw.carrier.example}' WHERE object_id = $1 AND option = 'match'",
            await oid(conn, "acme", "carrier"),
        )
        assert await conn.fetchval("SELECT match FROM ps_endpoint_id_ips WHERE id = 'carrier@acme.example'") == (
            "gw.carrier.example"
        )
        # The format checks stay.
        await refused(
            conn, "UPDATE pbx.object_options SET value = '{\"a b\"}' WHERE object_id = $1 AND option = 'context'", ep
        )
    finally:
        await conn.close()


async def test_the_operators_plan_may_force_an_option(db: str) -> None:
    conn = await seeded(db)

    async def direct_media() -> dict[str, str | None]:
        rows = await conn.fetch("SELECT id, direct_media FROM ps_endpoints")
        return {r["id"]: r["direct_media"] for r in rows}

    try:
        await conn.execute(
            "INSERT INTO pbx.option_policy (plan, section, option, forced) "
            "VALUES ('gold', 'endpoint', 'direct_media', '{no}')"
        )
        assert set((await direct_media()).values()) == {None}
        await conn.execute("UPDATE pbx.tenants SET plan = 'gold' WHERE name = 'acme'")
        assert await direct_media() == {
            "1001@acme.example": "no",
            "carrier@acme.example": "no",
            "1005@beta.example": None,
        }
        msg = await refused(
            conn,
            "INSERT INTO pbx.object_options VALUES ($1, 'endpoint', 'direct_media', '{yes}')",
            await oid(conn, "acme", "phone"),
        )
        assert "is set for this tenant by the operator" in msg
        await refused(conn, "UPDATE pbx.option_policy SET forced = '{perhaps}' WHERE plan = 'gold'")
        await conn.execute("DELETE FROM pbx.option_policy WHERE plan = 'gold'")
        assert set((await direct_media()).values()) == {None}
    finally:
        await conn.close()


async def test_apply_keeps_an_unchanged_password_and_rehashes_when_username_or_realm_change(db: str) -> None:
    conn = await seeded(db)

    async def stored() -> tuple[str, list[str]]:
        r = await conn.fetchrow(
            "SELECT xmin::text AS x, value FROM pbx.object_options WHERE object_id = $1 AND option = 'password'",
            await oid(conn, "acme", "1001"),
        )
        return r["x"], list(r["value"])

    async def auth_row() -> tuple[str, str, str]:
        r = await conn.fetchrow("SELECT username, realm, md5_cred FROM ps_auths WHERE id LIKE '1001@acme%'")
        return r["username"], r["realm"], r["md5_cred"]

    try:
        before = await stored()
        await apply_config(conn, parse_config(load_yaml(CONFIG)))
        assert await stored() == before  # the same password is not rewritten
        await apply_config(conn, parse_config(load_yaml(CONFIG.replace("acme.example", "acme.test"))))
        assert await auth_row() == ("1001", "acme.test", hashlib.md5(b"1001:acme.test:s3cret").hexdigest())
        inherited = CONFIG.replace("acme.example", "acme.test").replace(
            'phone: {endpoint: {context: acme-internal, allow: "!all,ulaw"}, aor: {max_contacts: 1}}',
            "phone: {endpoint: {context: acme-internal}, auth: {username: alice}}",
        )
        await apply_config(conn, parse_config(load_yaml(inherited)))
        assert await auth_row() == ("alice", "acme.test", hashlib.md5(b"alice:acme.test:s3cret").hexdigest())
    finally:
        await conn.close()
