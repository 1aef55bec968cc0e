"""HttpAriTransport against a small aiohttp server on 127.0.0.1 that answers like ARI, and the
FakeAriTransport's own behaviour."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ari_app.ari import (
    AriClient,
    AriConflict,
    AriError,
    AriNotFound,
    AriStatusError,
    AriUnavailable,
    Backoff,
    Connected,
    FakeAriTransport,
    FakeRequest,
    HttpAriTransport,
    StasisStart,
    StreamItem,
)
from devstack.ports import free_port
from pbx_base.errors import DependencyError, Unavailable

FIXTURES = Path(__file__).parent / "fixtures" / "ari"
USER, PASSWORD = "pbx", "s3cr:et"
GOOD_AUTH = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


@dataclass
class FakeAsterisk:
    """State of the test server: what it saw, what each WebSocket session sends."""

    auth_seen: list[str | None] = field(default_factory=list)
    ws_queries: list[dict[str, str]] = field(default_factory=list)
    # One list of text frames per session, sent in order, then the server closes the socket. A
    # session beyond the list stays open until the client leaves.
    ws_scripts: list[list[str]] = field(default_factory=list)


FAKE: web.AppKey[FakeAsterisk] = web.AppKey("fake", FakeAsterisk)


@web.middleware
async def require_auth(request: web.Request, handler: Any) -> web.StreamResponse:
    auth = request.headers.get("Authorization")
    request.app[FAKE].auth_seen.append(auth)
    if auth != GOOD_AUTH:
        # What res_ari answers: a JSON body and a challenge.
        return web.json_response(
            {"message": "Authentication required"}, status=401, headers={"WWW-Authenticate": 'Basic realm="Asterisk"'}
        )
    resp: web.StreamResponse = await handler(request)
    return resp


async def get_channel(request: web.Request) -> web.Response:
    if request.match_info["id"] == "missing":
        return web.json_response({"message": "Channel not found"}, status=404)
    return web.json_response(load("rest/channel.json"))


async def answer(request: web.Request) -> web.Response:
    return web.Response(status=204)


async def add_channel(request: web.Request) -> web.Response:
    return web.json_response({"message": "Channel not in Stasis application"}, status=409)


async def boom(request: web.Request) -> web.Response:
    return web.Response(status=500, text="Internal Server Error")


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(5)
    return web.json_response({})


async def echo(request: web.Request) -> web.Response:
    body = await request.json() if request.can_read_body else None
    return web.json_response({"method": request.method, "query": dict(request.query), "body": body})


async def events(request: web.Request) -> web.WebSocketResponse:
    fake = request.app[FAKE]
    session = len(fake.ws_queries)
    fake.ws_queries.append(dict(request.query))
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    if session < len(fake.ws_scripts):
        for frame in fake.ws_scripts[session]:
            await ws.send_str(frame)
        await ws.close()
    else:
        async for _ in ws:
            pass
    return ws


@pytest.fixture
async def asterisk() -> AsyncIterator[tuple[TestServer, FakeAsterisk]]:
    app = web.Application(middlewares=[require_auth])
    fake = FakeAsterisk()
    app[FAKE] = fake
    app.router.add_get("/ari/channels/{id}", get_channel)
    app.router.add_post("/ari/channels/{id}/answer", answer)
    app.router.add_post("/ari/bridges/{id}/addChannel", add_channel)
    app.router.add_get("/ari/boom", boom)
    app.router.add_get("/ari/slow", slow)
    app.router.add_route("*", "/ari/echo", echo)
    app.router.add_get("/ari/events", events)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server, fake
    finally:
        await server.close()


def base_url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


@contextlib.asynccontextmanager
async def transport_for(server: TestServer, password: str = PASSWORD, **kw: Any) -> AsyncIterator[HttpAriTransport]:
    async with HttpAriTransport(base_url(server), USER, password, **kw) as t:
        yield t


# REST


async def test_authorization_header_on_requests(asterisk: tuple[TestServer, FakeAsterisk]) -> None:
    server, fake = asterisk
    async with transport_for(server) as t:
        channel = await t.request("GET", "/channels/1778321523.12")
    assert channel["id"] == "1778321523.12"
    assert fake.auth_seen == [GOOD_AUTH]


async def test_base_url_may_end_in_ari(asterisk: tuple[TestServer, FakeAsterisk]) -> None:
    server, _ = asterisk
    async with HttpAriTransport(base_url(server) + "/ari/", USER, PASSWORD) as t:
        assert (await t.request("GET", "/channels/x"))["state"] == "Up"


async def test_bad_password_is_an_ari_error_401(asterisk: tuple[TestServer, FakeAsterisk]) -> None:
    server, _ = asterisk
    async with transport_for(server, password="wrong") as t:
        with pytest.raises(AriStatusError) as info:
            await t.request("GET", "/channels/x")
    assert (info.value.status, info.value.message) == (401, "Authentication required")


async def test_error_mapping(asterisk: tuple[TestServer, FakeAsterisk]) -> None:
    server, _ = asterisk
    async with transport_for(server) as t:
        with pytest.raises(AriNotFound) as not_found:
            await t.request("GET", "/channels/missing")
        with pytest.raises(AriConflict) as conflict:
            await t.request("POST", "/bridges/b/addChannel", params={"channel": "x"})
        with pytest.raises(AriStatusError) as boom:
            await t.request("GET", "/boom")
    assert (not_found.value.status, not_found.value.message) == (404, "Channel not found")
    assert conflict.value.message == "Channel not in Stasis application"
    assert (type(boom.value), boom.value.status, boom.value.message) == (AriStatusError, 500, "Internal Server Error")


async def test_no_content_is_none_and_params_and_body_are_sent(asterisk: tuple[TestServer, FakeAsterisk]) -> None:
    server, _ = asterisk
    async with transport_for(server) as t:
        assert await t.request("POST", "/channels/x/answer") is None
        echoed = await t.request(
            "POST", "/echo", params={"endpoint": "PJSIP/1002@1002@acme.example"}, json={"variables": {"A": "1"}}
        )
    assert echoed == {
        "method": "POST",
        "query": {"endpoint": "PJSIP/1002@1002@acme.example"},
        "body": {"variables": {"A": "1"}},
    }


async def test_request_timeout(asterisk: tuple[TestServer, FakeAsterisk]) -> None:
    server, _ = asterisk
    async with transport_for(server, request_timeout=0.2) as t:
        started = time.monotonic()
        with pytest.raises(AriUnavailable, match=r"no answer in 0\.2 s"):
            await t.request("GET", "/slow")
        with pytest.raises(AriUnavailable, match=r"no answer in 0\.1 s"):
            await t.request("GET", "/slow", timeout=0.1)
    assert time.monotonic() - started < 2


def closed_port() -> int:
    return free_port()  # reserved and free: nothing listens there


async def test_connection_refused_is_unavailable() -> None:
    async with HttpAriTransport(f"http://127.0.0.1:{closed_port()}", USER, PASSWORD) as t:
        with pytest.raises(AriUnavailable):
            await t.request("GET", "/channels")
        with pytest.raises(AriUnavailable):
            await anext(t.events("pbx"))


async def test_a_session_passed_in_is_not_closed(asterisk: tuple[TestServer, FakeAsterisk]) -> None:
    server, _ = asterisk
    async with aiohttp.ClientSession() as session:
        async with HttpAriTransport(base_url(server), USER, PASSWORD, session=session) as t:
            await t.request("POST", "/channels/x/answer")
        assert not session.closed


# Events WebSocket


async def test_events_session(asterisk: tuple[TestServer, FakeAsterisk]) -> None:
    server, fake = asterisk
    start, end = load("stasis_start.json"), load("stasis_end.json")
    fake.ws_scripts = [[json.dumps(start), "not json", json.dumps([1]), json.dumps(end)]]
    opened: list[int] = []
    got: list[dict[str, Any]] = []
    async with transport_for(server) as t, asyncio.timeout(5):
        async for event in t.events(["pbx", "pbx-b"], on_open=lambda: opened.append(len(got))):
            got.append(event)
    # on_open ran before the first event; frames that are not event objects are skipped; the
    # iterator ended when the server closed.
    assert opened == [0]
    assert got == [start, end]
    assert fake.ws_queries == [{"app": "pbx,pbx-b", "subscribeAll": "false"}]
    assert fake.auth_seen == [GOOD_AUTH]


async def test_events_handshake_refused(asterisk: tuple[TestServer, FakeAsterisk]) -> None:
    server, _ = asterisk
    async with transport_for(server, password="wrong") as t:
        with pytest.raises(AriStatusError) as info:
            await anext(t.events("pbx"))
    assert info.value.status == 401


async def test_events_handshake_timeout() -> None:
    # Accepts TCP, never answers the upgrade: a hung Asterisk must not hang the reconnect loop.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(-1)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with HttpAriTransport(f"http://127.0.0.1:{port}", USER, PASSWORD, connect_timeout=0.2) as t:
            with pytest.raises(AriUnavailable, match="no handshake"):
                async with asyncio.timeout(3):
                    await anext(t.events("pbx"))
    finally:
        server.close()
        await server.wait_closed()


async def test_client_reconnects_over_real_websockets(asterisk: tuple[TestServer, FakeAsterisk]) -> None:
    server, fake = asterisk
    first, second = load("stasis_start.json"), load("stasis_start_dialed_leg.json")
    # Two sessions closed by the server after one event each; the third stays open.
    fake.ws_scripts = [[json.dumps(first)], [json.dumps(second)]]
    items: list[StreamItem] = []
    async with transport_for(server) as t:
        client = AriClient(t, "pbx", backoff=Backoff(initial=0.01, maximum=0.05))
        async with contextlib.aclosing(client.events()) as stream, asyncio.timeout(5):
            async for item in stream:
                items.append(item)
                if len(items) == 7:
                    break
    names = [type(i).__name__ for i in items]
    assert names == [
        "Connected",
        "StasisStart",
        "Disconnected",
        "Connected",
        "StasisStart",
        "Disconnected",
        "Connected",
    ]
    assert items[6] == Connected(reconnected=True)
    assert isinstance(items[4], StasisStart) and items[4].args == ("leg", "6f1c2d")
    assert len(fake.ws_queries) == 3 and all(q["app"] == "pbx" for q in fake.ws_queries)


# FakeAriTransport


async def test_fake_routes_path_params_and_async_handlers() -> None:
    fake = FakeAriTransport()

    async def get(request: FakeRequest) -> dict[str, str]:
        return {"id": request.path_params["channel_id"]}

    fake.route("GET", "/channels/{channel_id}", get)
    fake.route("GET", "/channels/{channel_id}", {"overridden": "yes"})
    fake.route("POST", "/channels/{channel_id}/answer", None)
    assert await fake.request("GET", "/channels/1.2") == {"overridden": "yes"}
    assert await fake.request("POST", "/channels/1.2/answer") is None
    # Placeholders match one segment only.
    with pytest.raises(AriNotFound):
        await fake.request("GET", "/channels/1.2/variable")
    assert [c.path for c in fake.calls("GET")] == ["/channels/1.2", "/channels/1.2/variable"]
    fake.route("GET", "/channels/{channel_id}/variable", get)
    assert await fake.request("GET", "/channels/7/variable") == {"id": "7"}


async def test_fake_events_script() -> None:
    fake = FakeAriTransport()
    fake.refuse(AriUnavailable("down"))
    fake.push({"type": "A"})
    fake.drop()
    with pytest.raises(AriUnavailable):
        await anext(fake.events("pbx"))
    got = [e async for e in fake.events("pbx")]
    assert got == [{"type": "A"}]
    assert fake.sessions == [["pbx"]] and fake.open_sessions == 0


def test_ari_errors_share_the_projects_groups() -> None:
    # An originate that times out must be caught where an ARI refusal is: both are AriErrors.
    assert issubclass(AriUnavailable, AriError) and issubclass(AriNotFound, AriError)
    assert issubclass(AriUnavailable, Unavailable) and issubclass(AriStatusError, DependencyError)
    assert not issubclass(AriStatusError, Unavailable)
