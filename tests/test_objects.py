"""Per-object commands (`pbxctl tenant|endpoint|extension`) and the tenant document they edit."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
from typing import Any

import asyncpg
import pytest

from pbxctl.commands.objects import parse_assignment
from sorcery_backend import edit as edit_module
from sorcery_backend.apply import apply_config
from sorcery_backend.declarative import load_yaml, parse_config
from sorcery_backend.edit import EditRefused, edit_tenant
from sorcery_backend.tenant_doc import read_tenant

RICH = """
tenants:
  acme:
    domain: acme.example
    templates:
      base: {transport: transport-udp, endpoint: {allow: "!all,ulaw", context: acme-internal}, aor: {max_contacts: 1}}
      vip: {parents: [base], endpoint: {set_var: ["VIP=1", "X=2"]}}
    endpoints:
      "1001": {templates: [vip], auth: {password: s3cret}, endpoint: {callerid: '"Alice" <1001>'}}
      "1002": {templates: [base], auth: {password: other}}
      trunk1: {outbound_auth: {username: u, password: p}, registration: {server_uri: "sip:127.0.0.1"},
               identify: {match: ["127.0.0.2"]}}
    extensions:
      "1001": {type: simple, name: Alice, endpoints: ["1001"], forward: {mode: busy, to: "2000"}}
      "1002": {type: simple, name: Bob, endpoints: ["1002"], call_waiting: false, language: de}
      "2000": {type: group, name: Team, ranks: [{mode: default, delay_ms: 5000,
               members: ["1001", {number: "1002", active: false}]}, {mode: next, members: ["1001"]}]}
      "0": {type: trunk, name: Carrier, endpoints: [trunk1], outbound: {strip: 1, prepend: "+49"}, fallback: ["8"],
            ring_timeout_ms: 30000,
            dids: [{number: "+4930100", to: "2000"}, {prefix: "+4930", to: "{rest}"}]}
      "8": {type: trunk, name: Backup, endpoints: ["1002"]}
    settings: {ring_timeout_ms: 60000}
"""


async def test_a_tenant_read_back_and_applied_changes_nothing(db: str) -> None:
    conn = await asyncpg.connect(db)
    try:
        await apply_config(conn, parse_config(load_yaml(RICH)))
        audit_rows = await conn.fetchval("SELECT count(*) FROM pbx.audit")
        doc = await read_tenant(conn, "acme")
        changes = await apply_config(conn, parse_config({"tenants": {"acme": doc}}))
        assert len(changes) == 0
        # Not one row was written: the audit notes every statement that touched a row.
        assert await conn.fetchval("SELECT count(*) FROM pbx.audit") == audit_rows
        assert doc["extensions"]["2000"]["ranks"][0]["members"][1] == {"number": "1002", "active": False}
        assert doc["settings"] == {"ring_timeout_ms": 60000}
        assert doc["extensions"]["0"]["fallback"] == ["8"] and doc["extensions"]["0"]["outbound"]["prepend"] == "+49"
    finally:
        await conn.close()


async def test_an_edit_refuses_a_tenant_its_document_would_not_carry_whole(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = await asyncpg.connect(db)
    try:
        await apply_config(conn, parse_config(load_yaml(RICH)))
        before = await read_tenant(conn, "acme")

        # A reader that misses something (as it would a table added after it was written).
        async def partial(c: asyncpg.Connection, name: str) -> dict[str, Any]:
            doc = await read_tenant(c, name)
            del doc["extensions"]["1001"]["forward"]
            return doc

        monkeypatch.setattr(edit_module, "read_tenant", partial)
        with pytest.raises(EditRefused, match="tenant acme: holds data its document does not carry"):
            await edit_tenant(conn, "acme", lambda doc: doc)
        assert await read_tenant(conn, "acme") == before
    finally:
        await conn.close()


def test_parse_assignment() -> None:
    assert parse_assignment("endpoint.allow=!all,ulaw") == ("endpoint.allow", "!all,ulaw")
    assert parse_assignment("endpoints=[1001, b]") == ("endpoints", [1001, "b"])
    assert parse_assignment("name=") == ("name", None)
    with pytest.raises(ValueError):
        parse_assignment("name")


def _pbxctl(dsn: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, PBX_DATABASE_URL=dsn, **env)
    return subprocess.run(
        [sys.executable, "-m", "pbxctl", *args], capture_output=True, text=True, env=full, timeout=120
    )


def _ok(dsn: str, *args: str, **env: str) -> dict[str, Any]:
    p = _pbxctl(dsn, *args, "--json", **env)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)  # type: ignore[no-any-return]


def _refused(dsn: str, *args: str, code: int = 1) -> str:
    p = _pbxctl(dsn, *args)
    assert p.returncode == code, (p.stdout, p.stderr)
    assert p.stdout == ""
    return p.stderr.strip()


async def _state(dsn: str) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await read_tenant(conn, "acme"), await conn.fetchval("SELECT count(*) FROM pbx.audit")
    finally:
        await conn.close()


async def test_cli_edits_one_object_at_a_time(db: str) -> None:
    assert _ok(db, "tenant", "create", "acme", "--domain", "acme.example")["created"]["ps_endpoints"] == []
    assert "tenant acme: already exists" in _refused(db, "tenant", "create", "acme", "--domain", "x.example")

    assert not any(_ok(db, "template", "set", "acme", "base", "endpoint.context=acme-internal")["created"].values())
    cs = _ok(db, "endpoint", "set", "acme", "1001", "templates=[base]", "endpoint.allow=!all,ulaw")
    assert cs["created"]["ps_endpoints"] == ["1001@acme.example"]
    cs = _ok(db, "endpoint", "passwd", "acme", "1001", PBX_ENDPOINT_PASSWORD="s3cret")
    assert cs["created"]["ps_auths"] == ["1001@acme.example"]
    p = _pbxctl(db, "endpoint", "passwd", "acme", "1001", "--json", PBX_ENDPOINT_PASSWORD="n3w")
    assert "n3w" not in p.stdout + p.stderr and json.loads(p.stdout)["changed"]["ps_auths"] == ["1001@acme.example"]
    _ok(db, "endpoint", "set", "acme", "1002", "endpoint.context=acme-internal")
    assert _ok(db, "extension", "set", "acme", "1001", "type=simple", "endpoints=[1001]") == _ok(
        db, "extension", "set", "acme", "2000", "type=group", "ranks=[{members: [1001]}]"
    )
    _ok(db, "extension", "set", "acme", "1002", "type=simple", "endpoints=[1002]")

    # The same validation as apply: the file's model and references, then the database's rules.
    before = await _state(db)
    assert "auth.password: secrets are not taken" in _refused(db, "endpoint", "set", "acme", "1001", "auth.password=x")
    assert "extension acme/3000: type" in _refused(db, "extension", "set", "acme", "3000", "type=bogus")
    assert "unknown template 'nope'" in _refused(db, "endpoint", "set", "acme", "1003", "templates=[nope]")
    assert "unknown endpoint '1001'" in _refused(db, "endpoint", "delete", "acme", "1001")
    assert "unknown template 'base'" in _refused(db, "template", "delete", "acme", "base")
    assert "unknown extension '1001'" in _refused(db, "extension", "delete", "acme", "1001")
    assert "1002 is not a member" in _refused(db, "extension", "member", "pause", "acme", "2000", "1002")
    assert "tenant nosuch: unknown tenant" in _refused(db, "endpoint", "delete", "nosuch", "1001")
    assert "--mode and --to" in _refused(db, "extension", "forward", "acme", "1001", "--mode", "busy", code=2)
    assert await _state(db) == before

    # Routing edits: the routing version moves in the same commit, so the next call sees them.
    conn = await asyncpg.connect(db)
    try:
        version = "SELECT version FROM pbx.routing_versions"
        v = await conn.fetchval(version)
        cs = _ok(db, "extension", "forward", "acme", "1001", "--mode", "always", "--to", "1002", "--delay-ms", "3000")
        assert len([ids for views in cs.values() for ids in views.values() if ids]) == 0
        assert await conn.fetchval(version) > v
        assert (await read_tenant(conn, "acme"))["extensions"]["1001"]["forward"] == {
            "mode": "always",
            "to": "1002",
            "delay_ms": 3000,
        }
        v = await conn.fetchval(version)
        _ok(db, "extension", "member", "pause", "acme", "2000", "1001")
        assert await conn.fetchval(version) > v
        assert await conn.fetchval("SELECT active FROM pbx.rank_members WHERE number = '2000'") is False
        _ok(db, "extension", "member", "resume", "acme", "2000", "1001")
        _ok(db, "extension", "forward", "acme", "1001", "--off")
        assert "forward" not in (await read_tenant(conn, "acme"))["extensions"]["1001"]
        assert await conn.fetchval("SELECT active FROM pbx.rank_members WHERE number = '2000'") is True
        actors = {r["actor"] for r in await conn.fetch("SELECT actor FROM pbx.audit")}
        assert actors == {f"pbxctl:{getpass.getuser()}"}
    finally:
        await conn.close()

    _ok(db, "extension", "delete", "acme", "1002")
    assert _ok(db, "endpoint", "delete", "acme", "1002")["deleted"]["ps_endpoints"] == ["1002@acme.example"]
    assert "--yes" in _refused(db, "tenant", "delete", "acme", code=2)
    assert _ok(db, "tenant", "delete", "acme", "--yes")["deleted"]["ps_auths"] == ["1001@acme.example"]


async def test_a_tenant_admin_reads_its_own_trail_and_is_refused_cleanly(db: str) -> None:
    conn = await asyncpg.connect(db)
    role = "adm_" + db.rsplit("/", 1)[1]
    try:
        await apply_config(conn, parse_config(load_yaml(RICH)))
        await apply_config(conn, parse_config({"tenants": {"beta": {"domain": "beta.example"}}}))
        await conn.execute(f"CREATE ROLE {role} LOGIN")
        await conn.execute("SELECT pbx.grant_tenant_admin('acme', $1)", role)
        mine = db.replace("postgres@", f"{role}@")
        # The commands work for its own tenant and refuse others in one line.
        assert _pbxctl(mine, "extension", "member", "pause", "acme", "2000", "1001").returncode == 0
        assert await conn.fetchval("SELECT bool_and(NOT active) FROM pbx.rank_members WHERE member = '1001'")
        assert "tenant beta: unknown tenant" in _refused(mine, "extension", "set", "beta", "1", "type=simple")
        assert "only its owner trims it" in _refused(mine, "audit", "trim")
        admin = await asyncpg.connect(mine)
        try:
            await admin.execute("UPDATE pbx.rank_members SET active = false WHERE member = '1001'")
        finally:
            await admin.close()
        entries = _ok(mine, "audit")["audit"]
        assert {e["tenant"] for e in entries} == {"acme"}
        assert (entries[-1]["session_role"], entries[-1]["touched"]) == (role, {"extensions": ["2000"]})
    finally:
        await conn.execute(f"DROP OWNED BY {role}; DROP ROLE IF EXISTS {role}")
        await conn.close()
