"""The routing loader reads from Postgres exactly the model the declarative file describes, and for
one call exactly the extensions it can reach."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest
import yaml
from scenario_paths import store_scenarios

from pbx_base.errors import UnknownTenant
from routing.model import Directory, directory_from_config
from routing.simulate import simulate
from routing.stage1 import reachable
from routing_store.loader import load_for_call, load_tenant, tenant_of_domain
from sorcery_backend.apply import apply_config
from sorcery_backend.declarative import parse_config


async def test_loaded_directory_equals_the_file_for_every_public_scenario(db: str, shared_dir: Path) -> None:
    conn = await asyncpg.connect(db)
    try:
        for path in store_scenarios(shared_dir):
            doc = yaml.safe_load(path.read_text())
            tenant = doc["call"]["tenant"]
            await apply_config(conn, parse_config(doc["config"]))
            loaded = (await load_tenant(conn, tenant)).directory
            expected = directory_from_config(tenant, doc["config"]["tenants"][tenant])
            # The whole directory: trunk keys, static contacts (read from the flattened AORs Asterisk
            # reads), the tenant's ring timeout, and what follows from them (empty extensions). Not
            # the owner of an endpoint two extensions list (T03): the file's order decides it there,
            # the number order here (routing_store.decode).
            assert replace(loaded, endpoint_owner={}) == replace(expected, endpoint_owner={}), path.name
            await _per_call_reads_what_stage1_can_reach(conn, tenant, loaded)
            await apply_config(conn, parse_config({"tenants": {tenant: None}}))
    finally:
        await conn.close()


async def _per_call_reads_what_stage1_can_reach(conn: asyncpg.Connection, tenant: str, whole: Directory) -> None:
    """The per-call statement's recursion in SQL and routing.stage1.reachable follow one rule."""
    calls = [
        (caller, called, ext.endpoints[0] if ext.endpoints else None)
        for caller, called in itertools.product(whole.extensions, repeat=2)
        for ext in [whole.extensions[caller]]
    ]
    # From a carrier, to every number its DID rules name (and one past each prefix).
    for trunk in (whole.extensions[t] for t in whole.trunks):
        matches = [r.number or f"{r.prefix}12" for r in trunk.dids]
        calls += [("0301234567", n, ep) for ep in trunk.endpoints for n in [*matches, *whole.extensions]]
    for caller, called, endpoint in calls:
        owners = [n for n, e in whole.extensions.items() if endpoint in e.endpoints]
        data = await load_for_call(conn, tenant, caller, called, endpoint)
        got = data.directory
        assert set(got.extensions) == reachable(whole, caller, called, owners), (caller, called, endpoint)
        eps = {ep for e in got.extensions.values() for ep in e.endpoints}
        assert dict(got.static_contacts) == {k: v for k, v in whole.static_contacts.items() if k in eps}
        assert got.ring_timeout_ms == whole.ring_timeout_ms


async def test_call_load_reads_the_reachable_part_and_contacts(db: str) -> None:
    cfg = {
        "tenants": {
            "t": {
                "domain": "t.example",
                "endpoints": {n: {"auth": {"password": "x"}} for n in ("1001", "1002", "1003", "1009")},
                "extensions": {
                    "1001": {"type": "simple", "name": "A", "endpoints": ["1001"]},
                    "1002": {
                        "type": "simple",
                        "name": "B",
                        "endpoints": ["1002"],
                        "forward": {"mode": "busy", "to": "2000"},
                    },
                    "1003": {"type": "simple", "name": "C", "endpoints": ["1003"]},
                    "1009": {"type": "simple", "name": "unrelated", "endpoints": ["1009"]},
                    "2000": {"type": "group", "name": "G", "ranks": [{"members": ["1003"]}]},
                    "9": {"type": "trunk", "name": "GW"},
                },
            }
        }
    }
    conn = await asyncpg.connect(db)
    try:
        await apply_config(conn, parse_config(cfg))
        await conn.execute(
            "INSERT INTO ps_contacts (id, uri, endpoint) VALUES "
            "('1003@t.example^3B@abc', 'sip:1003@127.0.0.1:5999', '1003@t.example')"
        )
        data = await load_for_call(conn, "t", "1001", "1002", "1001")
        assert set(data.directory.extensions) == {"1001", "1002", "2000", "1003", "9"}
        assert data.contacts == {"1003": ["1003@t.example^3B@abc"]}
        assert data.contact_uris == {"1003@t.example^3B@abc": "sip:1003@127.0.0.1:5999"}
        assert data.directory.tenant == "t" and data.domain == "t.example" and not data.cached
        out = simulate(
            {
                "config": cfg,
                "registrations": {**data.contacts, "1002": ["b"]},
                "in_use": {"1002": 1},
                "call": {"tenant": "t", "caller": "1001", "called": "1002"},
                "horizon_s": 5,
            }
        )
        assert [e.get("ring") for e in out["timeline"] if "ring" in e] == ["1003@t.example^3B@abc"]
    finally:
        await conn.close()


async def test_unknown_tenant_and_domain(db: str) -> None:
    conn = await asyncpg.connect(db)
    try:
        with pytest.raises(UnknownTenant):
            await load_tenant(conn, "nope")
        with pytest.raises(UnknownTenant):
            await load_for_call(conn, "nope", "1", "2")
        assert await tenant_of_domain(conn, "nope.example") is None
        await apply_config(conn, parse_config({"tenants": {"t": {"domain": "t.example"}}}))
        assert await tenant_of_domain(conn, "t.example") == "t"
    finally:
        await conn.close()
