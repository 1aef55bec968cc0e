"""AriClient over FakeAriTransport: REST calls on the wire, the event stream, reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest

from ari_app.ari import (
    ApplicationReplaced,
    AriClient,
    AriConflict,
    AriError,
    AriNotFound,
    AriStatusError,
    AriUnavailable,
    Backoff,
    Connected,
    DialplanTarget,
    Disconnected,
    FakeAriTransport,
    FakeRequest,
    StasisEnd,
    StasisStart,
    StreamItem,
    UnknownEvent,
)

FIXTURES = Path(__file__).parent / "fixtures" / "ari"
CHAN = "1778321523.12"


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


class Sleeps:
    """Stands in for asyncio.sleep: records the delays, yields once so other tasks run."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


def client_for(fake: FakeAriTransport, **kw: Any) -> AriClient:
    kw.setdefault("sleep", Sleeps())
    kw.setdefault("rand", lambda: 0.0)
    return AriClient(fake, "pbx", **kw)


async def take(stream: AsyncGenerator[StreamItem, None], n: int) -> list[StreamItem]:
    async with asyncio.timeout(5):
        return [await anext(stream) for _ in range(n)]


def kinds(items: list[StreamItem]) -> list[str]:
    return [type(i).__name__ for i in items]


# REST


async def test_channel_calls_on_the_wire() -> None:
    fake = FakeAriTransport(default=None)
    fake.route("GET", "/channels/{channel_id}", load("rest/channel.json"))
    fake.route("GET", "/channels", load("rest/channels.json"))
    fake.route("GET", "/channels/{channel_id}/variable", load("rest/variable.json"))
    fake.route("POST", "/channels/{channel_id}/play", load("rest/playback.json"))
    client = client_for(fake)
    ch = client.channels

    assert (await ch.get(CHAN)).state == "Up"
    assert [c.id for c in await ch.list()] == [CHAN, "ctl-6f1c2d.1002"]
    await ch.answer(CHAN)
    await ch.ring(CHAN)
    await ch.ring_stop(CHAN)
    await ch.progress(CHAN)
    await ch.hangup(CHAN, reason="busy")
    await ch.hangup(CHAN, reason_code=17)
    await ch.dial("ctl-1", caller=CHAN, timeout=30)
    await ch.continue_in_dialplan(CHAN, context="pbx-after", extension="s", priority=1)
    await ch.set_variable(CHAN, "CALLERID(name)", "[TEAM] Alice")
    assert await ch.get_variable(CHAN, "PBX_TENANT") == "acme"
    playback = await ch.play(CHAN, ["sound:hello-world", "tone:ring;tonezone=de"], lang="de")
    await ch.start_moh(CHAN, "default")
    await ch.stop_moh(CHAN)
    assert playback.id == "pb-6f1c2d"

    wire = [(r.method, r.path, dict(r.params)) for r in fake.requests]
    assert wire == [
        ("GET", f"/channels/{CHAN}", {}),
        ("GET", "/channels", {}),
        ("POST", f"/channels/{CHAN}/answer", {}),
        ("POST", f"/channels/{CHAN}/ring", {}),
        ("DELETE", f"/channels/{CHAN}/ring", {}),
        ("POST", f"/channels/{CHAN}/progress", {}),
        ("DELETE", f"/channels/{CHAN}", {"reason": "busy"}),
        ("DELETE", f"/channels/{CHAN}", {"reason_code": "17"}),
        ("POST", "/channels/ctl-1/dial", {"caller": CHAN, "timeout": "30"}),
        ("POST", f"/channels/{CHAN}/continue", {"context": "pbx-after", "extension": "s", "priority": "1"}),
        ("POST", f"/channels/{CHAN}/variable", {"variable": "CALLERID(name)", "value": "[TEAM] Alice"}),
        ("GET", f"/channels/{CHAN}/variable", {"variable": "PBX_TENANT"}),
        ("POST", f"/channels/{CHAN}/play", {"media": "sound:hello-world,tone:ring;tonezone=de", "lang": "de"}),
        ("POST", f"/channels/{CHAN}/moh", {"mohClass": "default"}),
        ("DELETE", f"/channels/{CHAN}/moh", {}),
    ]
    assert all(r.json is None for r in fake.requests)


async def test_create_and_originate_default_to_our_app_and_send_variables_in_the_body() -> None:
    fake = FakeAriTransport()
    fake.route("POST", "/channels/create", load("rest/channel_created.json"))
    fake.route("POST", "/channels", load("rest/channel_created.json"))
    client = client_for(fake)

    created = await client.channels.create(
        "PJSIP/1002@1002@acme.example",
        app_args=["leg", "6f1c2d"],
        channel_id="ctl-6f1c2d.1002",
        originator=CHAN,
        formats=["ulaw", "alaw"],
        variables={"PBX_TENANT": "acme"},
    )
    assert created.id == "ctl-6f1c2d.1002" and created.state == "Down"
    await client.channels.originate("PJSIP/1003@1003@acme.example", app="other", caller_id='"Alice" <1001>', timeout=20)

    create, originate = fake.requests
    assert create.params == {
        "endpoint": "PJSIP/1002@1002@acme.example",
        "app": "pbx",
        "appArgs": "leg,6f1c2d",
        "channelId": "ctl-6f1c2d.1002",
        "originator": CHAN,
        "formats": "ulaw,alaw",
    }
    assert create.json == {"variables": {"PBX_TENANT": "acme"}}
    assert originate.params == {
        "endpoint": "PJSIP/1003@1003@acme.example",
        "app": "other",
        "callerId": '"Alice" <1001>',
        "timeout": "20",
    }
    assert originate.json is None


async def test_originate_into_the_dialplan_instead_of_an_app() -> None:
    fake = FakeAriTransport()
    fake.route("POST", "/channels", load("rest/channel_created.json"))
    client = client_for(fake)
    await client.channels.originate(
        "PJSIP/1002@acme.example/sip:hold@127.0.0.1:5070",
        dialplan=DialplanTarget("pbx-hold", "hold", 1),
        channel_id="hold-1",
        timeout=10,
    )
    assert fake.requests[0].params == {
        "endpoint": "PJSIP/1002@acme.example/sip:hold@127.0.0.1:5070",
        "context": "pbx-hold",
        "extension": "hold",
        "priority": "1",
        "timeout": "10",
        "channelId": "hold-1",
    }
    with pytest.raises(ValueError, match="not both"):
        await client.channels.originate("PJSIP/x", app_args=["a"], dialplan=DialplanTarget("c", "e"))
    assert len(fake.requests) == 1


async def test_playback_calls_on_the_wire() -> None:
    fake = FakeAriTransport(default=None)
    fake.route("GET", "/playbacks/{playback_id}", load("rest/playback.json"))
    client = client_for(fake)
    assert (await client.playbacks.get("pb-6f1c2d")).id == "pb-6f1c2d"
    await client.playbacks.control("pb-6f1c2d", "pause")
    await client.playbacks.stop("pb-6f1c2d")
    wire = [(r.method, r.path, dict(r.params)) for r in fake.requests]
    assert wire == [
        ("GET", "/playbacks/pb-6f1c2d", {}),
        ("POST", "/playbacks/pb-6f1c2d/control", {"operation": "pause"}),
        ("DELETE", "/playbacks/pb-6f1c2d", {}),
    ]


async def test_bridge_calls_on_the_wire() -> None:
    fake = FakeAriTransport(default=None)
    fake.route("POST", "/bridges", load("rest/bridge.json"))
    fake.route("GET", "/bridges/{bridge_id}", load("rest/bridge.json"))
    fake.route("GET", "/bridges", load("rest/bridges.json"))
    client = client_for(fake)
    br = client.bridges

    bridge = await br.create(name="call-6f1c2d", bridge_id="b-6f1c2d")
    assert bridge.bridge_type == "mixing"
    assert (await br.get("b-6f1c2d")).id == "b-6f1c2d"
    assert len(await br.list()) == 1
    await br.add_channel("b-6f1c2d", [CHAN, "ctl-6f1c2d.1002"], absorb_dtmf=False, inhibit_connected_line_updates=True)
    await br.remove_channel("b-6f1c2d", CHAN)
    await br.destroy("b-6f1c2d")

    wire = [(r.method, r.path, dict(r.params)) for r in fake.requests]
    assert wire == [
        ("POST", "/bridges", {"type": "mixing", "name": "call-6f1c2d", "bridgeId": "b-6f1c2d"}),
        ("GET", "/bridges/b-6f1c2d", {}),
        ("GET", "/bridges", {}),
        (
            "POST",
            "/bridges/b-6f1c2d/addChannel",
            {"channel": f"{CHAN},ctl-6f1c2d.1002", "absorbDTMF": "false", "inhibitConnectedLineUpdates": "true"},
        ),
        ("POST", "/bridges/b-6f1c2d/removeChannel", {"channel": CHAN}),
        ("DELETE", "/bridges/b-6f1c2d", {}),
    ]


async def test_asterisk_info_and_ping() -> None:
    fake = FakeAriTransport()
    fake.route("GET", "/asterisk/info", load("rest/asterisk_info.json"))
    fake.route("GET", "/asterisk/ping", load("rest/asterisk_ping.json"))
    client = client_for(fake)
    info = await client.asterisk_info(only=["system", "status"])
    assert info.system is not None and info.system.version.startswith("22.")
    assert fake.requests[0].params == {"only": "system,status"}
    assert await client.asterisk.ping() == "02:42:ac:11:00:02"


async def test_ids_are_quoted_into_one_path_segment() -> None:
    fake = FakeAriTransport(default=None)
    await client_for(fake).channels.answer("a/b c")
    assert fake.requests[0].path == "/channels/a%2Fb%20c/answer"


async def test_hangup_refuses_reason_and_reason_code_together() -> None:
    fake = FakeAriTransport(default=None)
    with pytest.raises(ValueError):
        await client_for(fake).channels.hangup(CHAN, reason="busy", reason_code=17)
    assert fake.requests == []


async def test_errors_come_through_typed() -> None:
    fake = FakeAriTransport()

    def gone(request: FakeRequest) -> None:
        raise AriNotFound(404, f"Channel not found: {request.path_params['channel_id']}")

    async def not_in_stasis(request: FakeRequest) -> None:
        raise AriConflict(409, "Channel not in Stasis application")

    fake.route("POST", "/channels/{channel_id}/answer", gone)
    fake.route("POST", "/bridges/{bridge_id}/addChannel", not_in_stasis)
    client = client_for(fake)
    with pytest.raises(AriNotFound, match=CHAN):
        await client.channels.answer(CHAN)
    with pytest.raises(AriConflict) as info:
        await client.bridges.add_channel("b", CHAN)
    assert info.value.status == 409 and isinstance(info.value, AriError)
    with pytest.raises(AriNotFound, match="no route"):
        await client.channels.ring(CHAN)


async def test_request_timeout_reaches_the_transport() -> None:
    fake = FakeAriTransport(default=None)
    await client_for(fake, request_timeout=2.5).channels.answer(CHAN)
    assert fake.requests[0].timeout == 2.5


# Event stream


async def test_stream_starts_with_connected_then_typed_events() -> None:
    fake = FakeAriTransport()
    client = client_for(fake)
    fake.push(load("stasis_start.json"), load("unknown_channel_dialplan.json"), load("stasis_end.json"))
    async with contextlib.aclosing(client.events()) as stream:
        items = await take(stream, 4)
        assert client.connected
    assert kinds(items) == ["Connected", "StasisStart", "UnknownEvent", "StasisEnd"]
    assert items[0] == Connected(reconnected=False)
    assert isinstance(items[1], StasisStart) and items[1].channel.id == CHAN
    assert fake.sessions == [["pbx"]]
    # Leaving the stream closes the WebSocket session.
    assert fake.open_sessions == 0


async def test_connected_comes_before_any_event() -> None:
    # The controller may only place calls into Stasis once registered: Connected must not wait
    # for a first event that a quiet system never sends.
    fake = FakeAriTransport()
    async with contextlib.aclosing(client_for(fake).events()) as stream:
        assert await take(stream, 1) == [Connected(reconnected=False)]


async def test_reconnects_after_two_drops_and_reports_each_outage() -> None:
    fake = FakeAriTransport()
    sleeps = Sleeps()
    client = client_for(fake, sleep=sleeps, backoff=Backoff(initial=1.0, factor=2.0, maximum=30.0, jitter=0.0))
    fake.push(load("stasis_start.json"))
    fake.drop()
    fake.push(load("channel_state_change_up.json"))
    fake.drop(AriUnavailable("events: connection reset"))
    fake.push(load("stasis_end.json"))
    async with contextlib.aclosing(client.events()) as stream:
        items = await take(stream, 8)
    assert kinds(items) == [
        "Connected",
        "StasisStart",
        "Disconnected",
        "Connected",
        "ChannelStateChange",
        "Disconnected",
        "Connected",
        "StasisEnd",
    ]
    assert items[0] == Connected(reconnected=False)
    assert items[2] == Disconnected(error="events WebSocket closed by Asterisk", retry_in=1.0)
    assert items[3] == Connected(reconnected=True)
    assert isinstance(items[5], Disconnected) and "connection reset" in items[5].error
    assert items[6] == Connected(reconnected=True)
    assert len(fake.sessions) == 3 and all(apps == ["pbx"] for apps in fake.sessions)


async def test_backoff_grows_capped_and_one_disconnected_per_outage() -> None:
    fake = FakeAriTransport()
    sleeps = Sleeps()
    client = client_for(fake, sleep=sleeps, backoff=Backoff(initial=0.5, factor=2.0, maximum=3.0, jitter=0.0))
    fake.refuse(*(AriUnavailable(f"refused {i}") for i in range(5)))
    fake.push(load("stasis_start.json"))
    async with contextlib.aclosing(client.events()) as stream:
        items = await take(stream, 3)
    assert kinds(items) == ["Disconnected", "Connected", "StasisStart"]
    assert items[0] == Disconnected(error="refused 0", retry_in=0.5)
    # Never connected before, so this is not a reconnect for the controller's bookkeeping.
    assert items[1] == Connected(reconnected=False)
    assert sleeps.delays == [0.5, 1.0, 2.0, 3.0, 3.0]


async def test_backoff_resets_after_a_session_that_stayed_up() -> None:
    now = [0.0]
    fake = FakeAriTransport()
    sleeps = Sleeps()
    client = client_for(
        fake,
        sleep=sleeps,
        clock=lambda: now[0],
        backoff=Backoff(initial=1.0, factor=2.0, maximum=60.0, jitter=0.0, reset_after=30.0),
    )
    fake.refuse(AriUnavailable("a"), AriUnavailable("b"))
    async with contextlib.aclosing(client.events()) as stream:
        await take(stream, 2)  # Disconnected, Connected after two refusals
        now[0] = 100.0  # the session lasted 100 s
        fake.drop()
        fake.refuse(AriUnavailable("c"))
        await take(stream, 2)  # Disconnected, Connected
        fake.drop()  # this one lasted 0 s: no reset
        await take(stream, 2)
    assert sleeps.delays == [1.0, 2.0, 1.0, 2.0, 4.0]


def test_backoff_delay_jitter_stays_in_range() -> None:
    b = Backoff(initial=1.0, factor=2.0, maximum=10.0, jitter=0.5)
    assert b.delay(0, 0.0) == 1.0
    assert b.delay(0, 0.999) == pytest.approx(0.5005)
    assert b.delay(3, 0.0) == 8.0
    assert b.delay(4, 0.0) == 10.0
    assert 5.0 <= b.delay(10_000, 0.99) <= 10.0


async def test_application_replaced_ends_the_stream_without_reconnecting() -> None:
    fake = FakeAriTransport()
    client = client_for(fake)
    fake.push(load("stasis_start.json"), load("application_replaced.json"), load("stasis_end.json"))
    items: list[StreamItem] = []
    async with asyncio.timeout(5):
        async for item in client.events():
            items.append(item)
    assert kinds(items) == ["Connected", "StasisStart", "ApplicationReplaced"]
    assert not client.connected
    assert len(fake.sessions) == 1 and fake.open_sessions == 0


async def test_run_events_returns_the_application_replaced() -> None:
    fake = FakeAriTransport()
    client = client_for(fake)
    fake.push(load("stasis_start.json"))
    fake.drop()
    fake.push(load("application_replaced.json"))
    seen: list[StreamItem] = []

    async def handler(item: StreamItem) -> None:
        seen.append(item)

    async with asyncio.timeout(5):
        replaced = await client.run_events(handler)
    assert isinstance(replaced, ApplicationReplaced)
    assert kinds(seen) == ["Connected", "StasisStart", "Disconnected", "Connected", "ApplicationReplaced"]


async def test_run_events_stops_on_a_handler_error_and_closes_the_session() -> None:
    fake = FakeAriTransport()
    client = client_for(fake)
    fake.push(load("stasis_start.json"))

    async def handler(item: StreamItem) -> None:
        if isinstance(item, StasisStart):
            raise RuntimeError("controller bug")

    with pytest.raises(RuntimeError, match="controller bug"):
        async with asyncio.timeout(5):
            await client.run_events(handler)
    assert fake.open_sessions == 0


@pytest.mark.parametrize("status", [401, 403, 400])
async def test_refused_handshake_for_good_raises(status: int) -> None:
    fake = FakeAriTransport()
    sleeps = Sleeps()
    fake.refuse(AriStatusError(status, "Authentication required"))
    stream = client_for(fake, sleep=sleeps).events()
    with pytest.raises(AriStatusError) as info:
        async with asyncio.timeout(5):
            await anext(stream)
    assert info.value.status == status and sleeps.delays == []


async def test_handshake_404_or_503_is_retried() -> None:
    # While Asterisk starts, its HTTP server answers before res_ari is loaded.
    fake = FakeAriTransport()
    fake.refuse(AriNotFound(404, "Not Found"), AriStatusError(503, "Service Unavailable"))
    async with contextlib.aclosing(client_for(fake).events()) as stream:
        items = await take(stream, 2)
    assert kinds(items) == ["Disconnected", "Connected"]


async def test_an_unreadable_event_is_skipped() -> None:
    fake = FakeAriTransport()
    broken = load("stasis_start.json")
    del broken["channel"]
    fake.push(broken, load("stasis_end.json"))
    async with contextlib.aclosing(client_for(fake).events()) as stream:
        items = await take(stream, 2)
    assert kinds(items) == ["Connected", "StasisEnd"]
    assert isinstance(items[1], StasisEnd)


async def test_cancelling_the_consumer_closes_the_session() -> None:
    fake = FakeAriTransport()
    client = client_for(fake)
    seen: list[StreamItem] = []

    async def consume() -> None:
        async for item in client.events():
            seen.append(item)

    task = asyncio.create_task(consume())
    await fake.wait_sessions(1)
    fake.push({"type": "SomethingNew", "application": "pbx"})
    async with asyncio.timeout(5):
        while len(seen) < 2:
            await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert isinstance(seen[1], UnknownEvent)
    assert fake.open_sessions == 0
