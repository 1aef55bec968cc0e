"""The in-memory contact set of the routing cache against the real Postgres: the ps_contacts trigger
(sql/022) notifies every change routing reads and never a refresh, the set follows them, and a call
is exact even when a notification is missed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg

from routing_store.cache import RoutingData
from routing_store.contacts import CHANNEL
from routing_store.loader import load_for_call
from sorcery_backend.apply import apply_config
from sorcery_backend.contacts_sync import _UPSERT
from sorcery_backend.declarative import parse_config

WAIT_S = 15.0
NUMBERS = ("1001", "1002", "1003")
CONFIG: dict[str, Any] = {
    "tenants": {
        "t": {
            "domain": "t.example",
            "endpoints": {n: {"auth": {"password": "x"}} for n in NUMBERS},
            "extensions": {
                **{n: {"type": "simple", "name": f"U{n}", "endpoints": [n]} for n in NUMBERS},
                "2000": {"type": "group", "name": "Team", "ranks": [{"members": list(NUMBERS)}]},
            },
        }
    }
}


async def until(what: str, check: Callable[[], Awaitable[bool] | bool], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while True:
        ok = check()
        if not isinstance(ok, bool):
            ok = await ok
        if ok:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def listening(db: str) -> AsyncIterator[tuple[RoutingData, asyncpg.Connection]]:
    conn = await asyncpg.connect(db)
    await apply_config(conn, parse_config(CONFIG))
    pool = await asyncpg.create_pool(db, min_size=1, max_size=4)
    routing = RoutingData(pool, keepalive_s=2.0, retry_s=0.05)
    task = asyncio.create_task(routing.listen())
    try:
        await asyncio.wait_for(routing.listening.wait(), WAIT_S)
        await routing.preload("t")
        yield routing, conn
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pool.close()
        await conn.close()


async def counter(conn: asyncpg.Connection) -> tuple[int, int] | None:
    row = await conn.fetchrow("SELECT epoch, version FROM pbx.contacts_version")
    return None if row is None else (row["epoch"], row["version"])


async def register(conn: asyncpg.Connection, ep: str, dev: str, uri: str | None = None) -> None:
    await conn.execute(
        "INSERT INTO ps_contacts (id, uri, endpoint, expiration_time) VALUES ($1, $2, $3, 1)",
        f"{ep}@t.example^3B@{dev}",
        uri or f"sip:{ep}@127.0.0.1:{5000 + int(dev)}",
        f"{ep}@t.example",
    )


async def same_as_loader(routing: RoutingData, conn: asyncpg.Connection, called: str = "2000") -> None:
    cached = await routing.for_call(conn, "t", "1001", called, "1001")
    plain = await load_for_call(conn, "t", "1001", called, "1001")
    assert cached.cached
    assert (cached.contacts, dict(cached.contact_uris)) == (plain.contacts, dict(plain.contact_uris))


async def test_trigger_notifies_what_routing_reads_and_never_a_refresh(db: str) -> None:
    conn = await asyncpg.connect(db)
    heard: list[dict[str, Any]] = []
    await conn.add_listener(CHANNEL, lambda *a: heard.append(json.loads(a[3])))
    writer = await asyncpg.connect(db)
    try:
        e, v0 = await counter(writer) or (0, 0)

        async def expect(n: int) -> None:
            await until(f"{n} notifications", lambda: len(heard) >= n)
            await asyncio.sleep(0.05)
            assert len(heard) == n, heard

        await register(writer, "1001", "1")
        await expect(1)
        assert heard[0] == {
            "e": e,
            "v": v0 + 1,
            "del": None,
            "add": ["1001@t.example", "1001@t.example^3B@1", "sip:1001@127.0.0.1:5001"],
        }
        # A REGISTER refresh: Asterisk rewrites the row with a later expiry and the same address.
        await writer.execute(
            "UPDATE ps_contacts SET expiration_time = 99, uri = uri, user_agent = 'x' WHERE id = '1001@t.example^3B@1'"
        )
        await asyncio.sleep(0.2)
        assert len(heard) == 1 and await counter(writer) == (e, v0 + 1)
        await writer.execute("UPDATE ps_contacts SET uri = 'sip:moved@127.0.0.1' WHERE id = '1001@t.example^3B@1'")
        await expect(2)
        assert heard[1]["del"] == ["1001@t.example", "1001@t.example^3B@1"]
        assert heard[1]["add"][2] == "sip:moved@127.0.0.1"
        # The contacts sync's upsert: a row it restores, then a later copy of a row that exists.
        row = {"id": "1002@t.example^3B@2", "uri": "sip:b@127.0.0.1", "endpoint": "1002@t.example"}
        await writer.fetch(_UPSERT, json.dumps([{**row, "expiration_time": "10"}]))
        await writer.fetch(_UPSERT, json.dumps([{**row, "expiration_time": "20"}]))  # a refresh: nothing
        await writer.fetch(_UPSERT, json.dumps([{**row, "expiration_time": "30", "uri": "sip:b2@127.0.0.1"}]))
        await expect(4)
        assert heard[2]["add"][1] == row["id"] and heard[3]["add"][2] == "sip:b2@127.0.0.1"
        await writer.execute("DELETE FROM ps_contacts WHERE id = $1", row["id"])
        await expect(5)
        assert heard[4]["del"] == [row["endpoint"], row["id"]] and heard[4]["add"] is None
        # Several rows in one transaction: consecutive versions, delivered in order.
        async with writer.transaction():
            await register(writer, "1003", "3")
            await register(writer, "1003", "4")
        await expect(7)
        assert [h["v"] for h in heard] == list(range(v0 + 1, v0 + 8))
        await writer.execute("TRUNCATE ps_contacts")
        await expect(8)
        assert heard[7].get("reset") is True
        # A crash empties the unlogged version row with the table: the next change starts a new epoch.
        await writer.execute("DELETE FROM pbx.contacts_version")
        await register(writer, "1001", "1")
        await expect(9)
        assert heard[8]["e"] != e and heard[8]["v"] == 1
    finally:
        await writer.close()
        await conn.close()


async def test_calls_read_contacts_from_memory_once_the_set_follows(db: str) -> None:
    async with listening(db) as (routing, conn):
        await register(conn, "1002", "1")
        await until("the set at the counter", lambda: routing.contacts.current is not None)
        await until("the change applied", lambda: _at(routing, conn))
        before = routing.stats.contact_hits
        await same_as_loader(routing, conn)
        assert routing.stats.contact_hits == before + 1
        # A refresh bumps nothing: the set stays usable.
        await conn.execute("UPDATE ps_contacts SET expiration_time = expiration_time + 60")
        await same_as_loader(routing, conn)
        assert routing.stats.contact_hits == before + 2


async def _at(routing: RoutingData, conn: asyncpg.Connection) -> bool:
    return routing.contacts.current == await counter(conn)


async def test_a_missed_notification_never_routes_on_a_stale_contact(db: str) -> None:
    async with listening(db) as (routing, conn):
        await register(conn, "1002", "1")
        await until("the change applied", lambda: _at(routing, conn))
        # Deafen the set: the next change is committed but never applied.
        apply = routing.contacts.on_notification
        routing.contacts.on_notification = lambda _payload: True  # type: ignore[method-assign]
        await register(conn, "1003", "2")
        await conn.execute("DELETE FROM ps_contacts WHERE endpoint = '1002@t.example'")
        hits = routing.stats.contact_hits
        await same_as_loader(routing, conn)  # probed: the counter moved on
        assert routing.stats.contact_hits == hits
        # The next notification shows the gap: the set is read again and used again.
        routing.contacts.on_notification = apply  # type: ignore[method-assign]
        loads = routing.contacts.loads
        await register(conn, "1001", "3")
        await until("a reload after the gap", lambda: routing.contacts.loads > loads)
        await until("the set at the counter", lambda: _at(routing, conn))
        await same_as_loader(routing, conn)
        assert routing.stats.contact_hits == hits + 1


async def test_truncate_and_random_changes_with_calls_in_between(db: str) -> None:
    rng = random.Random(20)
    async with listening(db) as (routing, conn):
        for step in range(120):
            ep, dev = rng.choice(NUMBERS), str(rng.randrange(4))
            cid = f"{ep}@t.example^3B@{dev}"
            action = rng.random()
            if action < 0.4:
                await conn.execute(
                    "INSERT INTO ps_contacts (id, uri, endpoint, expiration_time) VALUES ($1, $2, $3, 1) "
                    "ON CONFLICT (id) DO UPDATE SET uri = excluded.uri",
                    cid,
                    f"sip:{ep}-{step}@127.0.0.1",
                    f"{ep}@t.example",
                )
            elif action < 0.6:
                await conn.execute("DELETE FROM ps_contacts WHERE id = $1", cid)
            elif action < 0.9:
                await conn.execute("UPDATE ps_contacts SET expiration_time = $1 WHERE id = $2", step, cid)
            elif action < 0.95:
                await conn.execute("TRUNCATE ps_contacts")
            # Right after the commit (the notification may not be applied yet) and once it is.
            await same_as_loader(routing, conn, rng.choice(("2000", "1002")))
            if step % 3 == 0:
                await until("the set at the counter", lambda: _at(routing, conn))
                await same_as_loader(routing, conn)
        assert routing.stats.contact_hits > 0
