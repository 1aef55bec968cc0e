"""Trunks and tenant settings in the database: apply/plan round trips, what routing reads back, and
the rules the database enforces itself (plain SQL cannot bypass them)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from routing.model import directory_from_config
from sorcery_backend.apply import apply_config
from sorcery_backend.declarative import parse_config

PBXCTL = [sys.executable, "-m", "pbxctl"]

TRUNKS = """
tenants:
  t:
    domain: t.example
    settings: {ring_timeout_ms: 30000}
    templates:
      carrier: {aor: {contact: ['sip:127.0.0.2:5070', 'sip:127.0.0.4:5070'], qualify_frequency: 60}}
    endpoints:
      '1001': {auth: {password: pw}}
      '1002': {auth: {password: pw}, aor: {contact: ['sip:1002@127.0.0.5:5070']}}
      carrier: {templates: [carrier]}
      backup: {aor: {contact: ['sip:127.0.0.6:5070']}}
    extensions:
      '1001': {type: simple, name: Alice, endpoints: ['1001'], dialout: true}
      '1002': {type: simple, name: Bob, endpoints: ['1002'], ring_timeout_ms: 15000}
      '2000': {type: group, name: Sales, ranks: [{members: ['1002']}]}
      '0':
        type: trunk
        name: Carrier
        endpoints: [carrier]
        outbound: {strip: 1, prepend: '+49'}
        fallback: ['8']
        dids:
          - {number: '+4930123456100', to: '2000'}
          - {prefix: '+4930123456', to: '{rest}'}
      '8': {type: trunk, name: Backup, endpoints: [backup], outbound: {strip: 0, prepend: ''}}
"""


def pbxctl(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PBX_DATABASE_URL=dsn)
    return subprocess.run([*PBXCTL, *args], capture_output=True, text=True, env=env, timeout=120)


def apply_text(dsn: str, tmp_path: Path, text: str, verb: str = "apply") -> subprocess.CompletedProcess[str]:
    f = tmp_path / "config.yaml"
    f.write_text(text)
    return pbxctl(dsn, verb, str(f), "--json")


TRUNK_KEYS = ("ring_timeout_ms", "outbound", "fallback", "dids")


async def routing_config(conn: asyncpg.Connection, tenant: str) -> dict[str, Any]:
    """What a loader adds to a tenant's routing data with sql/014_trunks.sql's functions: each
    extension's trunk keys, the settings, the endpoints' static contacts."""
    row = await conn.fetchrow(
        """
        SELECT (SELECT jsonb_object_agg(e.number, pbx.routing_trunk_keys(e.tenant_id, e.number))
                FROM pbx.extensions e WHERE e.tenant_id = t.id) AS extensions,
               pbx.routing_settings(t.id) AS settings,
               (SELECT jsonb_object_agg(s.endpoint, s.config) FROM pbx.routing_static_contacts(t.id) s) AS endpoints
        FROM pbx.tenants t WHERE t.name = $1
        """,
        tenant,
    )
    assert row is not None
    return {k: json.loads(row[k]) if row[k] is not None else {} for k in ("extensions", "settings", "endpoints")}


async def rows(conn: asyncpg.Connection) -> list[Any]:
    """Everything routing reads of the new tables and columns, to show that a refusal changed nothing."""
    out = []
    for q in (
        "SELECT tenant_id, ring_timeout_ms FROM pbx.tenant_settings ORDER BY 1",
        "SELECT number, ring_timeout_ms, outbound_strip, outbound_prepend FROM pbx.extensions ORDER BY 1",
        "SELECT number, ordinal, fallback FROM pbx.trunk_fallbacks ORDER BY 1, 2",
        "SELECT number, ordinal, kind, match, target FROM pbx.trunk_dids ORDER BY 1, 2",
    ):
        out.append([tuple(r) for r in await conn.fetch(q)])
    return out


def test_apply_twice_changes_nothing_and_plan_agrees(db: str, tmp_path: Path) -> None:
    p = apply_text(db, tmp_path, TRUNKS)
    assert p.returncode == 0, p.stderr
    for verb in ("plan", "apply"):
        p = apply_text(db, tmp_path, TRUNKS, verb)
        assert p.returncode == 0, p.stderr
        assert all(not ids for cat in json.loads(p.stdout).values() for ids in cat.values()), p.stdout


async def test_routing_reads_back_what_the_file_says(db: str, shared_dir: Path) -> None:
    folders = [shared_dir / "scenarios" / "trunks", Path(__file__).parent / "scenarios" / "trunks"]
    docs = [yaml.safe_load(TRUNKS)] + [
        yaml.safe_load(p.read_text())["config"] for folder in folders for p in sorted(folder.glob("*.yaml"))
    ]
    conn = await asyncpg.connect(db)
    try:
        for doc in docs:
            await apply_config(conn, parse_config(doc))
            read = await routing_config(conn, "t")
            # The keys the loader reads today, from the file; the new ones from the database.
            read["extensions"] = {
                n: {**{k: v for k, v in e.items() if k not in TRUNK_KEYS}, **read["extensions"][n]}
                for n, e in doc["tenants"]["t"]["extensions"].items()
            }
            loaded = directory_from_config("t", read)
            expected = directory_from_config("t", doc["tenants"]["t"])
            assert dict(loaded.extensions) == dict(expected.extensions)
            assert dict(loaded.static_contacts) == dict(expected.static_contacts)
            assert loaded.ring_timeout_ms == expected.ring_timeout_ms
            assert loaded.empty == expected.empty
    finally:
        await conn.close()


async def test_edits_are_converged(db: str) -> None:
    doc = yaml.safe_load(TRUNKS)
    conn = await asyncpg.connect(db)
    try:
        await apply_config(conn, parse_config(doc))
        t = doc["tenants"]["t"]
        del t["settings"]
        t["extensions"]["0"]["dids"] = [{"prefix": "+49301234561", "to": "1001"}]
        t["extensions"]["0"]["fallback"] = []
        del t["extensions"]["0"]["outbound"]
        t["extensions"]["8"]["fallback"] = ["0"]  # the reverse is no cycle once 0 has none
        await apply_config(conn, parse_config(doc))
        cfg = await routing_config(conn, "t")
        assert cfg["settings"] == {}
        assert cfg["extensions"]["0"].get("outbound") is None
        assert cfg["extensions"]["0"]["dids"] == [{"prefix": "+49301234561", "to": "1001"}]
        assert cfg["extensions"]["8"]["fallback"] == ["0"]
        assert "fallback" not in cfg["extensions"]["0"]
    finally:
        await conn.close()


def _edit(path: list[Any], value: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(TRUNKS)
    node: Any = doc["tenants"]["t"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "DID claimed by two trunks": (
        _edit(["extensions", "8", "dids"], [{"number": "+4930123456100", "to": "1001"}]),
        "also claimed by extension t/0",
    ),
    "DID prefix claimed twice": (
        _edit(["extensions", "8", "dids"], [{"prefix": "+4930123456", "to": "1001"}]),
        "also claimed",
    ),
    "DID to a missing extension": (
        _edit(["extensions", "8", "dids"], [{"number": "+49401", "to": "4711"}]),
        "unknown extension '4711'",
    ),
    "DID with both number and prefix": (
        _edit(["extensions", "8", "dids"], [{"number": "+49401", "prefix": "+494", "to": "1001"}]),
        "exactly one of number and prefix",
    ),
    "{rest} after an exact number": (_edit(["extensions", "8", "dids"], [{"number": "+49", "to": "{rest}"}]), "rest"),
    "fallback cycle": (_edit(["extensions", "8", "fallback"], ["0"]), "fallback cycle"),
    "fallback to a group": (_edit(["extensions", "0", "fallback"], ["2000"]), "fallbacks are trunk extensions"),
    "fallback to a missing number": (_edit(["extensions", "0", "fallback"], ["9"]), "unknown extension"),
    "negative strip": (_edit(["extensions", "0", "outbound"], {"strip": -1}), "outbound.strip"),
    "prepend with a space": (_edit(["extensions", "0", "outbound"], {"prepend": "+49 "}), "request-URI user"),
    "prepend with @": (_edit(["extensions", "0", "outbound"], {"prepend": "a@b"}), "request-URI user"),
    "outbound on a phone": (_edit(["extensions", "1001", "outbound"], {"strip": 1}), "only valid on a trunk"),
    "unknown setting": (_edit(["settings"], {"ring_timeout_ms": 1000, "colour": "red"}), "settings.colour"),
    "tenant timeout 0": (_edit(["settings"], {"ring_timeout_ms": 0}), "settings.ring_timeout_ms"),
    "tenant timeout over a day": (_edit(["settings"], {"ring_timeout_ms": 86400001}), "settings.ring_timeout_ms"),
    "extension timeout negative": (_edit(["extensions", "1002", "ring_timeout_ms"], -5), "ring_timeout_ms"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_bad_input_is_refused_with_one_line_and_nothing_changes(db: str, tmp_path: Path, case: str) -> None:
    assert apply_text(db, tmp_path, TRUNKS).returncode == 0

    async def snapshot() -> list[Any]:
        conn = await asyncpg.connect(db)
        try:
            return await rows(conn)
        finally:
            await conn.close()

    before = asyncio.run(snapshot())
    doc, needle = REFUSED[case]
    p = apply_text(db, tmp_path, yaml.safe_dump(doc))
    assert p.returncode == 1, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], p.stderr
    assert "t/" in lines[0] or "tenant t" in lines[0], lines[0]
    assert asyncio.run(snapshot()) == before


# ---------------------------------------------------------------------------------------------
# Plain SQL: the database's own rules


async def _seeded(db: str) -> tuple[asyncpg.Connection, int]:
    conn = await asyncpg.connect(db)
    await apply_config(conn, parse_config(yaml.safe_load(TRUNKS)))
    tid = await conn.fetchval("SELECT id FROM pbx.tenants WHERE name = 't'")
    return conn, tid


SQL_REFUSED = {
    "DID claimed twice": (
        "INSERT INTO pbx.trunk_dids (tenant_id, number, ordinal, kind, match, target) "
        "VALUES ($1, '8', 0, 'number', '+4930123456100', '1001')",
        asyncpg.UniqueViolationError,
    ),
    "DID to a missing extension": (
        "INSERT INTO pbx.trunk_dids (tenant_id, number, ordinal, kind, match, target) "
        "VALUES ($1, '8', 0, 'number', '+49401', '4711')",
        asyncpg.ForeignKeyViolationError,
    ),
    "DID on a phone": (
        "INSERT INTO pbx.trunk_dids (tenant_id, number, ordinal, kind, match, target) "
        "VALUES ($1, '1001', 0, 'number', '+49401', '1002')",
        asyncpg.ForeignKeyViolationError,
    ),
    "{rest} after an exact number": (
        "INSERT INTO pbx.trunk_dids (tenant_id, number, ordinal, kind, match, target) "
        "VALUES ($1, '8', 0, 'number', '+49401', '{rest}')",
        asyncpg.CheckViolationError,
    ),
    "fallback cycle": (
        "INSERT INTO pbx.trunk_fallbacks (tenant_id, number, ordinal, fallback) VALUES ($1, '8', 0, '0')",
        asyncpg.CheckViolationError,
    ),
    "fallback to itself": (
        "INSERT INTO pbx.trunk_fallbacks (tenant_id, number, ordinal, fallback) VALUES ($1, '8', 0, '8')",
        asyncpg.CheckViolationError,
    ),
    "fallback to a group": (
        "INSERT INTO pbx.trunk_fallbacks (tenant_id, number, ordinal, fallback) VALUES ($1, '8', 0, '2000')",
        asyncpg.ForeignKeyViolationError,
    ),
    "negative strip": (
        "UPDATE pbx.extensions SET outbound_strip = -1 WHERE tenant_id = $1 AND number = '0'",
        asyncpg.CheckViolationError,
    ),
    "prepend with a space": (
        "UPDATE pbx.extensions SET outbound_prepend = '+49 ' WHERE tenant_id = $1 AND number = '0'",
        asyncpg.CheckViolationError,
    ),
    "outbound on a phone": (
        "UPDATE pbx.extensions SET outbound_strip = 0, outbound_prepend = '' WHERE tenant_id = $1 AND number = '1001'",
        asyncpg.CheckViolationError,
    ),
    "tenant timeout 0": (
        "UPDATE pbx.tenant_settings SET ring_timeout_ms = 0 WHERE tenant_id = $1",
        asyncpg.CheckViolationError,
    ),
    "extension timeout over a day": (
        "UPDATE pbx.extensions SET ring_timeout_ms = 86400001 WHERE tenant_id = $1 AND number = '1002'",
        asyncpg.CheckViolationError,
    ),
    "a trunk with fallbacks turned into a group": (
        "UPDATE pbx.extensions SET type = 'group', outbound_strip = NULL, outbound_prepend = NULL "
        "WHERE tenant_id = $1 AND number = '8'",
        asyncpg.ForeignKeyViolationError,
    ),
    "deleting a fallback trunk": (
        "DELETE FROM pbx.extensions WHERE tenant_id = $1 AND number = '8'",
        asyncpg.ForeignKeyViolationError,
    ),
    "deleting a DID target": (
        "DELETE FROM pbx.extensions WHERE tenant_id = $1 AND number = '2000'",
        asyncpg.ForeignKeyViolationError,
    ),
}


@pytest.mark.parametrize("case", sorted(SQL_REFUSED))
async def test_plain_sql_cannot_bypass_the_rules(db: str, case: str) -> None:
    conn, tid = await _seeded(db)
    try:
        sql, error = SQL_REFUSED[case]
        with pytest.raises(error) as info:
            await conn.execute(sql, tid)
        if isinstance(info.value, asyncpg.RaiseError | asyncpg.CheckViolationError) and "rule" in str(info.value):
            assert "extension t/" in str(info.value)
    finally:
        await conn.close()


async def test_deleting_the_tenant_takes_everything(db: str) -> None:
    conn, _ = await _seeded(db)
    try:
        await apply_config(conn, parse_config({"tenants": {"t": None}}))
        assert await rows(conn) == [[], [], [], []]
    finally:
        await conn.close()


async def test_two_transactions_closing_one_fallback_cycle_cannot_both_commit(db: str) -> None:
    conn, tid = await _seeded(db)
    await conn.execute("DELETE FROM pbx.trunk_fallbacks WHERE tenant_id = $1", tid)
    other = await asyncpg.connect(db)
    try:
        a = conn.transaction()
        await a.start()
        await conn.execute(
            "INSERT INTO pbx.trunk_fallbacks (tenant_id, number, ordinal, fallback) VALUES ($1, '0', 0, '8')", tid
        )
        b = other.transaction()
        await b.start()
        second = asyncio.ensure_future(
            other.execute(
                "INSERT INTO pbx.trunk_fallbacks (tenant_id, number, ordinal, fallback) VALUES ($1, '8', 0, '0')", tid
            )
        )
        await _until_someone_waits_for_a_lock(conn)
        await a.commit()
        with pytest.raises(asyncpg.CheckViolationError):
            await asyncio.wait_for(second, 30)
        await b.rollback()
    finally:
        await other.close()
        await conn.close()


async def _until_someone_waits_for_a_lock(conn: asyncpg.Connection, timeout_s: float = 30) -> None:
    async def poll() -> None:
        while not await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ):
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout_s)


async def test_routing_changes_bump_the_tenant_version(db: str) -> None:
    conn, tid = await _seeded(db)
    try:
        before = await conn.fetchval("SELECT version FROM pbx.routing_versions WHERE tenant_id = $1", tid)
        await conn.execute("UPDATE pbx.tenant_settings SET ring_timeout_ms = 40000 WHERE tenant_id = $1", tid)
        await conn.execute("DELETE FROM pbx.trunk_dids WHERE tenant_id = $1 AND ordinal = 1", tid)
        after = await conn.fetchval("SELECT version FROM pbx.routing_versions WHERE tenant_id = $1", tid)
        assert after == before + 2
    finally:
        await conn.close()


async def test_a_static_contact_edit_bumps_the_tenant_version(db: str) -> None:
    conn, tid = await _seeded(db)
    try:

        async def version() -> int:
            return int(await conn.fetchval("SELECT version FROM pbx.routing_versions WHERE tenant_id = $1", tid))

        doc = yaml.safe_load(TRUNKS)
        before = await version()
        doc["tenants"]["t"]["endpoints"]["1001"]["endpoint"] = {"language": "de"}  # no contact: routing unchanged
        await apply_config(conn, parse_config(doc))
        assert await version() == before
        doc["tenants"]["t"]["templates"]["carrier"]["aor"]["contact"] = ["sip:127.0.0.9:5070"]
        await apply_config(conn, parse_config(doc))
        assert await version() > before
        cfg = await routing_config(conn, "t")
        assert cfg["endpoints"]["carrier"] == {"aor": {"contact": ["sip:127.0.0.9:5070"], "qualify_frequency": "60"}}
    finally:
        await conn.close()
