"""`pbxctl serve`'s HTTP API behind bearer tokens: 401 without a valid token, 403 for another
tenant's calls and routing, add-party endpoints checked before any dial string is made. The tokens
live in a real database (`db`); the controller runs on the fake ARI transport."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from ari_app.ari import AriClient, FakeAriTransport, FakeRequest
from ari_app.controller import Conference, Controller, ControllerRef
from http_api.controller import add_routes
from http_api.route import make_app
from http_api.tokens import TokenStore, create_token, revoke_token
from sorcery_backend.apply import apply_config
from sorcery_backend.declarative import parse_config


def _tenant(domain: str, *numbers: str) -> dict[str, Any]:
    return {
        "domain": domain,
        "endpoints": {n: {"auth": {"password": "x"}} for n in numbers},
        "extensions": {n: {"type": "simple", "name": f"User {n}", "endpoints": [n]} for n in numbers},
    }


CONFIG = {"tenants": {"a": _tenant("a.example", "1001", "1002", "1003"), "b": _tenant("b.example", "1003", "2001")}}
ROUTE_A = {"tenant": "a", "caller": "1001", "called": "1002"}
ROUTE_B = {"tenant": "b", "caller": "2001", "called": "1003"}


class _NoLookup:
    async def route(self, endpoint_id: str, caller_number: str, caller_name: str, called: str) -> Any:
        raise AssertionError("no call is routed here")


@dataclass
class Api:
    client: TestClient[Any, Any]
    fake: FakeAriTransport
    conn: asyncpg.Connection
    store: TokenStore
    tokens: dict[str, str]

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    async def get(self, path: str, who: str | None, **params: str) -> tuple[int, Any]:
        headers = self.auth(who) if who else {}
        async with self.client.get(path, params=params, headers=headers) as resp:
            return resp.status, await (resp.json() if resp.content_type == "application/json" else resp.text())

    async def add_party(self, call_id: str, endpoint: Any, who: str | None = "op") -> tuple[int, Any]:
        headers = self.auth(who) if who else {}
        async with self.client.post(f"/calls/{call_id}/parties", json={"endpoint": endpoint}, headers=headers) as resp:
            return resp.status, await resp.json()

    def originated(self) -> list[str]:
        return [r.params["endpoint"] for r in self.fake.calls("POST", "/channels")]


def _originate(r: FakeRequest) -> dict[str, Any]:
    return {"id": r.params["channelId"], "name": "PJSIP/x-1", "state": "Down"}


async def _api(db: str, *, open_paths: tuple[str, ...] = (), cache_s: float = 0.0) -> AsyncIterator[Api]:
    conn = await asyncpg.connect(db)
    await apply_config(conn, parse_config(CONFIG))
    tokens = {
        "op": await create_token(conn, "op"),
        "a": await create_token(conn, "ta", "a"),
        "b": await create_token(conn, "tb", "b"),
    }
    pool = await asyncpg.create_pool(db, min_size=1, max_size=3)
    fake = FakeAriTransport(default=None)
    fake.route("POST", "/channels", _originate)
    controller = Controller(AriClient(fake, "pbx"), _NoLookup())
    log = logging.LoggerAdapter(logging.getLogger("test"))
    for call_id, domain in (("ca", "a.example"), ("cb", "b.example")):
        conf = Conference(controller.ari, call_id, log, members={f"{call_id}-1", f"{call_id}-2"}, tenant_domain=domain)
        controller.conferences[call_id] = conf
    store = TokenStore(pool, cache_s=cache_s)
    app = make_app(pool, verify=store.verify, open_paths=open_paths, listen=False)
    add_routes(app, ControllerRef(controller))
    try:
        async with TestClient(TestServer(app)) as client:
            yield Api(client, fake, conn, store, tokens)
    finally:
        await pool.close()
        await conn.close()


@pytest.fixture
async def api(db: str) -> AsyncIterator[Api]:
    async for a in _api(db):
        yield a


async def test_every_route_needs_a_valid_bearer_token(api: Api) -> None:
    op = api.tokens["op"]
    bad = {
        "none": {},
        "not bearer": {"Authorization": f"Basic {op}"},
        "malformed": {"Authorization": "Bearer nope"},
        "unknown": {"Authorization": "Bearer pbx_0123456789abcdef_" + "x" * 43},
        "wrong secret": {"Authorization": f"Bearer {op[:-1]}{'y' if op[-1] != 'y' else 'z'}"},
    }
    for name, headers in bad.items():
        for method, path in (("GET", "/route"), ("GET", "/calls"), ("POST", "/calls/ca/parties"), ("GET", "/metrics")):
            body = {"endpoint": "1003"}
            async with api.client.request(method, path, params=ROUTE_A, json=body, headers=headers) as r:
                assert r.status == 401, (name, path)
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
                assert list(await r.json()) == ["error"]
    assert api.originated() == []


async def test_an_operator_token_sees_and_acts_on_every_tenant(api: Api) -> None:
    assert (await api.get("/route", "op", **ROUTE_A))[0] == 200
    assert (await api.get("/route", "op", **ROUTE_B))[0] == 200
    status, calls = await api.get("/calls", "op")
    assert status == 200 and {c["call_id"] for c in calls["conferences"]} == {"ca", "cb"}
    status, metrics = await api.get("/metrics", "op")
    assert status == 200 and "pbx_calls_total" in metrics
    assert (await api.add_party("cb", "2001"))[0] == 201
    assert api.originated() == ["PJSIP/2001@2001@b.example"]


async def test_a_tenant_token_sees_and_acts_on_its_tenant_only(api: Api) -> None:
    status, calls = await api.get("/calls", "a")
    assert status == 200 and [c["call_id"] for c in calls["conferences"]] == ["ca"] and calls["ringing"] == []
    assert (await api.get("/route", "a", **ROUTE_A))[0] == 200
    status, body = await api.get("/route", "a", **ROUTE_B)
    assert status == 403 and body == {"error": "tenant b: not visible to token ta (tenant a)"}
    status, body = await api.add_party("cb", "1003", "a")
    assert status == 403 and body == {"error": "call cb: not visible to token ta (tenant a)"}
    assert (await api.get("/metrics", "a"))[0] == 403  # counts of every tenant
    assert api.originated() == []
    status, body = await api.add_party("ca", "1003", "a")
    assert status == 201 and body["call_id"] == "ca"
    assert api.originated() == ["PJSIP/1003@1003@a.example"]


@pytest.mark.parametrize(
    ("endpoint", "status"),
    [
        ("1003@b.example/1003@b.example,", 400),  # issue #15: B's phone dialed into A's conference
        ("1003@b.example", 403),  # well-formed, but another tenant's
        ("1003/x", 400),
        ("1003,", 400),
        ("1003&PJSIP/2001@b.example", 400),
        ("10\r\n03", 400),
        ("1003@", 400),
        ("@a.example", 400),
        ("9999", 404),  # well-formed, no such endpoint in tenant a
        (1003, 400),
        ("", 400),
    ],
)
async def test_add_party_refuses_anything_but_an_endpoint_of_the_calls_tenant(
    api: Api, endpoint: Any, status: int
) -> None:
    got, body = await api.add_party("ca", endpoint)
    assert got == status, body
    assert list(body) == ["error"] and "\n" not in body["error"]
    assert api.originated() == []


async def test_add_party_takes_a_name_or_its_full_id_and_names_a_missing_call(api: Api) -> None:
    assert (await api.add_party("ca", "1002@a.example"))[0] == 201
    assert api.originated() == ["PJSIP/1002@1002@a.example"]
    status, body = await api.add_party("gone", "1002")
    assert status == 404 and body == {"error": "call gone: no conference (not answered, or over)"}


async def test_a_revoked_or_expired_token_is_refused(api: Api) -> None:
    assert (await api.get("/calls", "a"))[0] == 200
    await revoke_token(api.conn, "ta")
    assert (await api.get("/calls", "a"))[0] == 401
    await api.conn.execute(
        "UPDATE pbx.api_tokens SET created_at = now() - interval '2 hours', expires_at = now() - interval '1 hour'"
        " WHERE name = 'tb'"
    )
    assert (await api.get("/calls", "b"))[0] == 401
    assert (await api.get("/calls", "op"))[0] == 200


async def test_a_revoke_takes_effect_once_the_cached_row_is_older_than_the_cache_time(db: str) -> None:
    async for api in _api(db, cache_s=0.2):
        assert (await api.get("/calls", "a"))[0] == 200
        await revoke_token(api.conn, "ta")
        assert (await api.get("/calls", "a"))[0] == 200  # still trusted from memory
        async with asyncio.timeout(5):
            while (await api.get("/calls", "a"))[0] != 401:
                await asyncio.sleep(0.05)


async def test_metrics_answer_without_a_token_when_serve_leaves_them_open(db: str) -> None:
    async for api in _api(db, open_paths=("/metrics",)):
        status, text = await api.get("/metrics", None)
        assert status == 200 and "pbx_calls_total" in text
        assert (await api.get("/calls", None))[0] == 401


async def test_tokens_are_refused_with_503_while_the_database_is_gone(api: Api) -> None:
    await api.store.pool.close()
    status, body = await api.get("/calls", "op")
    assert status == 503 and body["error"].startswith("tokens: cannot reach the database")
