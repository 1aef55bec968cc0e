"""sorcery_backend.db on a real Postgres: the service pool gives a connection back without a
reset round trip, and still never hands out one with an open transaction."""

from __future__ import annotations

import asyncio

import asyncpg

from sorcery_backend.db import service_pool


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
