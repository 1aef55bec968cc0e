"""sorcery_backend.db on a real Postgres: the service pool gives a connection back without a
reset round trip, still never hands out one with an open transaction, and runs its prepared
statements on generic plans."""

from __future__ import annotations

import asyncio

import asyncpg

from routing_store.cache import RoutingData
from sorcery_backend.apply import apply_config
from sorcery_backend.db import service_pool
from sorcery_backend.declarative import parse_config

TENANT = {
    "tenants": {
        "t": {
            "domain": "t.example",
            "endpoints": {n: {"auth": {"password": "x"}} for n in ("1001", "1002")},
            "extensions": {
                "1001": {"type": "simple", "name": "Alice", "endpoints": ["1001"]},
                "1002": {"type": "simple", "name": "Bob", "endpoints": ["1002"]},
            },
        }
    }
}


def test_releasing_a_connection_sends_no_statement(db: str) -> None:
    async def go() -> str:
        pool = await service_pool(db, max_size=1)
        try:
            async with pool.acquire() as conn:
                pid = conn.get_server_pid()
                await conn.fetchval("SELECT 'the call lookup'")
            # The server's record of that backend's last statement: a reset would show there.
            watcher = await asyncpg.connect(db)
            try:
                last = await watcher.fetchval("SELECT query FROM pg_stat_activity WHERE pid = $1", pid)
            finally:
                await watcher.close()
            return str(last)
        finally:
            await pool.close()

    assert asyncio.run(go()) == "SELECT 'the call lookup'"


def test_an_open_transaction_is_rolled_back_on_release(db: str) -> None:
    async def go() -> tuple[bool, int]:
        pool = await service_pool(db, max_size=1)
        try:
            async with pool.acquire() as conn:
                await conn.execute("CREATE TABLE IF NOT EXISTS pool_probe (n int)")
                await conn.execute("BEGIN")
                await conn.execute("INSERT INTO pool_probe VALUES (1)")
            async with pool.acquire() as conn:
                return conn.is_in_transaction(), int(await conn.fetchval("SELECT count(*) FROM pool_probe"))
        finally:
            await pool.close()

    loop_errors: list[object] = []

    def run() -> tuple[bool, int]:
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(lambda _loop, ctx: loop_errors.append(ctx["message"]))
        try:
            return loop.run_until_complete(go())
        finally:
            loop.close()

    assert run() == (False, 0)
    assert loop_errors  # asyncpg reports the abandoned transaction it rolled back


def test_the_per_call_routing_statement_is_not_planned_again_on_every_call(db: str) -> None:
    """Postgres' own count, from pg_prepared_statements: once prepared, the routing statement runs
    on its generic plan. Under the default `auto` it was planned afresh on every call."""

    async def go() -> tuple[int, int]:
        pool = await service_pool(db, max_size=2)  # the snapshot load takes a second connection
        try:
            async with pool.acquire() as conn:
                await apply_config(conn, parse_config(TENANT))
                routing = RoutingData(pool)
                await routing.preload("t")
                for _ in range(8):
                    data = await routing.for_call(conn, "t", "1001", "1002")
                    assert data.cached
                row = await conn.fetchrow(
                    "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                    " WHERE statement LIKE '%unnest($2::text[])%' AND statement NOT LIKE '%pg_prepared_statements%'"
                )
                assert row is not None, "the routing statement was not prepared"
                return int(row["generic_plans"]), int(row["custom_plans"])
        finally:
            await pool.close()

    generic, custom = asyncio.run(go())
    assert (generic, custom) == (8, 0)
