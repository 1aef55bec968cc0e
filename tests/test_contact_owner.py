"""sql/024: a node never deletes a contact another node now holds, through the view Asterisk writes.

Sessions name their node as Asterisk's does (res_pgsql.conf ``appname = pbx-node:<systemname>``).
Every statement here is the one res_config_pgsql sends (``DELETE FROM ps_node_contacts WHERE id =``)
and its row count is what Sorcery reads as "deleted".
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

AOR = "1001@own.example"
C1 = f"{AOR}^3B@c1"  # the phone's contact: one id whichever node takes it (md5 of its URI)
C2 = f"{AOR}^3B@c2"  # the same phone from another port: another contact of the AOR

Node = Callable[[str], Awaitable[asyncpg.Connection]]


@pytest.fixture
async def node(db: str) -> AsyncIterator[Node]:
    """A session of the named node, as its Asterisk opens it."""
    conns: list[asyncpg.Connection] = []

    async def connect(name: str) -> asyncpg.Connection:
        conn = await asyncpg.connect(db, server_settings={"application_name": f"pbx-node:{name}"})
        conns.append(conn)
        return conn

    try:
        yield connect
    finally:
        for c in conns:
            await c.close()


async def put(conn: asyncpg.Connection, cid: str, reg_server: str, expires_in: int) -> None:
    await conn.execute(
        "INSERT INTO ps_node_contacts (id, uri, endpoint, reg_server, expiration_time) "
        "VALUES ($1, 'sip:x', $2, $3, $4) "
        "ON CONFLICT (id) DO UPDATE SET reg_server = excluded.reg_server, expiration_time = excluded.expiration_time",
        cid, AOR, reg_server, int(time.time()) + expires_in,
    )  # fmt: skip


async def delete(conn: asyncpg.Connection, cid: str) -> str:
    """The command tag: ``DELETE 1`` is what makes Sorcery drop its cached copies."""
    return str(await conn.execute(f"DELETE FROM ps_node_contacts WHERE id = '{cid}'"))


async def rows(conn: asyncpg.Connection) -> dict[str, str]:
    return {r["id"]: r["reg_server"] for r in await conn.fetch("SELECT id, reg_server FROM ps_contacts")}


async def test_a_stale_delete_of_a_contact_another_node_refreshes_is_counted_but_skipped(node: Node) -> None:
    a, b = await node("a"), await node("b")
    await put(a, C1, "a", 60)
    await put(b, C1, "b", 60)  # the phone moved: b refreshed the same contact
    assert await delete(a, C1) == "DELETE 1"
    assert await rows(b) == {C1: "b"}


async def test_the_owner_s_unregister_and_an_expired_row_are_deleted(node: Node) -> None:
    a, b = await node("a"), await node("b")
    await put(b, C1, "b", 60)
    assert await delete(b, C1) == "DELETE 1"
    await put(b, C1, "b", -1)  # b's expiry passed: any node's sweep may delete it
    assert await delete(a, C1) == "DELETE 1"
    assert await rows(a) == {}
    assert await delete(a, C1) == "DELETE 0"  # no row: as before


async def test_remove_existing_across_nodes_deletes_the_replaced_contact(node: Node) -> None:
    a, b = await node("a"), await node("b")
    await put(a, C1, "a", 60)
    await put(b, C2, "b", 60)  # b's REGISTER adds its contact first, then removes the excess one
    assert await delete(b, C1) == "DELETE 1"
    assert await rows(a) == {C2: "b"}


async def test_a_contact_of_the_aor_the_deleter_holds_that_expires_sooner_is_no_replacement(node: Node) -> None:
    a, b = await node("a"), await node("b")
    await put(a, C2, "a", 10)  # a's older contact of the AOR, not yet refreshed elsewhere
    await put(b, C1, "b", 60)
    await delete(a, C1)
    assert await rows(a) == {C1: "b", C2: "a"}


async def test_sessions_that_are_no_node_are_not_restricted(node: Node, db: str) -> None:
    b = await node("b")
    await put(b, C1, "b", 60)
    await put(b, f"{AOR.replace('1001', '1002')}^3B@c1", "b", 60)
    admin = await asyncpg.connect(db)
    try:
        assert await delete(admin, C1) == "DELETE 1"
        await admin.execute("DELETE FROM ps_contacts")  # the table itself: operators, tests
        assert await rows(admin) == {}
    finally:
        await admin.close()


async def test_a_refresh_through_the_view_updates_the_table_and_a_missing_row_is_inserted(node: Node) -> None:
    a = await node("a")
    await a.execute(
        "INSERT INTO ps_node_contacts (id, uri, endpoint, reg_server, expiration_time) "
        "VALUES ($1, 'sip:x', $2, 'a', 1)",
        C1, AOR,
    )  # fmt: skip
    assert await a.execute("UPDATE ps_node_contacts SET expiration_time = '5' WHERE id = $1", C1) == "UPDATE 1"
    assert await a.fetchval("SELECT expiration_time FROM ps_contacts") == 5


async def test_the_asterisk_role_writes_through_the_view(db: str) -> None:
    admin = await asyncpg.connect(db)
    role = "own_" + db.rsplit("/", 1)[1]
    await admin.execute(f"CREATE ROLE {role} LOGIN IN ROLE pbx_asterisk")
    try:
        dsn = db.replace("postgres@", f"{role}@")
        ast = await asyncpg.connect(dsn, server_settings={"application_name": "pbx-node:a"})
        try:
            await put(ast, C1, "a", 60)
            await admin.execute("UPDATE ps_contacts SET reg_server = 'b'")
            assert await delete(ast, C1) == "DELETE 1"
            assert await rows(admin) == {C1: "b"}
            await admin.execute("UPDATE ps_contacts SET reg_server = 'a'")
            assert await delete(ast, C1) == "DELETE 1"
            assert await rows(admin) == {}
        finally:
            await ast.close()
    finally:
        await admin.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
        await admin.close()
