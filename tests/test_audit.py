"""The audit trail (sql/016_audit.sql, sorcery_backend/audit.py, `pbxctl audit`) on a real Postgres."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from pbx_base.errors import UnknownTenant
from pbxctl.commands.audit import parse_age, parse_since
from sorcery_backend.apply import apply_config
from sorcery_backend.audit import read_audit, trim_audit
from sorcery_backend.declarative import load_yaml, parse_config

ACME = """
tenants:
  acme:
    domain: acme.example
    templates:
      base: {endpoint: {context: acme-internal}}
      unused: {endpoint: {context: nowhere}}
    endpoints:
      "1001": {templates: [base], auth: {password: s3cret-a}}
    extensions:
      "1001": {type: simple, name: Alice, endpoints: ["1001"]}
"""
BETA = """
tenants:
  beta:
    domain: beta.example
    endpoints:
      "2001": {auth: {password: s3cret-b}, endpoint: {context: beta-internal}}
"""


class _Abort(Exception):
    pass


async def _apply(conn: asyncpg.Connection, text: str, **kw: Any) -> dict[str, Any]:
    return (await apply_config(conn, parse_config(load_yaml(text)), **kw)).to_json()


async def _rows(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT * FROM pbx.audit ORDER BY id")
    return [dict(r, touched=json.loads(r["touched"]), change_set=json.loads(r["change_set"])) for r in rows]


@contextlib.asynccontextmanager
async def tenant_admin(db: str, admin: asyncpg.Connection, tenant: str) -> AsyncIterator[asyncpg.Connection]:
    role = f"adm_{tenant}_" + db.rsplit("/", 1)[1]
    await admin.execute(f"CREATE ROLE {role} LOGIN")
    await admin.execute("SELECT pbx.grant_tenant_admin($1, $2)", tenant, role)
    conn = await asyncpg.connect(db.replace("postgres@", f"{role}@"))
    try:
        yield conn
    finally:
        await conn.close()
        await admin.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")


async def test_apply_writes_one_row_per_tenant_with_its_change_set_and_actor(db: str) -> None:
    conn = await asyncpg.connect(db)
    try:
        changes = await _apply(conn, ACME, actor="pbxctl:tester")
        [row] = await _rows(conn)
        assert row["tenant"] == "acme"
        assert row["actor"] == "pbxctl:tester"
        assert row["session_role"] == "postgres" and row["roles"] == ["postgres"]
        assert row["change_set"] == changes
        assert row["touched"] == {
            "tenant": ["created"],
            "templates": ["base", "unused"],
            "endpoints": ["1001"],
            "extensions": ["1001"],
        }
        assert "s3cret" not in json.dumps(row, default=str)
        assert await conn.fetchval("SELECT count(*) FROM pbx.audit_pending") == 0

        # Applying the same file again changes nothing, so it records nothing.
        assert not any(any(v.values()) for v in (await _apply(conn, ACME)).values())
        assert len(await _rows(conn)) == 1

        # Two tenants in one transaction: one row each, each with its own ids only.
        both = ACME.replace("name: Alice", "name: Alicia") + BETA.replace("tenants:\n", "")
        changes = await _apply(conn, both, actor="pbxctl:tester")
        rows = (await _rows(conn))[1:]
        assert [r["tenant"] for r in rows] == ["acme", "beta"]
        assert rows[0]["xid"] == rows[1]["xid"]
        assert rows[0]["touched"] == {"extensions": ["1001"]}
        assert not any(any(v.values()) for v in rows[0]["change_set"].values())
        assert rows[1]["change_set"] == changes
    finally:
        await conn.close()


async def test_a_rolled_back_or_refused_change_writes_nothing(db: str) -> None:
    conn = await asyncpg.connect(db)
    try:
        await _apply(conn, ACME)
        before = await _rows(conn)
        await _apply(conn, ACME.replace("acme-internal", "acme-2"), dry_run=True)
        with contextlib.suppress(_Abort):
            async with conn.transaction():
                await _apply(conn, ACME.replace("acme-internal", "acme-3"))
                raise _Abort
        with pytest.raises(asyncpg.CheckViolationError):
            async with conn.transaction():
                await conn.execute("UPDATE pbx.extensions SET name = 'x'")
                await conn.execute("INSERT INTO pbx.tenants (name, domain) VALUES ('Bad Name', 'bad.example')")
        # A savepoint rolled back takes its notes along; the rest of the transaction is recorded.
        async with conn.transaction():
            await conn.execute("UPDATE pbx.extensions SET name = 'kept'")
            with contextlib.suppress(_Abort):
                async with conn.transaction():
                    await conn.execute("DELETE FROM pbx.objects WHERE name = 'unused'")
                    raise _Abort
        after = await _rows(conn)
        assert after[: len(before)] == before
        assert [r["touched"] for r in after[len(before) :]] == [{"extensions": ["1001"]}]
    finally:
        await conn.close()


async def test_plain_sql_by_a_tenant_admin_is_recorded_with_its_role(db: str) -> None:
    admin = await asyncpg.connect(db)
    try:
        await _apply(admin, ACME)
        await _apply(admin, BETA)
        async with tenant_admin(db, admin, "acme") as ta:
            role = await ta.fetchval("SELECT current_user")
            async with ta.transaction():
                await ta.execute("SET LOCAL pbx.actor = 'token:ops'")
                await ta.execute("SELECT pbx.audit_note_role('postgres')")  # a claim it cannot make
                await ta.execute(
                    "UPDATE pbx.object_options SET value = '{acme-x}' WHERE option = 'context' AND object_id = "
                    "(SELECT id FROM pbx.objects WHERE name = 'base')"
                )
            row = (await _rows(admin))[-1]
            who = (row["tenant"], row["session_role"], row["roles"], row["actor"])
            assert who == ("acme", role, [role], "token:ops")
            assert row["touched"] == {"templates": ["base"]}
            assert row["change_set"]["changed"]["ps_endpoints"] == ["1001@acme.example"]

            # SET ROLE in a superuser's session: the statement's role is recorded beside the login.
            async with admin.transaction():
                await admin.execute(f"SET LOCAL ROLE {role}")
                await admin.execute("UPDATE pbx.extensions SET name = 'Al'")
            row = (await _rows(admin))[-1]
            assert (row["session_role"], row["roles"], row["actor"]) == ("postgres", [role], None)

            # Row-level security: A's admin reads A's rows only and writes none.
            assert {r["tenant"] for r in await ta.fetch("SELECT tenant FROM pbx.audit")} == {"acme"}
            with pytest.raises(UnknownTenant):
                await read_audit(ta, tenant="beta")
            for sql in ("DELETE FROM pbx.audit", "UPDATE pbx.audit SET actor = 'x'", "SELECT pbx.trim_audit('0s')"):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await ta.execute(sql)
    finally:
        await admin.close()


async def test_changes_after_set_constraints_immediate_rewrite_the_transactions_row(db: str) -> None:
    conn = await asyncpg.connect(db)
    try:
        await _apply(conn, ACME)
        async with conn.transaction():
            await conn.execute("UPDATE pbx.extensions SET name = 'A'")
            await conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
            first = (await _rows(conn))[-1]
            await conn.execute("UPDATE pbx.object_options SET value = '{y}' WHERE option = 'context'")
        rows = await _rows(conn)
        assert rows[-1]["id"] == first["id"] and rows[-1]["xid"] == first["xid"]
        assert rows[-1]["touched"] == {"extensions": ["1001"], "templates": ["base", "unused"]}
        assert rows[-1]["change_set"]["changed"]["ps_endpoints"] == ["1001@acme.example"]

        # A routing edit first, a flattening edit after: the row still waits for the flush.
        async with conn.transaction():
            await conn.execute("UPDATE pbx.extensions SET name = 'B'")
            await conn.execute("UPDATE pbx.object_options SET value = '{z}' WHERE option = 'context'")
        row = (await _rows(conn))[-1]
        assert row["id"] != first["id"]
        assert row["change_set"]["changed"]["ps_endpoints"] == ["1001@acme.example"]
    finally:
        await conn.close()


async def test_a_deleted_or_renamed_tenant_keeps_its_trail(db: str) -> None:
    conn = await asyncpg.connect(db)
    try:
        await _apply(conn, ACME)
        await conn.execute("UPDATE pbx.tenants SET name = 'acme2', domain = 'acme2.example'")
        row = (await _rows(conn))[-1]
        assert row["tenant"] == "acme2" and row["touched"] == {"tenant": ["changed"]}
        assert row["change_set"]["deleted"]["ps_endpoints"] == ["1001@acme.example"]
        assert row["change_set"]["created"]["ps_endpoints"] == ["1001@acme2.example"]
        assert len(await read_audit(conn, tenant="acme")) == len(await read_audit(conn, tenant="acme2")) == 2
        await conn.execute("DELETE FROM pbx.tenants")
        row = (await _rows(conn))[-1]
        assert row["tenant"] == "acme2" and row["touched"]["tenant"] == ["deleted"]
        assert row["change_set"]["deleted"]["ps_auths"] == ["1001@acme2.example"]
        assert len(await read_audit(conn, tenant="acme")) == 3
        with pytest.raises(UnknownTenant):
            await read_audit(conn, tenant="nosuch")
    finally:
        await conn.close()


async def test_trim_removes_rows_older_than_the_retention(db: str) -> None:
    conn = await asyncpg.connect(db)
    try:
        await _apply(conn, ACME)
        await _apply(conn, BETA)
        await conn.execute("UPDATE pbx.audit SET at = now() - interval '40 days' WHERE tenant = 'acme'")
        assert await trim_audit(conn) == 0  # the default keeps 90 days
        assert await trim_audit(conn, timedelta(days=30)) == 1
        assert [e.tenant for e in await read_audit(conn)] == ["beta"]
        await conn.execute("UPDATE pbx.audit SET at = now() - interval '2 days'")
        await conn.execute("SET pbx.audit_keep = '1 day'")
        assert await trim_audit(conn) == 1
    finally:
        await conn.close()


def test_parse_since_and_age() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_since("90m", now) == now - timedelta(minutes=90)
    assert parse_since("2w", now) == now - timedelta(weeks=2)
    assert parse_since("2026-01-01T00:00:00Z", now) == datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_since("2026-01-01T00:00:00", now) == datetime(2026, 1, 1, tzinfo=UTC)  # no offset: UTC
    assert parse_age("7d") == timedelta(days=7)
    for bad in ("yesterday", "1y", "-1h", ""):
        with pytest.raises(ValueError):
            parse_since(bad, now)


def _pbxctl(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PBX_DATABASE_URL=dsn)
    return subprocess.run([sys.executable, "-m", "pbxctl", *args], capture_output=True, text=True, env=env, timeout=120)


def test_cli_apply_records_the_os_user_and_audit_filters(db: str, tmp_path: Path) -> None:
    for name, text in (("acme", ACME), ("beta", BETA)):
        f = tmp_path / f"{name}.yaml"
        f.write_text(text)
        assert _pbxctl(db, "apply", str(f)).returncode == 0

    p = _pbxctl(db, "audit", "--json")
    assert p.returncode == 0, p.stderr
    entries = json.loads(p.stdout)["audit"]
    assert [e["tenant"] for e in entries] == ["acme", "beta"]
    assert {e["actor"] for e in entries} == {f"pbxctl:{getpass.getuser()}"}
    assert entries[1]["change_set"]["created"]["ps_endpoints"] == ["2001@beta.example"]

    p = _pbxctl(db, "audit", "--tenant", "beta", "--since", "1h", "--json")
    assert [e["tenant"] for e in json.loads(p.stdout)["audit"]] == ["beta"]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert json.loads(_pbxctl(db, "audit", "--since", future, "--json").stdout) == {"audit": []}

    p = _pbxctl(db, "audit", "--tenant", "acme")
    assert p.returncode == 0
    [line] = p.stdout.splitlines()
    assert "\tacme\tpbxctl:" in line and "2 created" in line and "extensions 1001" in line

    p = _pbxctl(db, "audit", "--tenant", "nosuch")
    assert p.returncode == 1 and "tenant nosuch: unknown tenant" in p.stderr
    p = _pbxctl(db, "audit", "--since", "yesterday")
    assert p.returncode == 2 and "--since" in p.stderr

    p = _pbxctl(db, "audit", "trim", "--keep", "1s")
    assert p.returncode == 0, p.stderr
    assert "rows trimmed" in p.stderr
