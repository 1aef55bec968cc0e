"""devstack.services.wait_delivered on a real Postgres: waits for one node, or every connected one."""

from __future__ import annotations

import asyncpg
import pytest

from devstack.services import ServicesError, wait_delivered
from sorcery_backend.apply import apply_config
from sorcery_backend.declarative import parse_config
from sorcery_backend.nodes import add_node

CONFIG = {"tenants": {"acme": {"domain": "acme.example", "endpoints": {"1001": {"auth": {"password": "a"}}}}}}


async def test_waits_for_the_named_node_or_the_connected_ones(db: str) -> None:
    conn = await asyncpg.connect(db)
    try:
        await add_node(conn, "n1", "127.0.0.1:5038", "pbx", "s")
        await apply_config(conn, parse_config(CONFIG))
        assert await conn.fetchval("SELECT count(*) FROM pbx.push_pending") > 0
        with pytest.raises(ServicesError, match=r"changes not delivered to node n1 within 0\.05s"):
            await wait_delivered(conn, 0.05, node="n1")
        await conn.execute("UPDATE pbx.node_state SET connected = false")
        await wait_delivered(conn, 0.05)  # n1 is not connected: nobody to wait for
        await conn.execute("UPDATE pbx.node_state SET connected = true")
        with pytest.raises(ServicesError, match="node n1"):
            await wait_delivered(conn, 0.05)
        await conn.execute("DELETE FROM pbx.push_pending")
        await wait_delivered(conn, 0.05, node="n1")
        await wait_delivered(conn, 0.05)
    finally:
        await conn.close()
