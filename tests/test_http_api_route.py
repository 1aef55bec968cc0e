"""The routing HTTP API (`GET /route`) against a real database."""

from __future__ import annotations

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

from http_api.route import ROUTING, make_app
from http_api.tokens import Principal
from sorcery_backend.apply import apply_config
from sorcery_backend.declarative import parse_config

# Authentication is tested in test_http_api_auth.py: here every request is an operator's.
OPERATOR = {"Authorization": "Bearer operator"}


async def _operator(token: str) -> Principal:
    return Principal("operator")


CONFIG = {
    "tenants": {
        "t": {
            "domain": "t.example",
            "endpoints": {n: {"auth": {"password": "x"}} for n in ("1001", "1002", "1003")},
            "extensions": {
                "1001": {"type": "simple", "name": "Alice", "endpoints": ["1001"]},
                "1002": {"type": "simple", "name": "Bob", "endpoints": ["1002"]},
                "1003": {"type": "simple", "name": "Carol", "endpoints": ["1003"]},
                "2000": {
                    "type": "group",
                    "name": "Team",
                    "short_name": "T",
                    "ranks": [{"members": ["1002"]}, {"mode": "next", "delay_ms": 5000, "members": ["1003"]}],
                },
            },
        }
    }
}


async def test_route_endpoint_returns_first_commands_and_the_tree_on_request(db: str) -> None:
    conn = await asyncpg.connect(db)
    await apply_config(conn, parse_config(CONFIG))
    await conn.execute(
        "INSERT INTO ps_contacts (id, uri, endpoint) VALUES ('1002@t.example^3B@a', 'sip:x', '1002@t.example')"
    )
    await conn.close()
    pool = await asyncpg.create_pool(db, min_size=1, max_size=3)
    try:
        async with TestClient(TestServer(make_app(pool, verify=_operator)), headers=OPERATOR) as client:
            params = {"tenant": "t", "caller": "1001", "called": "2000"}
            resp = await client.get("/route", params=params)
            assert resp.status == 200
            body = await resp.json()
            assert body["status"] == "ok" and "tree" not in body
            kinds = [(c["command"], c.get("device"), c.get("callername")) for c in body["commands"]]
            assert ("RingDevice", "1002@t.example^3B@a", "[T] Alice") in kinds
            assert any(c["command"] == "StartTimer" and c["at_ms"] == 5000 for c in body["commands"])
            explained = await (await client.get("/route", params={**params, "explain": "1"})).json()
            assert explained["commands"] == body["commands"]
            assert explained["tree"]["tree"]["ranks"][1] == {
                "mode": "next",
                "delay_ms": 5000,
                "members": [{"number": "1003", "name": "Carol", "kind": "user", "depth": 1, "endpoints": ["1003"]}],
            }
            assert (await client.get("/route", params={"tenant": "nope", "caller": "1", "called": "2"})).status == 404
            assert (await client.get("/route", params={"tenant": "t"})).status == 400
    finally:
        await pool.close()


async def test_route_api_serves_from_the_cache_and_sees_an_sql_edit_at_once(db: str) -> None:
    conn = await asyncpg.connect(db)
    try:
        await apply_config(conn, parse_config(CONFIG))
        pool = await asyncpg.create_pool(db, min_size=1, max_size=3)
        try:
            app = make_app(pool, verify=_operator)
            async with TestClient(TestServer(app), headers=OPERATOR) as client:
                routing = app[ROUTING]
                # The app loads every tenant once its LISTEN connection is up.
                await routing.wait_for(lambda: routing.snapshot("t") is not None, 15)
                params = {"tenant": "t", "caller": "1001", "called": "2000"}
                body = await (await client.get("/route", params=params)).json()
                assert body["cached"] is True and body["status"] == "ok"
                await conn.execute(
                    "UPDATE pbx.extensions SET short_name = 'NEW' WHERE number = '2000' AND "
                    "tenant_id = (SELECT id FROM pbx.tenants WHERE name = 't')"
                )
                await conn.execute(
                    "INSERT INTO ps_contacts (id, uri, endpoint) "
                    "VALUES ('1002@t.example^3B@a', 'sip:x', '1002@t.example')"
                )
                # No waiting for the notification: the very next request routes on the edit.
                body = await (await client.get("/route", params=params)).json()
                rings = [c for c in body["commands"] if c["command"] == "RingDevice"]
                assert [(c["device"], c["callername"]) for c in rings] == [("1002@t.example^3B@a", "[NEW] Alice")]
        finally:
            await pool.close()
    finally:
        await conn.close()
