"""AriClient against the embedded real Asterisk 22: the assumptions the fakes encode."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ari_app.ari import (
    ApplicationReplaced,
    AriClient,
    AriNotFound,
    AriStatusError,
    ChannelDestroyed,
    ChannelEnteredBridge,
    Connected,
    Dial,
    Event,
    HttpAriTransport,
    StasisStart,
    StreamItem,
    parse_event,
)
from devstack.stack import Stack

pytestmark = pytest.mark.stack


def transport(stack: Stack, password: str | None = None) -> HttpAriTransport:
    s = stack.settings
    return HttpAriTransport(s.ari_url, s.ari_user, password or s.ari_password)


async def test_rest_info_and_errors(stack: Stack) -> None:
    async with transport(stack) as t:
        client = AriClient(t, "pbx-ari-test")
        info = await client.asterisk_info()
        assert info.system is not None and info.system.version.startswith("22.")
        assert info.status is not None and info.status.startup_time.tzinfo is not None
        with pytest.raises(AriNotFound) as gone:
            await client.channels.answer("no-such-channel")
        assert gone.value.message == "Channel not found"
        bridge = await client.bridges.create(name="probe", bridge_id="ari-test-bridge")
        assert (bridge.id, bridge.bridge_type, bridge.channels) == ("ari-test-bridge", "mixing", ())
        await client.bridges.destroy(bridge.id)
    async with transport(stack, password="wrong") as t:
        with pytest.raises(AriStatusError) as refused:
            await AriClient(t, "pbx-ari-test").channels.list()
        assert refused.value.status == 401


async def test_second_connection_replaces_the_app_and_the_first_stops(stack: Stack) -> None:
    async with transport(stack) as t1, transport(stack) as t2:
        first, second = AriClient(t1, "pbx-ari-replace"), AriClient(t2, "pbx-ari-replace")
        async with contextlib.aclosing(first.events()) as s1, asyncio.timeout(10):
            assert await anext(s1) == Connected(reconnected=False)
            async with contextlib.aclosing(second.events()) as s2:
                assert await anext(s2) == Connected(reconnected=False)
                items = [item async for item in s1]
        assert len(items) == 1 and isinstance(items[0], ApplicationReplaced)
        assert items[0].application == "pbx-ari-replace"
        assert not first.connected


async def test_originate_bridge_and_hangup_through_the_dialplan(without_controller: Stack, tmp_path: Path) -> None:
    """A Local channel pair: ;1 is originated into our app, ;2 runs pbx-stasis and enters Stasis
    like a phone's call would (the stack's controller is stopped: this test takes its app). Every
    raw payload must parse; PBX_ARI_CAPTURE_DIR keeps them."""
    stack = without_controller
    app = stack.settings.ari_app
    raw: list[dict[str, Any]] = []
    try:
        await _call_flow(stack, app, raw)
    finally:
        capture = os.environ.get("PBX_ARI_CAPTURE_DIR")
        if capture:
            for i, payload in enumerate(raw):
                name = f"real_{i:02d}_{payload['type']}.json"
                (Path(capture) / name).write_text(json.dumps(payload, indent=2) + "\n")
    for payload in raw:
        parse_event(payload)


async def _call_flow(stack: Stack, app: str, raw: list[dict[str, Any]]) -> None:
    async with transport(stack) as t:
        client = AriClient(_Recording(t, raw), app)
        async with contextlib.aclosing(client.events()) as stream, asyncio.timeout(20):
            assert await anext(stream) == Connected(reconnected=False)
            # The controller that had this app set an event filter, which Asterisk keeps with the
            # app: this flow wants every event type.
            await client.applications.filter()
            # The caller: ;2 of a Local pair runs pbx-stasis and arrives like a phone's call.
            await client.channels.originate(
                "Local/2000@pbx-stasis", app_args=["origin"], channel_id="ari-t-a1", other_channel_id="ari-t-a2"
            )
            caller = await _next_of(stream, StasisStart, lambda e: e.channel.id == "ari-t-a2")
            assert caller.args == ("2000",)
            assert caller.channel.dialplan is not None and caller.channel.dialplan.context == "pbx-stasis"
            await client.channels.answer("ari-t-a2")
            # The callee leg, as the controller places it: create, then dial with the caller.
            callee = await client.channels.create(
                "Local/3000@pbx-stasis", app_args=["leg"], channel_id="ari-t-b1", other_channel_id="ari-t-b2"
            )
            assert callee.id == "ari-t-b1"
            # create returns before the channel's own thread has put it in Stasis: dial only
            # after its StasisStart (a dial before it is refused with 409, seen here under load).
            await _next_of(stream, StasisStart, lambda e: e.channel.id == "ari-t-b1")
            await client.channels.dial("ari-t-b1", caller="ari-t-a2", timeout=10)
            await _next_of(stream, StasisStart, lambda e: e.channel.id == "ari-t-b2")
            await client.channels.answer("ari-t-b2")
            answered = await _next_of(stream, Dial, lambda e: e.peer.id == "ari-t-b1" and e.dialstatus == "ANSWER")
            # Even with caller=, Dial events of a leg dialed over ARI carry no caller (and the
            # dialstring only in the first one): the controller must know its legs by peer id.
            assert answered.caller is None
            bridge = await client.bridges.create(bridge_id="ari-t-bridge")
            await client.bridges.add_channel(bridge.id, ["ari-t-a2", "ari-t-b1"])
            # addChannel answers before the channels are in: each joins on its own thread.
            for _ in range(2):
                await _next_of(stream, ChannelEnteredBridge, lambda e: e.bridge.id == bridge.id)
            assert set((await client.bridges.get(bridge.id)).channels) == {"ari-t-a2", "ari-t-b1"}
            await client.channels.hangup("ari-t-a2", reason="normal")
            destroyed = await _next_of(stream, ChannelDestroyed, lambda e: e.channel.id == "ari-t-a2")
            assert destroyed.cause == 16
            await client.bridges.destroy(bridge.id)
            for leftover in await client.channels.list():
                if leftover.id.startswith("ari-t-"):
                    with contextlib.suppress(AriNotFound):
                        await client.channels.hangup(leftover.id)


E = TypeVar("E", bound=Event)


async def _next_of(
    stream: AsyncGenerator[StreamItem, None], kind: type[E], where: Callable[[E], bool] = lambda e: True
) -> E:
    async for item in stream:
        if isinstance(item, kind) and where(item):
            return item
    raise AssertionError(f"stream ended before a {kind.__name__}")


class _Recording:
    """Passes through to a transport, keeping every raw event."""

    def __init__(self, inner: HttpAriTransport, raw: list[dict[str, Any]]) -> None:
        self._inner = inner
        self._raw = raw
        self.request = inner.request

    async def events(
        self, app: str | Sequence[str], *, on_open: Callable[[], None] | None = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        async with contextlib.aclosing(self._inner.events(app, on_open=on_open)) as inner:
            async for event in inner:
                self._raw.append(event)
                yield event
