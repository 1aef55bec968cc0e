"""The contact sync (sorcery_backend/contacts_sync.py): a node's astdb contacts back into ps_contacts.

Unit and DB tests replay what Asterisk 22.10.1 answered to ``DBGetTree`` of ``registrar/contact``
(tests/fixtures/ami/dbgettree_*.txt, captured from the dev stack after two sipp REGISTERs) through
the scripted AMI server of test_pusher_ami. The real-stack tests lose rows the way Postgres does
(TRUNCATE, a crash of the unlogged table, an outage) and wait, with timeouts, for the rows to return.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest
import test_pusher_ami
from prometheus_client import REGISTRY
from stack import apply_yaml, wait_delivered
from test_pusher_ami import FakeAmi

from devstack import sipp
from devstack.ports import free_port
from devstack.postgres import find_bindir
from devstack.stack import Stack, run_sql
from sorcery_backend.ami import AmiSession
from sorcery_backend.contacts_sync import (
    COLUMNS,
    Contact,
    ContactSync,
    StoredContact,
    delete_contacts,
    evict,
    node_contacts,
    plan_deletes,
    plan_evictions,
    plan_writes,
    realtime_decode,
    realtime_encode,
    write_contacts,
)
from sorcery_backend.nodes import add_node

DATA = Path(__file__).resolve().parent.parent / "sorcery_backend" / "data" / "realtime_columns.json"
CAPTURED_AT = 1796283000  # epoch seconds on the dev stack when the fixture was captured
# The row Asterisk itself wrote to ps_contacts for the first captured contact (psql on the dev stack).
ASTERISK_ROW = {
    "id": "1000@ct.example^3B@ebc4be2a578de3eef4b732a00bc2adb9",
    "uri": "sip:1000@127.0.0.1:45001^3Btransport=UDP",
    "expiration_time": 1796286995,
    "qualify_frequency": 0,
    "outbound_proxy": "",
    "path": "",
    "user_agent": "pbx-test-sipp",
    "qualify_timeout": 3.0,
    "reg_server": "",
    "authenticate_qualify": "no",
    "via_addr": "127.0.0.1",
    "via_port": 45001,
    "call_id": "1-28871@127.0.0.1",
    "endpoint": "1000@ct.example",
    "prune_on_boot": "no",
    "qualify_2xx_only": "false",
}
ID_1001 = "1001@ct.example^3B@f91569fdfa96a7bbf02cd141e6952110"


@pytest.fixture
async def node_ami(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeAmi]:
    monkeypatch.setitem(test_pusher_ami.REPLIES, "dbgettree", "dbgettree_contacts")
    fake = FakeAmi()
    fake.server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    try:
        yield fake
    finally:
        fake.server.close()


async def held(fake: FakeAmi) -> list[Contact]:
    s = AmiSession("127.0.0.1", fake.port, "pbx", "secret")
    await s.connect(timeout=5)
    try:
        return await node_contacts(s)
    finally:
        s.close()


def restored() -> float:
    return REGISTRY.get_sample_value("pbx_contacts_restored_total") or 0.0


def contact(cid: str, exp: int) -> Contact:
    return Contact({"id": cid, "expiration_time": str(exp)})


# --- parsing and planning ----------------------------------------------------------------------


def test_columns_are_asterisks_ps_contacts_columns() -> None:
    tables = json.loads(DATA.read_text())["tables"]
    assert COLUMNS == tuple(c["name"] for c in tables["ps_contacts"])


def test_realtime_encoding_is_asterisks() -> None:
    assert realtime_encode("sip:a@b;transport=UDP") == "sip:a@b^3Btransport=UDP"
    assert realtime_encode("x^y;z") == "x^5Ey^3Bz"
    assert realtime_encode("plain") == "plain"


async def test_realtime_decoding_gives_back_the_astdb_key() -> None:
    for value in ("sip:a@b;transport=UDP", "x^y;z", "plain", "1000@ct.example;@ebc4", "^3B"):
        assert realtime_decode(realtime_encode(value)) == value
    assert realtime_decode(ID_1001) == "1001@ct.example;@f91569fdfa96a7bbf02cd141e6952110"


async def test_a_node_s_astdb_contacts_read_as_the_rows_asterisk_writes(node_ami: FakeAmi) -> None:
    contacts = await held(node_ami)
    assert node_ami.received[-1]["Action"] == "DBGetTree"
    assert node_ami.received[-1]["Family"] == "registrar/contact"
    assert [c.id for c in contacts] == [ASTERISK_ROW["id"], ID_1001]
    first = contacts[0]
    assert first.aor == "1000@ct.example"
    assert first.expiration_time == 1796286995
    # Strings as Asterisk sends them to realtime; Postgres casts them to the column types.
    assert first.row["uri"] == ASTERISK_ROW["uri"]
    assert first.row["via_port"] == "45001" and first.row["qualify_timeout"] == "3.000000"
    assert set(first.row) == set(COLUMNS)


async def test_an_eviction_counts_the_copies_the_node_held(node_ami: FakeAmi, monkeypatch: pytest.MonkeyPatch) -> None:
    """DBDel as Asterisk 22 answers it (tests/fixtures/ami/dbdel_*.txt): deleted, or not there."""
    s = AmiSession("127.0.0.1", node_ami.port, "pbx", "secret")
    await s.connect(timeout=5)
    try:
        monkeypatch.setitem(test_pusher_ami.REPLIES, "dbdel", "dbdel_deleted")
        assert await evict(s, [ID_1001]) == 1
        assert node_ami.received[-1] == {
            "Action": "DBDel",
            "ActionID": node_ami.received[-1]["ActionID"],
            "Family": "registrar/contact",
            "Key": "1001@ct.example;@f91569fdfa96a7bbf02cd141e6952110",
        }
        monkeypatch.setitem(test_pusher_ami.REPLIES, "dbdel", "dbdel_missing")
        assert await evict(s, [ID_1001]) == 0
        assert s.connected
    finally:
        s.close()


async def test_a_node_without_contacts_holds_none(node_ami: FakeAmi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(test_pusher_ami.REPLIES, "dbgettree", "dbgettree_empty")
    assert await held(node_ami) == []


def test_missing_and_older_rows_are_written_newer_and_expired_ones_are_not() -> None:
    now = 1000
    mine = [contact("a^3B@1", 2000), contact("b^3B@1", 2000), contact("c^3B@1", 2000), contact("d^3B@1", 900)]
    stored = {"b^3B@1": StoredContact("b^3B@1", 1500), "c^3B@1": StoredContact("c^3B@1", 2500)}
    assert [c.id for c in plan_writes(mine, stored, now)] == ["a^3B@1", "b^3B@1"]


def test_a_contact_another_node_superseded_is_not_brought_back() -> None:
    # Node M still caches a^3B@old; node N replaced it (remove_existing) by a^3B@new, which expires later.
    mine = [contact("a^3B@old", 2000)]
    stored = {"a^3B@new": StoredContact("a^3B@new", 2600)}
    assert plan_writes(mine, stored, 1000) == []
    # An older row of the same AOR does not block it (what a crash or an outage leaves behind) ...
    assert plan_writes(mine, {"a^3B@new": StoredContact("a^3B@new", 1500)}, 1000) == mine
    # ... nor does a later contact this node holds itself (max_contacts > 1).
    both = [contact("a^3B@old", 2000), contact("a^3B@two", 2600)]
    assert plan_writes(both, {"a^3B@two": StoredContact("a^3B@two", 2600)}, 1000) == both[:1]


def test_a_copy_another_node_superseded_is_evicted_and_no_other() -> None:
    # What plan_writes leaves out as superseded is what is evicted: the node's copy is stale.
    mine = [contact("a^3B@old", 2000)]
    assert plan_evictions(mine, {"a^3B@new": StoredContact("a^3B@new", 2600)}, 1000) == mine
    # Kept: a copy Postgres has (a refresh through this node), one only an older row of its AOR
    # contradicts (a crash or an outage: the sync restores it), an expired one (the node's sweep),
    # and one whose AOR's later contact this node holds too (max_contacts > 1).
    assert plan_evictions(mine, {"a^3B@old": StoredContact("a^3B@old", 2000)}, 1000) == []
    assert plan_evictions(mine, {"a^3B@new": StoredContact("a^3B@new", 1500)}, 1000) == []
    assert plan_evictions(mine, {"a^3B@new": StoredContact("a^3B@new", 2600)}, 2001) == []
    both = [contact("a^3B@old", 2000), contact("a^3B@two", 2600)]
    assert plan_evictions(both, {"a^3B@two": StoredContact("a^3B@two", 2600)}, 1000) == []


def test_of_two_nodes_copies_of_one_contact_only_the_later_one_is_written() -> None:
    # The phone moved from node M to node N: both hold a^3B@1, N's copy expires later.
    mine = [contact("a^3B@1", 2000)]
    assert plan_writes(mine, {}, 1000, {"a^3B@1": 2600}) == []
    assert plan_writes(mine, {}, 1000, {"a^3B@1": 2000}) == mine


def test_rows_no_node_holds_are_to_delete_unless_expired_or_made_by_hand() -> None:
    seen = {
        "a^3B@1": StoredContact("a^3B@1", 2000),  # held: stays
        "b^3B@1": StoredContact("b^3B@1", 2000),  # held by nobody: goes
        "c^3B@1": StoredContact("c^3B@1", 900),  # expired: Asterisk's sweep
        "d^3B@1": StoredContact("d^3B@1", 0),  # no expiry: made by hand
    }
    node1, node2 = [contact("a^3B@1", 2000)], [contact("z^3B@1", 2000)]
    assert plan_deletes(seen, [node1, node2], 1000) == [seen["b^3B@1"]]


class Replies(dict[str, str]):
    """test_pusher_ami.REPLIES whose ``dbgettree`` answers come from a list, one per request."""

    def __init__(self, trees: list[str]) -> None:
        super().__init__(test_pusher_ami.REPLIES)
        self.trees = trees

    def __getitem__(self, action: str) -> str:
        if action == "dbgettree":
            return self.trees.pop(0) if len(self.trees) > 1 else self.trees[0]
        return super().__getitem__(action)


# --- on real Postgres --------------------------------------------------------------------------


async def test_rows_no_node_holds_are_deleted_with_every_node_answering(db: str, node_ami: FakeAmi) -> None:
    conn = await asyncpg.connect(db)
    insert = "INSERT INTO ps_contacts (id, uri, expiration_time, endpoint) VALUES ($1, 'sip:x', $2, 'x')"
    try:
        await add_node(conn, "n1", f"127.0.0.1:{node_ami.port}", "pbx", "secret")
        # Unregistered (or replaced by remove_existing) while Postgres was down: the node let it go.
        await conn.execute(insert, "1000@ct.example^3B@gone", CAPTURED_AT + 600)
        await conn.execute(insert, "1000@ct.example^3B@expired", CAPTURED_AT - 1)
        await conn.execute(insert, "1000@ct.example^3B@byhand", None)
        sync = ContactSync(db, clock=lambda: CAPTURED_AT)
        try:
            down = await add_node(conn, "down", f"127.0.0.1:{free_port()}", "pbx", "secret")
            assert await sync.sync_once(conn) == 2  # the node's two are restored ...
            ids = {r["id"] for r in await conn.fetch("SELECT id FROM ps_contacts")}
            assert "1000@ct.example^3B@gone" in ids  # ... but a node that did not answer may hold it
            await conn.execute("DELETE FROM pbx.nodes WHERE id = $1", down.id)
            assert await sync.sync_once(conn) == 0
            ids = {r["id"] for r in await conn.fetch("SELECT id FROM ps_contacts")}
            assert ids == {ASTERISK_ROW["id"], ID_1001, "1000@ct.example^3B@expired", "1000@ct.example^3B@byhand"}
        finally:
            sync._close_sessions(list(sync._sessions))
    finally:
        await conn.close()


async def test_a_contact_unregistered_while_it_is_restored_does_not_come_back(
    db: str, node_ami: FakeAmi, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first read holds both; the phones unregister (Asterisk deletes the rows, none yet) before
    # the write; the second read holds none: the write is undone.
    replies = Replies(["dbgettree_contacts", "dbgettree_empty"])
    monkeypatch.setattr(test_pusher_ami, "REPLIES", replies)
    conn = await asyncpg.connect(db)
    try:
        await add_node(conn, "n1", f"127.0.0.1:{node_ami.port}", "pbx", "secret")
        sync = ContactSync(db, clock=lambda: CAPTURED_AT)
        try:
            assert await sync.sync_once(conn) == 2
            assert await conn.fetchval("SELECT count(*) FROM ps_contacts") == 0
            assert [m["Action"] for m in node_ami.received].count("DBGetTree") == 2
        finally:
            sync._close_sessions(list(sync._sessions))
    finally:
        await conn.close()


async def test_a_delete_spares_a_row_refreshed_since_it_was_seen(db: str) -> None:
    conn = await asyncpg.connect(db)
    try:
        await conn.execute(
            "INSERT INTO ps_contacts (id, uri, expiration_time, endpoint) VALUES ('a^3B@1', 'sip:x', 2600, 'x')"
        )
        assert await delete_contacts(conn, [StoredContact("a^3B@1", 2000)]) == 0
        assert await delete_contacts(conn, [StoredContact("a^3B@1", 2600)]) == 1
    finally:
        await conn.close()


async def test_a_copy_never_overwrites_a_contact_another_node_now_holds(db: str) -> None:
    """Node a's astdb copy of a phone that moved to node b, registered for longer there than b
    allows (sql/024's rule): written only once b's row has expired."""
    now = int(time.time())
    conn = await asyncpg.connect(db)
    try:
        await conn.execute(
            "INSERT INTO ps_contacts (id, uri, expiration_time, endpoint, reg_server) "
            "VALUES ('a^3B@1', 'sip:b', $1, 'x', 'b')",
            now + 60,
        )
        row = {"id": "a^3B@1", "uri": "sip:a", "expiration_time": str(now + 3600), "endpoint": "x", "reg_server": "a"}
        stale = Contact(row)
        assert await write_contacts(conn, [stale]) == 0
        await conn.execute("UPDATE ps_contacts SET expiration_time = $1", now - 1)
        assert await write_contacts(conn, [stale]) == 1
        assert await conn.fetchval("SELECT reg_server FROM ps_contacts") == "a"
    finally:
        await conn.close()


async def node_session(db: str, node: str | None) -> asyncpg.Connection:
    """A connection as node ``node``'s Asterisk opens it (res_pgsql.conf's appname), or an operator's."""
    settings = {"application_name": f"pbx-node:{node}" if node else "psql"}
    return await asyncpg.connect(db, server_settings=settings)


async def test_a_copy_another_node_replaced_removed_or_took_over_is_named_to_evict(db: str) -> None:
    """sql/028: the row's reg_server is told its copy is stale when another node deletes the row or
    takes it over; nobody is told of a node's own delete, an operator's, or a refresh."""
    now = int(time.time())
    named: list[dict[str, str]] = []
    listener = await asyncpg.connect(db)
    n1, n2, operator = [await node_session(db, n) for n in ("n1", "n2", None)]
    insert = (
        "INSERT INTO ps_contacts (id, uri, expiration_time, endpoint, reg_server) VALUES ($1, 'sip:x', $2, 'x', $3)"
    )
    try:
        await listener.add_listener("pbx_contact_copies", lambda *a: named.append(json.loads(a[3])))
        await n2.execute(insert, "a^3B@old", now + 600, "n2")
        # n1 takes a new REGISTER of the AOR and removes the excess contact (remove_existing).
        await n1.execute(insert, "a^3B@new", now + 3600, "n1")
        assert await n1.execute("DELETE FROM ps_node_contacts WHERE id = 'a^3B@old'") == "DELETE 1"
        await n1.execute(insert, "b^3B@1", now + 600, "n1")
        await n2.execute("UPDATE ps_node_contacts SET reg_server = 'n2', expiration_time = $1 WHERE id = 'b^3B@1'", now)
        await n2.execute("UPDATE ps_node_contacts SET expiration_time = $1 WHERE id = 'b^3B@1'", now + 60)  # refresh
        await n2.execute("DELETE FROM ps_node_contacts WHERE id = 'b^3B@1'")  # its own unregister
        await n1.execute(insert, "c^3B@1", now + 600, "n1")
        await operator.execute("DELETE FROM ps_contacts WHERE id = 'c^3B@1'")  # restored by the sync, if held
        # Delivered in commit order: once this one is in, every earlier one is.
        await operator.execute("""SELECT pg_notify('pbx_contact_copies', '{"node": "end", "id": "end"}')""")
        deadline = time.monotonic() + 10
        while not named or named[-1]["node"] != "end":
            assert time.monotonic() < deadline, f"notifications within 10 s: {named}"
            await asyncio.sleep(0.02)
        assert named[:-1] == [{"node": "n2", "id": "a^3B@old"}, {"node": "n1", "id": "b^3B@1"}]
    finally:
        for conn in (listener, n1, n2, operator):
            await conn.close()


@asynccontextmanager
async def held_by_n2(db: str) -> AsyncIterator[tuple[asyncpg.Connection, asyncpg.Connection]]:
    """An operator's connection and node n1's, with ID_1001's row held by node n2 (for 10 min)."""
    conn = await asyncpg.connect(db)
    n1 = await node_session(db, "n1")
    try:
        await conn.execute(
            "INSERT INTO ps_contacts (id, uri, expiration_time, endpoint, reg_server) "
            "VALUES ($1, 'sip:x', $2, 'x', 'n2')",
            ID_1001,
            int(time.time()) + 600,  # past the captured copies' expiry: the sync neither writes nor deletes
        )
        yield conn, n1
    finally:
        await n1.close()
        await conn.close()


@asynccontextmanager
async def running_sync(db: str) -> AsyncIterator[ContactSync]:
    stop = asyncio.Event()
    sync = ContactSync(db, interval_s=3600)
    task = asyncio.create_task(sync.run(stop))
    try:
        yield sync
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def until_sent(fake: FakeAmi, action: str, deadline: float) -> list[dict[str, str]]:
    """The ``action`` messages the fake got, once it got one (else an AssertionError at ``deadline``)."""
    while not (got := [m for m in fake.received if m["Action"] == action]):
        assert time.monotonic() < deadline, f"no {action} in time: {fake.received}"
        await asyncio.sleep(0.02)
    return got


@pytest.mark.parametrize("listed", [True, False], ids=["on-the-list", "added-back"])
async def test_a_named_copy_is_evicted_from_its_node(
    db: str, node_ami: FakeAmi, monkeypatch: pytest.MonkeyPatch, listed: bool
) -> None:
    """At once when the node is on the list; else (`pbxctl nodes remove`) owed until it is added back."""
    monkeypatch.setitem(test_pusher_ami.REPLIES, "dbdel", "dbdel_deleted")
    async with held_by_n2(db) as (conn, n1):
        # Off the list, another node on the same fake: once it has been read, the sync is listening.
        await add_node(conn, "n2" if listed else "n0", f"127.0.0.1:{node_ami.port}", "pbx", "secret")
        async with running_sync(db) as sync:
            deadline = time.monotonic() + 10
            await until_sent(node_ami, "DBGetTree", deadline)
            await n1.execute("UPDATE ps_node_contacts SET reg_server = 'n1' WHERE id = $1", ID_1001)  # took it over
            if not listed:
                while "n2" not in sync._stale:  # named, and owed
                    assert time.monotonic() < deadline, "no named copy within 10 s"
                    await asyncio.sleep(0.02)
                await add_node(conn, "n2", f"127.0.0.1:{node_ami.port}", "pbx", "secret")
            [dbdel] = await until_sent(node_ami, "DBDel", deadline)
            assert (dbdel["Family"], dbdel["Key"]) == ("registrar/contact", realtime_decode(ID_1001))
            assert sync._stale == {}


async def test_a_copy_found_superseded_is_evicted_and_not_written(
    db: str, node_ami: FakeAmi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The comparison's own finding, for a copy whose notification was missed (sync or node away)."""
    monkeypatch.setitem(test_pusher_ami.REPLIES, "dbdel", "dbdel_deleted")
    conn = await asyncpg.connect(db)
    try:
        n2 = await add_node(conn, "n2", f"127.0.0.1:{node_ami.port}", "pbx", "secret")
        # 1000's copy on n2 was replaced through n1 by a contact that expires later.
        await conn.execute(
            "INSERT INTO ps_contacts (id, uri, expiration_time, endpoint, reg_server) "
            "VALUES ('1000@ct.example^3B@new', 'sip:new', $1, '1000@ct.example', 'n1')",
            1796286995 + 600,
        )
        sync = ContactSync(db, clock=lambda: CAPTURED_AT)
        try:
            # n2 only (a comparison of every node would delete the row of n1, which is none of them).
            assert await sync.sync_once(conn, only={n2.id}) == 1  # 1001's copy only
            keys = [m["Key"] for m in node_ami.received if m["Action"] == "DBDel"]
            assert keys == [realtime_decode(str(ASTERISK_ROW["id"]))]
            ids = {r["id"] for r in await conn.fetch("SELECT id FROM ps_contacts")}
            assert ids == {"1000@ct.example^3B@new", ID_1001}
        finally:
            sync._close_sessions(list(sync._sessions))
    finally:
        await conn.close()


async def test_restored_rows_equal_the_row_asterisk_wrote_and_a_newer_row_is_kept(db: str, node_ami: FakeAmi) -> None:
    contacts = await held(node_ami)
    conn = await asyncpg.connect(db)
    try:
        newer = 1796286995 + 600
        await conn.execute(
            "INSERT INTO ps_contacts (id, uri, expiration_time, endpoint) VALUES ($1, 'sip:moved', $2, 'x')",
            ID_1001,
            newer,
        )
        assert await write_contacts(conn, contacts) == 1
        row = await conn.fetchrow("SELECT * FROM ps_contacts WHERE id = $1", ASTERISK_ROW["id"])
        assert dict(row) == ASTERISK_ROW
        kept = await conn.fetchrow("SELECT uri, expiration_time FROM ps_contacts WHERE id = $1", ID_1001)
        assert (kept["uri"], kept["expiration_time"]) == ("sip:moved", newer)
        assert await write_contacts(conn, contacts) == 0  # nothing differs any more
    finally:
        await conn.close()


async def test_sync_refills_an_emptied_table_from_the_node_then_writes_nothing(db: str, node_ami: FakeAmi) -> None:
    conn = await asyncpg.connect(db)
    try:
        await add_node(conn, "n1", f"127.0.0.1:{node_ami.port}", "pbx", "secret")
        sync = ContactSync(db, clock=lambda: CAPTURED_AT)
        before = restored()
        try:
            assert await sync.sync_once(conn) == 2
            assert restored() - before == 2
            ids = [r["id"] for r in await conn.fetch("SELECT id FROM ps_contacts ORDER BY id")]
            assert ids == [ASTERISK_ROW["id"], ID_1001]
            assert await sync.sync_once(conn) == 0
            await conn.execute("TRUNCATE ps_contacts")
            assert await sync.sync_once(conn) == 2
            # Past their expiry nothing is restored: Asterisk's sweep owns that.
            await conn.execute("TRUNCATE ps_contacts")
            sync.clock = lambda: 1796290000
            assert await sync.sync_once(conn) == 0
        finally:
            sync._close_sessions(list(sync._sessions))
    finally:
        await conn.close()


async def test_an_unreachable_node_is_retried_soon_and_the_others_are_synced(db: str, node_ami: FakeAmi) -> None:
    conn = await asyncpg.connect(db)
    try:
        await add_node(conn, "up", f"127.0.0.1:{node_ami.port}", "pbx", "secret")
        down = await add_node(conn, "down", f"127.0.0.1:{free_port()}", "pbx", "secret")
        sync = ContactSync(db, clock=lambda: CAPTURED_AT)
        try:
            assert await sync.sync_once(conn) == 2
            assert sync._retry == {down.id}
        finally:
            sync._close_sessions(list(sync._sessions))
    finally:
        await conn.close()


async def test_run_syncs_at_once_when_the_database_connection_comes(db: str, node_ami: FakeAmi) -> None:
    conn = await asyncpg.connect(db)
    try:
        await add_node(conn, "n1", f"127.0.0.1:{node_ami.port}", "pbx", "secret")
        stop = asyncio.Event()
        task = asyncio.create_task(ContactSync(db, interval_s=3600, clock=lambda: CAPTURED_AT).run(stop))
        try:
            deadline = time.monotonic() + 10
            while await conn.fetchval("SELECT count(*) FROM ps_contacts") < 2:
                assert time.monotonic() < deadline, "rows not restored within 10 s"
                await asyncio.sleep(0.02)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
    finally:
        await conn.close()


# --- on the real stack -------------------------------------------------------------------------

TENANT = """
tenants:
  sync:
    domain: sync.example
    templates:
      phone:
        endpoint: {context: sync-internal, allow: "!all,ulaw", direct_media: "no"}
        aor: {max_contacts: 1, remove_existing: "yes"}
    endpoints:
      "1001": {templates: [phone], auth: {password: pw-1001}}
      "1002": {templates: [phone], auth: {password: pw-1002}}
    extensions:
      "1001": {type: simple, name: Alice, endpoints: ["1001"]}
      "1002": {type: simple, name: Bob, endpoints: ["1002"]}
"""


class NotRestored(AssertionError):
    """The row of a phone that got 200 did not reach ps_contacts in time."""


def uris(stack: Stack, endpoint: str) -> list[str]:
    rows = run_sql(stack, "SELECT uri FROM ps_contacts WHERE endpoint = $1 ORDER BY id", endpoint)
    return [realtime_decode(str(r["uri"])) for r in rows]


def wait_row(stack: Stack, endpoint: str, port: int, timeout: float) -> float:
    """Seconds until ps_contacts holds the contact of ``endpoint`` at ``port``."""
    t0 = time.monotonic()
    while not any(f":{port};" in u for u in uris(stack, endpoint)):
        if time.monotonic() - t0 > timeout:
            raise NotRestored(
                f"{endpoint} at port {port} not in ps_contacts after {timeout:g}s: {uris(stack, endpoint)}"
            )
        time.sleep(0.02)
    return time.monotonic() - t0


def wait_gone(stack: Stack, endpoint: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(f":{port};" in u for u in uris(stack, endpoint)):
        assert time.monotonic() < deadline, f"{endpoint} at port {port} still in ps_contacts: {uris(stack, endpoint)}"
        time.sleep(0.02)


def register(stack: Stack, user: str, port: int) -> None:
    r = sipp.register(stack.settings.sip_addr, user, "sync.example", f"pw-{user}", local_port=port)
    assert r.final == 200, (r.responses, r.stderr)


def call_rings(stack: Stack, caller: str, callee_port: int) -> None:
    """A call from ``caller`` to 1002 is answered by the phone listening on ``callee_port``."""
    addr = stack.settings.sip_addr

    async def scenario() -> tuple[sipp.SippResult, sipp.SippResult]:
        callee = asyncio.create_task(asyncio.to_thread(sipp.answer, addr, callee_port))
        result = await asyncio.to_thread(sipp.call, addr, caller, "sync.example", f"pw-{caller}", "1002", hold_s=0.2)
        return result, await asyncio.wait_for(callee, 30)

    caller_result, callee_result = asyncio.run(scenario())
    assert 200 in caller_result.responses, (caller_result.responses, stack.serve.log_tail(10))
    assert any(line.startswith("INVITE ") for line in callee_result.received), callee_result.received


def crash_postgres(stack: Stack) -> None:
    """What a crash does to the cluster: no shutdown checkpoint, so unlogged tables are reset."""
    pg = stack.postgres
    r = pg._as_postgres([str(find_bindir() / "pg_ctl"), "stop", "-m", "immediate", "-w", "-D", str(pg.datadir)])
    assert r.returncode == 0, r.stderr


@pytest.fixture
def synced(stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """The stack with tenant sync, and `pbxctl serve` comparing contacts every second."""
    apply_yaml(stack, TENANT, tmp_path)
    wait_delivered(stack)
    monkeypatch.setenv("PBX_CONTACTS_SYNC_INTERVAL", "1")
    stack.serve.restart()
    try:
        yield stack
    finally:
        monkeypatch.delenv("PBX_CONTACTS_SYNC_INTERVAL")
        stack.serve.restart()


@pytest.mark.stack
def test_rows_deleted_behind_asterisks_back_come_back_and_the_phone_is_routable(synced: Stack) -> None:
    port = sipp.free_udp_port()
    register(synced, "1002", port)
    wait_row(synced, "1002@sync.example", port, 5)
    run_sql(synced, "TRUNCATE ps_contacts")
    took = wait_row(synced, "1002@sync.example", port, 10)
    print(f"\n[contacts] TRUNCATE -> row back in {took:.2f} s (sync every 1 s)")
    call_rings(synced, "1001", port)


@pytest.mark.stack
def test_a_postgres_crash_empties_ps_contacts_and_the_nodes_refill_it(stack: Stack, tmp_path: Path) -> None:
    apply_yaml(stack, TENANT, tmp_path)
    wait_delivered(stack)
    port = sipp.free_udp_port()
    register(stack, "1002", port)
    wait_row(stack, "1002@sync.example", port, 5)
    crash_postgres(stack)
    stack.postgres.start()
    # Counted from the moment Postgres accepts connections again; the periodic comparison is 60 s away.
    took = wait_row(stack, "1002@sync.example", port, 10)
    print(f"\n[contacts] Postgres crash -> row back {took:.2f} s after Postgres was up")
    call_rings(stack, "1001", port)


@pytest.mark.stack
def test_a_phone_that_registered_during_an_outage_is_routable_after_it(stack: Stack, tmp_path: Path) -> None:
    # A new binding (the phone moved: max_contacts 1, remove_existing) made while Postgres is stopped.
    apply_yaml(stack, TENANT, tmp_path)
    wait_delivered(stack)
    before = sipp.free_udp_port()
    register(stack, "1002", before)  # warms the node's caches, so REGISTER works without Postgres
    wait_row(stack, "1002@sync.example", before, 5)
    moved = sipp.free_udp_port()
    stack.postgres.stop()
    try:
        register(stack, "1002", moved)
    finally:
        stack.postgres.start()
    # Counted from the moment Postgres accepts connections again; the periodic comparison is 60 s away.
    took = wait_row(stack, "1002@sync.example", moved, 5)
    print(f"\n[contacts] outage REGISTER -> row in ps_contacts {took:.2f} s after Postgres was up")
    # The binding the outage REGISTER replaced leaves Postgres too: no ghost leg to the old port.
    wait_gone(stack, "1002@sync.example", before, 5)
    call_rings(stack, "1001", moved)


@pytest.mark.stack
def test_a_phone_that_unregistered_during_an_outage_is_not_routed_to_after_it(stack: Stack, tmp_path: Path) -> None:
    apply_yaml(stack, TENANT, tmp_path)
    wait_delivered(stack)
    port = sipp.free_udp_port()
    register(stack, "1001", port)
    wait_row(stack, "1001@sync.example", port, 5)
    stack.postgres.stop()
    try:
        r = sipp.unregister_all(stack.settings.sip_addr, "1001", "sync.example", "pw-1001")
        assert r.final == 200, (r.responses, r.stderr)
    finally:
        stack.postgres.start()
    # Postgres missed the removal; no node holds the contact, so the sync removes its row.
    wait_gone(stack, "1001@sync.example", port, 5)


async def test_a_role_that_may_not_write_ps_contacts_is_reported_and_nothing_else_breaks(
    db: str, node_ami: FakeAmi, caplog: pytest.LogCaptureFixture
) -> None:
    conn = await asyncpg.connect(db)
    try:
        await add_node(conn, "n1", f"127.0.0.1:{node_ami.port}", "pbx", "secret")
        await conn.execute("CREATE ROLE contacts_reader_t NOLOGIN")
        await conn.execute("GRANT SELECT ON ps_contacts, pbx.nodes TO contacts_reader_t")
        await conn.execute("GRANT USAGE ON SCHEMA pbx TO contacts_reader_t")
        await conn.execute("SET ROLE contacts_reader_t")
        sync = ContactSync(db, clock=lambda: CAPTURED_AT)
        try:
            assert await sync.sync_once(conn) == 0
            assert await sync.sync_once(conn) == 0
        finally:
            sync._close_sessions(list(sync._sessions))
        assert sum("cannot write ps_contacts" in r.message for r in caplog.records) == 1
    finally:
        await conn.execute("RESET ROLE")
        await conn.execute("DROP OWNED BY contacts_reader_t")
        await conn.execute("DROP ROLE contacts_reader_t")
        await conn.close()
