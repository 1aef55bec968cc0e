"""The in-memory routing cache against the real Postgres: same answers as the uncached loader,
every committed edit seen by the next call, NOTIFY races, and a lost LISTEN connection."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from scenario_paths import store_scenarios

from http_api.route import decide
from pbx_base.errors import UnknownTenant
from routing.model import directory_from_config
from routing.simulate import call_request
from routing.stage1 import CallRequest
from routing_store.cache import RoutingData, TenantSnapshot, load_snapshot
from routing_store.loader import load_for_call, load_tenant
from sorcery_backend.apply import apply_config
from sorcery_backend.declarative import parse_config

WAIT_S = 15.0

CONFIG: dict[str, Any] = {
    "tenants": {
        "t": {
            "domain": "t.example",
            "endpoints": {n: {"auth": {"password": "x"}} for n in ("1001", "1002", "1003")},
            "extensions": {
                "1001": {"type": "simple", "name": "Alice", "endpoints": ["1001"]},
                "1002": {"type": "simple", "name": "Bob", "endpoints": ["1002"]},
                "1003": {"type": "simple", "name": "Carol", "endpoints": ["1003"]},
                "2000": {"type": "group", "name": "Team", "ranks": [{"members": ["1002", "1003"]}]},
            },
        }
    }
}


@contextlib.asynccontextmanager
async def cache_on(db: str, *, listen: bool) -> AsyncIterator[tuple[RoutingData, asyncpg.Pool]]:
    pool = await asyncpg.create_pool(db, min_size=1, max_size=4)
    routing = RoutingData(pool, keepalive_s=2.0, retry_s=0.05)
    task = asyncio.create_task(routing.listen()) if listen else None
    try:
        if task is not None:
            await asyncio.wait_for(routing.listening.wait(), WAIT_S)
        yield routing, pool
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await pool.close()


async def until(what: str, check: Callable[[], Awaitable[bool]], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


async def register(conn: asyncpg.Connection, domain: str, registrations: dict[str, list[str]]) -> None:
    await conn.executemany(
        "INSERT INTO ps_contacts (id, uri, endpoint) VALUES ($1, 'sip:x@127.0.0.1', $2)",
        [(f"{ep}@{domain}^3B@{dev}", f"{ep}@{domain}") for ep, devs in registrations.items() for dev in devs],
    )


def calls_of(doc: dict[str, Any], tenant: str) -> list[CallRequest]:
    """The scenario's own call, then every extension calling every other one (also unauthenticated)."""
    numbers = sorted(doc["config"]["tenants"][tenant].get("extensions") or {})
    out = [call_request(doc["call"])]
    for a, b in itertools.product(numbers, repeat=2):
        out.append(CallRequest(tenant, a, b))
    out += [CallRequest(tenant, "0301234567", b, endpoint=None, callername="Out") for b in numbers]
    # From each carrier: every number, and every number its DID rules match.
    d = directory_from_config(tenant, doc["config"]["tenants"][tenant])
    for trunk in (d.extensions[t] for t in d.trunks):
        called = [*numbers, *(r.number or f"{r.prefix}12" for r in trunk.dids)]
        out += [CallRequest(tenant, "0301234567", b, endpoint=ep) for ep in trunk.endpoints for b in called]
    return out


async def test_cache_answers_like_the_loader_for_every_public_scenario(db: str, shared_dir: Path) -> None:
    async with cache_on(db, listen=False) as (routing, _pool):
        conn = await asyncpg.connect(db)
        try:
            for path in store_scenarios(shared_dir):
                doc = yaml.safe_load(path.read_text())
                tenant = doc["call"]["tenant"]
                tcfg = doc["config"]["tenants"][tenant]
                await apply_config(conn, parse_config(doc["config"]))
                await register(conn, tcfg["domain"], doc.get("registrations") or {})
                snap = await routing.preload(tenant)
                expected_dir = (await load_tenant(conn, tenant)).directory
                assert dict(snap.directory.extensions) == dict(expected_dir.extensions), path.name
                assert dict(snap.directory.endpoint_owner) == dict(expected_dir.endpoint_owner), path.name
                assert snap.directory == expected_dir, path.name
                for call in calls_of(doc, tenant):
                    endpoint = call.endpoint if isinstance(call.endpoint, str) else None
                    plain = await load_for_call(conn, tenant, call.caller, call.called, endpoint)
                    cached = await routing.for_call(conn, tenant, call.caller, call.called, endpoint)
                    assert cached.cached and not plain.cached, (path.name, call)
                    assert cached.contacts == plain.contacts, (path.name, call)
                    assert cached.contact_uris == plain.contact_uris, (path.name, call)
                    assert decide(cached, call, explain=True) == decide(plain, call, explain=True), (path.name, call)
                # The next scenario reuses the tenant name: a new tenant, whose cached namesake
                # must never answer for it.
                await apply_config(conn, parse_config({"tenants": {tenant: None}}))
                await conn.execute("DELETE FROM ps_contacts")
        finally:
            await conn.close()


def test_snapshot_endpoint_ids_are_those_of_the_reachable_extensions() -> None:
    """Pure: the contacts a cached call reads are those of routing.stage1.reachable's extensions,
    with the extensions owning the arrival endpoint among the seeds."""
    d = directory_from_config(
        "t",
        {
            "extensions": {
                "100": {"type": "simple", "name": "A", "endpoints": ["a"], "forward": {"mode": "busy", "to": "101"}},
                "101": {"type": "simple", "name": "B", "endpoints": ["b"]},
                "102": {"type": "simple", "name": "Unrelated", "endpoints": ["c"]},
                "7": {"type": "simple", "name": "Side", "endpoints": ["side", "b"]},
                "9": {"type": "trunk", "name": "GW", "endpoints": ["gw"]},
            }
        },
    )
    snap = TenantSnapshot(1, "t", "t.example", 0, d, {"side": ("7",), "b": ("7", "101")})
    ids = snap.endpoint_ids("x", "100", "side")
    assert ids == ["a@t.example", "b@t.example", "gw@t.example", "side@t.example"]
    assert snap.endpoint_ids("x", "100", "side") is ids  # memoized per (caller, called, endpoint)
    assert snap.endpoint_ids("x", "102", "") == ["c@t.example", "gw@t.example"]


async def test_edit_by_plain_sql_is_seen_by_the_very_next_call_without_a_listener(db: str) -> None:
    """The version check alone makes the cache exact: no NOTIFY is needed for correctness."""
    conn = await asyncpg.connect(db)
    other = await asyncpg.connect(db)
    try:
        await apply_config(conn, parse_config(CONFIG))
        await register(conn, "t.example", {"1003": ["d3"]})
        async with cache_on(db, listen=False) as (routing, _pool):
            await routing.preload("t")
            call = CallRequest("t", "1001", "2000")
            first = await routing.for_call(conn, "t", "1001", "2000")
            assert first.cached
            assert [c["device"] for c in decide(first, call)["commands"] if c["command"] == "RingDevice"] == [
                "1003@t.example^3B@d3"
            ]
            await other.execute("UPDATE pbx.extensions SET name = 'Robert' WHERE number = '1002'")
            after = await routing.for_call(conn, "t", "1001", "1002")
            assert not after.cached and after.directory.extensions["1002"].name == "Robert"
            # Contacts are read per call, never cached: a REGISTER is seen at once.
            await register(other, "t.example", {"1002": ["d2"]})
            snap = await routing.preload("t")
            assert snap.directory.extensions["1002"].name == "Robert"
            again = await routing.for_call(conn, "t", "1001", "1002")
            assert again.cached and again.contacts == {"1002": ["1002@t.example^3B@d2"]}
            await other.execute("DELETE FROM ps_contacts WHERE endpoint = '1002@t.example'")
            gone = await routing.for_call(conn, "t", "1001", "1002")
            assert gone.cached and gone.contacts == {}
    finally:
        await conn.close()
        await other.close()


async def test_notification_reloads_the_tenant_in_the_background(db: str) -> None:
    conn = await asyncpg.connect(db)
    try:
        await apply_config(conn, parse_config(CONFIG))
        async with cache_on(db, listen=True) as (routing, _pool):
            old = await routing.preload("t")
            await conn.execute(
                "INSERT INTO pbx.rank_members (tenant_id, number, rank_ordinal, ordinal, member) "
                "SELECT tenant_id, '2000', 0, 2, '1001' FROM pbx.extensions WHERE number = '2000'"
            )

            def reloaded() -> bool:
                snap = routing.snapshot("t")
                return snap is not None and snap.version > old.version

            await routing.wait_for(reloaded, WAIT_S)
            assert routing.stats.notifications >= 1
            data = await routing.for_call(conn, "t", "1002", "2000")
            assert data.cached
            members = data.directory.extensions["2000"].ranks[0].members
            assert [m.number for m in members] == ["1002", "1003", "1001"]
    finally:
        await conn.close()


async def _blocked_on_lock(admin: asyncpg.Connection, relation: str) -> bool:
    return bool(
        await admin.fetchval(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE NOT l.granted AND c.relname = $1",
            relation,
        )
    )


@pytest.mark.parametrize("listen", [True, False])
async def test_change_committed_while_a_snapshot_loads(db: str, listen: bool) -> None:
    """A load that read the old state must not be served as current: with the listener its
    notification discards the load; without it, the version check refuses the snapshot."""
    conn = await asyncpg.connect(db)
    locker = await asyncpg.connect(db)
    try:
        await apply_config(conn, parse_config(CONFIG))
        async with cache_on(db, listen=listen) as (routing, _pool):
            # The load takes its snapshot on its first statement, then waits here for pbx.ranks.
            tx = locker.transaction()
            await tx.start()
            await locker.execute("LOCK TABLE pbx.ranks IN ACCESS EXCLUSIVE MODE")
            load = asyncio.create_task(routing.preload("t"))
            await until("the load to wait for pbx.ranks", lambda: _blocked_on_lock(conn, "ranks"))
            await conn.execute("UPDATE pbx.extensions SET name = 'Robert' WHERE number = '1002'")
            if listen:
                await routing.wait_for(lambda: routing.stats.notifications >= 1, WAIT_S)
            await tx.rollback()
            snap = await asyncio.wait_for(load, WAIT_S)
            if listen:
                assert routing.stats.discarded == 1
                assert snap.directory.extensions["1002"].name == "Robert"
            else:
                assert snap.directory.extensions["1002"].name == "Bob"  # kept, but never used:
            data = await routing.for_call(conn, "t", "1001", "1002")
            assert data.directory.extensions["1002"].name == "Robert"
            assert data.cached == listen
    finally:
        await conn.close()
        await locker.close()


async def test_lost_listen_connection_drops_the_cache_and_listens_again(
    db: str, caplog: pytest.LogCaptureFixture
) -> None:
    conn = await asyncpg.connect(db)
    try:
        await apply_config(conn, parse_config(CONFIG))
        async with cache_on(db, listen=True) as (routing, _pool):
            await routing.preload("t")
            first_pid = routing.listener_pid
            assert first_pid is not None and routing.stats.connects == 1
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", first_pid)
            await routing.wait_for(
                lambda: routing.stats.connects == 2 and routing.listener_pid not in (None, first_pid), WAIT_S
            )
            # The log says why it reconnected, not what the cleanup of the dead connection tripped on.
            lost = [r.getMessage() for r in caplog.records if "LISTEN connection lost" in r.getMessage()]
            assert lost and not any("released back to the pool" in m for m in lost), lost
            # Whatever changed while nobody listened was not heard: nothing cached survives.
            assert routing.snapshot("t") is None
            data = await routing.for_call(conn, "t", "1001", "1002")
            assert not data.cached
            # The new connection hears the next change.
            await routing.preload("t")
            seen = routing.stats.notifications
            await conn.execute("UPDATE pbx.extensions SET name = 'Robert' WHERE number = '1002'")
            await routing.wait_for(lambda: routing.stats.notifications > seen, WAIT_S)
            await routing.wait_for(
                lambda: (s := routing.snapshot("t")) is not None and s.directory.extensions["1002"].name == "Robert",
                WAIT_S,
            )
    finally:
        await conn.close()


async def test_domain_rename_and_deletion_of_the_tenant(db: str) -> None:
    conn = await asyncpg.connect(db)
    try:
        await apply_config(conn, parse_config(CONFIG))
        await register(conn, "t.example", {"1002": ["a"]})
        await register(conn, "new.example", {"1002": ["b"]})
        async with cache_on(db, listen=False) as (routing, _pool):
            await routing.preload("t")
            assert (await routing.for_call(conn, "t", "1001", "1002")).contacts == {"1002": ["1002@t.example^3B@a"]}
            await conn.execute("UPDATE pbx.tenants SET domain = 'new.example' WHERE name = 't'")
            moved = await routing.for_call(conn, "t", "1001", "1002")
            assert moved.domain == "new.example" and moved.contacts == {"1002": ["1002@new.example^3B@b"]}
            await routing.preload("t")
            await conn.execute("UPDATE pbx.tenants SET name = 'u' WHERE name = 't'")
            with pytest.raises(UnknownTenant):
                await routing.for_call(conn, "t", "1001", "1002")
            await routing.preload("u")
            await conn.execute("DELETE FROM pbx.tenants WHERE name = 'u'")
            with pytest.raises(UnknownTenant):
                await routing.for_call(conn, "u", "1001", "1002")
            with pytest.raises(UnknownTenant):
                await routing.preload("u")
    finally:
        await conn.close()


async def test_triggers_bump_the_version_and_notify_only_for_routing_changes(db: str) -> None:
    conn = await asyncpg.connect(db)
    listener = await asyncpg.connect(db)
    heard: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener("pbx_routing", lambda *a: heard.put_nowait(a[3]))
    try:
        await apply_config(conn, parse_config(CONFIG))
        tid = await conn.fetchval("SELECT id FROM pbx.tenants WHERE name = 't'")

        async def version() -> int:
            return int(await conn.fetchval(_VERSION, tid))

        assert await asyncio.wait_for(heard.get(), WAIT_S) == str(tid)  # the apply
        v = await version()
        # Not routing data: a template's transport, the tenant's links_version, an option.
        await conn.execute("UPDATE pbx.objects SET transport = 'transport-tcp' WHERE tenant_id = $1", tid)
        await conn.execute("UPDATE pbx.tenants SET links_version = links_version + 1 WHERE id = $1", tid)
        assert await version() == v
        async with conn.transaction():
            await conn.execute("UPDATE pbx.ranks SET delay_ms = 100 WHERE tenant_id = $1", tid)
            await conn.execute("UPDATE pbx.extensions SET dialout = true WHERE tenant_id = $1", tid)
            assert heard.empty()  # nothing is said before the commit
        assert await version() == v + 2
        assert await asyncio.wait_for(heard.get(), WAIT_S) == str(tid)  # once per transaction
        await conn.execute("UPDATE pbx.objects SET name = 'x1003' WHERE tenant_id = $1 AND name = '1003'", tid)
        assert await version() == v + 3
        with contextlib.suppress(_Abort):
            async with conn.transaction():
                await conn.execute("UPDATE pbx.extensions SET name = 'rolled back' WHERE tenant_id = $1", tid)
                raise _Abort
        assert await version() == v + 3
        # A tenant admin's edit (row-level security, no grant on the version table) is counted too.
        role = f"routing_admin_{uuid.uuid4().hex[:12]}"
        await conn.execute(f"CREATE ROLE {role} LOGIN")
        await conn.execute("SELECT pbx.grant_tenant_admin('t', $1)", role)
        async with conn.transaction():
            await conn.execute(f"SET LOCAL ROLE {role}")
            await conn.execute("UPDATE pbx.extensions SET name = 'by admin' WHERE number = '1001'")
        assert await version() == v + 4
        await conn.execute("DELETE FROM pbx.tenants WHERE id = $1", tid)
        assert await conn.fetchval("SELECT count(*) FROM pbx.routing_versions WHERE tenant_id = $1", tid) == 0
    finally:
        await conn.close()
        await listener.close()


class _Abort(Exception):
    pass


_VERSION = "SELECT coalesce((SELECT version FROM pbx.routing_versions WHERE tenant_id = $1), 0)"


async def test_unknown_tenant(db: str) -> None:
    conn = await asyncpg.connect(db)
    try:
        async with cache_on(db, listen=False) as (routing, _pool):
            with pytest.raises(UnknownTenant):
                await routing.for_call(conn, "nope", "1", "2")
            with pytest.raises(UnknownTenant):
                await load_snapshot(conn, "nope")
    finally:
        await conn.close()


async def test_random_edits_with_calls_in_between_always_match_the_loader(db: str) -> None:
    """Edits committed back to back while the listener reloads in the background: every call
    right after a commit decides exactly as the uncached loader does at that moment."""
    conn = await asyncpg.connect(db)
    editor = await asyncpg.connect(db)
    rng = random.Random(4)
    try:
        await apply_config(conn, parse_config(CONFIG))
        await register(conn, "t.example", {"1001": ["a"], "1002": ["b"], "1003": ["c"]})
        tid = await conn.fetchval("SELECT id FROM pbx.tenants WHERE name = 't'")
        edits = [
            "UPDATE pbx.extensions SET name = 'N{i}' WHERE tenant_id = {t} AND number = '1002'",
            "UPDATE pbx.extensions SET short_name = 'S{i}' WHERE tenant_id = {t} AND number = '2000'",
            "UPDATE pbx.rank_members SET active = NOT active WHERE tenant_id = {t} AND member = '1003'",
            "UPDATE pbx.extensions SET call_waiting = NOT call_waiting WHERE tenant_id = {t} AND number = '1003'",
            "UPDATE pbx.extensions SET forward_mode = CASE WHEN forward_mode IS NULL THEN 'always' END, "
            "forward_to = CASE WHEN forward_to IS NULL THEN '1001' END WHERE tenant_id = {t} AND number = '1002'",
        ]
        async with cache_on(db, listen=True) as (routing, _pool):
            await routing.preload("t")
            for i in range(60):
                if rng.random() < 0.7:
                    await editor.execute(rng.choice(edits).format(i=i, t=tid))
                caller, called = rng.choice([("1001", "2000"), ("1003", "1002"), ("1001", "1002")])
                call = CallRequest("t", caller, called)
                cached = await routing.for_call(conn, "t", caller, called)
                plain = await load_for_call(conn, "t", caller, called)
                assert decide(cached, call, explain=True) == decide(plain, call, explain=True), (i, call)
            assert routing.stats.notifications > 0 and routing.stats.loads > 1
    finally:
        await conn.close()
        await editor.close()
