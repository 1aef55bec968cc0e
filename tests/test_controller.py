"""The controller on a fake ARI transport: which requests each event leads to.

The real-stack behaviour is in test_controller_stack.py; here every branch is driven precisely,
with the routing lookup replaced by an in-memory tenant.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from ari_app.ari import AriClient, AriNotFound, AriUnavailable, Channel, FakeAriTransport, FakeRequest
from ari_app.controller import controller as controller_module
from ari_app.controller.controller import Controller, endpoint_of
from routing.lookup import CallData, Routed
from routing.model import directory_from_config
from routing.stage1 import CallRequest, build_tree

TENANT = {
    "extensions": {
        "1001": {"type": "simple", "name": "Alice", "endpoints": ["1001"]},
        "1002": {"type": "simple", "name": "Bob", "endpoints": ["1002"], "call_waiting": False},
        "1003": {"type": "simple", "name": "Carol", "endpoints": ["1003"]},
        "2000": {
            "type": "group",
            "name": "Team",
            "short_name": "TEAM",
            "ranks": [
                {"mode": "default", "members": ["1002"]},
                {"mode": "next", "delay_ms": 50, "members": ["1003"]},
            ],
        },
        "2001": {"type": "group", "name": "Pair", "ranks": [{"mode": "default", "members": ["1002", "1003"]}]},
        "1005": {"type": "simple", "name": "Eve", "endpoints": ["1005"]},
        "1006": {"type": "simple", "name": "Desk", "endpoints": ["1005", "1006"], "call_waiting": False},
        "2003": {
            "type": "group",
            "name": "Slow",
            "ranks": [
                {"mode": "default", "members": ["1002"]},
                {"mode": "next", "delay_ms": 60_000, "members": ["1003"]},
            ],
        },
        "2002": {
            "type": "group",
            "name": "Chain",
            "ranks": [
                {"mode": "default", "members": ["1003"]},
                {"mode": "next", "delay_ms": 10, "members": ["1005"]},
                {"mode": "next", "delay_ms": 10, "members": ["1006"]},
            ],
        },
    }
}
CONTACTS = {"1002": ["c1002"], "1003": ["c1003"], "1005": ["c1005"], "1006": ["c1006"]}
URIS = {
    "c1002": "sip:1002@127.0.0.1:5062^3Btransport=UDP",
    "c1003": "sip:1003@127.0.0.1:5063",
    "c1005": "sip:1005@127.0.0.1:5065",
    "c1006": "sip:1006@127.0.0.1:5066",
}


class FakeLookup:
    async def route(self, endpoint_id: str, caller_number: str, caller_name: str, called: str) -> Routed:
        name, _, domain = endpoint_id.partition("@")
        directory = directory_from_config("t", TENANT)
        request = CallRequest("t", caller_number, called, endpoint=name, callername=caller_name)
        tree = build_tree(directory, request)
        return Routed(tree.status, domain, request, CallData(directory, CONTACTS, domain, contact_uris=URIS), tree)


def channel(cid: str, endpoint: str = "1001@t.example", number: str = "1001", name: str = "Alice") -> dict[str, Any]:
    return {
        "id": cid,
        "name": f"PJSIP/{endpoint}-0000000{len(cid) % 10}",
        "state": "Ring",
        "caller": {"name": name, "number": number},
        "dialplan": {"context": "pbx-stasis", "exten": "2000", "priority": 1, "app_name": "Stasis", "app_data": "pbx"},
    }


def stasis_start(cid: str, *args: str, **kw: Any) -> dict[str, Any]:
    return {"type": "StasisStart", "application": "pbx", "args": list(args), "channel": channel(cid, **kw)}


def destroyed(cid: str, cause: int) -> dict[str, Any]:
    return {"type": "ChannelDestroyed", "application": "pbx", "cause": cause, "channel": channel(cid)}


class Rig:
    def __init__(self) -> None:
        self.fake = FakeAriTransport(default=None)
        self.channels: list[dict[str, Any]] = []
        self.bridges: list[dict[str, Any]] = []
        self.fake.route("GET", "/channels", lambda r: self.channels)
        self.fake.route("GET", "/bridges", lambda r: self.bridges)
        self.fake.route("GET", "/endpoints/PJSIP", [])
        self.fake.route("POST", "/channels", self._originate)
        self.fake.route("POST", "/bridges", lambda r: {"id": r.params["bridgeId"], "bridge_type": "mixing"})
        self.controller = Controller(AriClient(self.fake, "pbx"), FakeLookup())

    @staticmethod
    def _originate(r: FakeRequest) -> dict[str, Any]:
        return {"id": r.params["channelId"], "name": "PJSIP/x-1", "state": "Down"}

    def originates(self) -> list[FakeRequest]:
        return self.fake.calls("POST", "/channels")

    def hangups(self, cid: str) -> list[FakeRequest]:
        return self.fake.calls("DELETE", f"/channels/{cid}")

    async def until(self, what: str, probe: Callable[[], Any], timeout: float = 2.0) -> Any:
        async with asyncio.timeout(timeout):
            while not (value := probe()):
                await asyncio.sleep(0.001)
        assert value, what
        return value


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = Rig()
    task = asyncio.create_task(r.controller.run())
    await r.fake.wait_sessions(1)
    await r.until("subscribed", lambda: r.fake.calls("GET", "/bridges"))
    try:
        yield r
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_call_rings_the_first_rank_then_adds_the_next_on_its_timer(rig: Rig) -> None:
    rig.fake.push(stasis_start("A", "2000"))
    first = await rig.until("the first ring", rig.originates)
    assert not rig.fake.calls("POST", "/channels/A/ring")  # nothing rings yet
    leg_id = first[0].params["channelId"]
    ringing = {"type": "ChannelStateChange", "application": "pbx", "channel": channel(leg_id) | {"state": "Ringing"}}
    for _ in range(2):  # the app's copy and the endpoint subscription's: one 180
        rig.fake.push(ringing)
    await rig.until("a 180 to the caller", lambda: rig.fake.calls("POST", "/channels/A/ring"))
    p = first[0].params
    assert p["endpoint"] == "PJSIP/1002@t.example/sip:1002@127.0.0.1:5062;transport=UDP"
    assert p["callerId"] == '"[TEAM] Alice" <1001>'
    leg = p["appArgs"].split(",")
    assert (p["app"], leg[:2], p["channelId"], p["timeout"], p["originator"]) == (
        "pbx", ["leg", "A"], f"A-l{leg[2]}", "-1", "A"
    )  # fmt: skip
    both = await rig.until("the NEXT rank after 50 ms", lambda: len(rig.originates()) == 2 and rig.originates())
    assert both[1].params["endpoint"].startswith("PJSIP/1003@t.example/sip:1003@")
    assert len(rig.fake.calls("POST", "/channels/A/ring")) == 1


async def test_an_answer_bridges_the_caller_in_a_mixing_bridge_and_stops_the_other_legs(rig: Rig) -> None:
    rig.fake.push(stasis_start("A", "2001"))
    legs = await rig.until("two rings", lambda: len(rig.originates()) == 2 and rig.originates())
    ids = [leg.params["channelId"] for leg in legs]
    rig.fake.push(stasis_start(ids[1], "leg", "A", ids[1].rsplit("l", 1)[1], endpoint="1003@t.example"))
    await rig.until("the bridge", lambda: rig.fake.calls("POST", "/bridges/conf-A/addChannel"))
    assert rig.fake.calls("POST", "/bridges")[0].params == {"type": "mixing", "name": "A", "bridgeId": "conf-A"}
    assert rig.fake.calls("POST", "/channels/A/answer")
    assert rig.fake.calls("POST", "/bridges/conf-A/addChannel")[0].params["channel"] == f"A,{ids[1]}"
    stop = await rig.until("the other leg stopped", lambda: rig.hangups(ids[0]))
    assert stop[0].params == {"reason": "answered_elsewhere"}
    # The caller hangs up: one party left, the conference ends.
    rig.fake.push(destroyed("A", 16))
    await rig.until("the bridge destroyed", lambda: rig.fake.calls("DELETE", "/bridges/conf-A"))
    assert rig.hangups(ids[1])
    assert rig.controller.conferences == {}


async def test_a_leg_that_reaches_stasis_after_its_up_event_is_still_bridged(rig: Rig) -> None:
    rig.fake.push(stasis_start("A", "1002"))
    [leg] = await rig.until("the ring", rig.originates)
    leg_id = leg.params["channelId"]
    up = {"type": "ChannelStateChange", "application": "pbx", "channel": channel(leg_id) | {"state": "Up"}}
    rig.fake.push(up)
    await rig.until("the caller answered", lambda: rig.fake.calls("POST", "/channels/A/answer"))
    # The engine has decided (answered) by now; the leg's StasisStart must still find its call.
    rig.fake.push(stasis_start(leg_id, "leg", "A", leg_id.rsplit("l", 1)[1], endpoint="1002@t.example"))
    added = await rig.until("the bridge", lambda: rig.fake.calls("POST", "/bridges/conf-A/addChannel"))
    assert added[0].params["channel"] == f"A,{leg_id}"
    assert not rig.hangups(leg_id)


async def test_busy_legs_end_the_call_busy(rig: Rig) -> None:
    rig.fake.push(stasis_start("A", "2001"))
    legs = await rig.until("two rings", lambda: len(rig.originates()) == 2 and rig.originates())
    for leg in legs:
        rig.fake.push(destroyed(leg.params["channelId"], 17))
    hangup = await rig.until("the caller hung up", lambda: rig.hangups("A"))
    assert hangup[0].params == {"reason_code": "17"}
    assert rig.controller.calls == {}


async def test_caller_hangup_stops_every_leg(rig: Rig) -> None:
    rig.fake.push(stasis_start("A", "2001"))
    legs = await rig.until("two rings", lambda: len(rig.originates()) == 2 and rig.originates())
    rig.fake.push({"type": "ChannelHangupRequest", "application": "pbx", "channel": channel("A")})
    for cid in [leg.params["channelId"] for leg in legs]:
        await rig.until(f"{cid} stopped", lambda: rig.hangups(cid))  # noqa: B023 (awaited at once)
    assert not rig.hangups("A")


async def test_a_caller_entering_stasis_from_its_h_extension_is_no_new_call(rig: Rig) -> None:
    rig.fake.push(stasis_start("A", "2001"))
    legs = await rig.until("two rings", lambda: len(rig.originates()) == 2 and rig.originates())
    for leg in legs:
        rig.fake.push(destroyed(leg.params["channelId"], 17))
    await rig.until("the caller hung up", lambda: rig.hangups("A"))
    h = stasis_start("A", "h")
    h["channel"]["dialplan"]["exten"] = "h"
    rig.fake.push(h)
    rig.fake.push(stasis_start("B", "9999"))  # events are handled in order: once B is refused, A's h was seen
    await rig.until("B refused", lambda: rig.hangups("B"))
    assert len(rig.hangups("A")) == 1 and "A" not in rig.controller._arriving
    assert len(rig.originates()) == 2


async def test_unknown_number_is_refused_with_404_cause(rig: Rig) -> None:
    rig.fake.push(stasis_start("A", "9999"))
    hangup = await rig.until("refused", lambda: rig.hangups("A"))
    assert hangup[0].params == {"reason_code": "1"}
    assert not rig.originates()


async def test_a_user_on_the_phone_without_call_waiting_is_busy(rig: Rig) -> None:
    rig.fake.push(
        {
            "type": "EndpointStateChange",
            "application": "pbx",
            "endpoint": {"technology": "PJSIP", "resource": "1002@t.example", "state": "online", "channel_ids": ["X"]},
        },
        stasis_start("A", "1002"),
    )
    hangup = await rig.until("busy", lambda: rig.hangups("A"))
    assert hangup[0].params == {"reason_code": "17"}
    assert not rig.originates()


async def test_the_calls_own_ringing_legs_never_make_a_later_rank_busy(rig: Rig) -> None:
    # 1006 (call waiting off) shares endpoint 1005 with the rank before it, still ringing: the
    # engine knows that device rang, so only 1006's own device is added, as the simulator does.
    rig.fake.push(stasis_start("A", "2002"))
    rings = await rig.until("three rings", lambda: len(rig.originates()) == 3 and rig.originates())
    assert [r.params["endpoint"].split("/")[1] for r in rings] == ["1003@t.example", "1005@t.example", "1006@t.example"]
    assert not rig.hangups("A")


async def test_an_answer_for_a_call_already_decided_is_hung_up(rig: Rig) -> None:
    rig.fake.push(stasis_start("Z-l9", "leg", "Z", "9", endpoint="1002@t.example"))
    await rig.until("hung up", lambda: rig.hangups("Z-l9"))


def _first_originate_times_out(rig: Rig) -> None:
    def originate(r: FakeRequest) -> dict[str, Any]:
        if len(rig.originates()) == 1:
            raise AriUnavailable("POST /channels: no answer in 10 s")
        return Rig._originate(r)

    rig.fake.route("POST", "/channels", originate)


async def test_an_originate_that_timed_out_without_a_channel_fails_its_leg_at_once(rig: Rig) -> None:
    # A timed-out POST may or may not have been applied: the controller asks for the channel id it
    # chose, and a 404 means the leg never existed.
    _first_originate_times_out(rig)

    def no_channel(r: FakeRequest) -> None:
        raise AriNotFound(404, "Channel not found")

    rig.fake.route("GET", "/channels/{channel_id}", no_channel)
    rig.fake.push(stasis_start("A", "2003"))
    legs = await rig.until(
        "the next rank at once, not in 60 s", lambda: len(rig.originates()) == 2 and rig.originates()
    )
    first = legs[0].params["channelId"]
    assert rig.fake.calls("GET", f"/channels/{first}")
    assert legs[1].params["endpoint"].startswith("PJSIP/1003@t.example/")
    assert rig.controller.metrics.value("pbx_legs_total", outcome="failed") == 1


async def test_an_originate_that_timed_out_but_was_applied_keeps_its_leg(rig: Rig) -> None:
    _first_originate_times_out(rig)
    rig.fake.route("GET", "/channels/{channel_id}", lambda r: channel(r.path_params["channel_id"]))
    rig.fake.push(stasis_start("A", "2003"))
    [leg] = await rig.until("the ring", rig.originates)
    leg_id = leg.params["channelId"]
    await rig.until("the check", lambda: rig.fake.calls("GET", f"/channels/{leg_id}"))
    # The leg rings on: its own end (busy here) is what moves the call on.
    rig.fake.push(destroyed(leg_id, 17))
    await rig.until("the next rank after the leg's end", lambda: len(rig.originates()) == 2)
    assert not rig.hangups(leg_id)


async def test_an_originate_that_cannot_be_checked_fails_its_leg_and_hangs_the_channel_up(rig: Rig) -> None:
    _first_originate_times_out(rig)

    def down(r: FakeRequest) -> None:
        raise AriUnavailable("GET: no answer in 10 s")

    rig.fake.route("GET", "/channels/{channel_id}", down)
    rig.fake.push(stasis_start("A", "2003"))
    legs = await rig.until("the next rank now", lambda: len(rig.originates()) == 2 and rig.originates())
    first = legs[0].params["channelId"]
    # Should the request have been applied after all, the channel must not ring unfollowed; and
    # when it reaches Stasis anyway, nobody would bridge it.
    await rig.until("the unknown leg hung up", lambda: rig.hangups(first))
    rig.fake.push(stasis_start(first, "leg", "A", first.rsplit("l", 1)[1], endpoint="1002@t.example"))
    await rig.until("hung up again on its StasisStart", lambda: len(rig.hangups(first)) == 2)
    assert not rig.fake.calls("POST", "/bridges")


async def test_the_app_gets_only_the_event_types_the_controller_handles(rig: Rig) -> None:
    [request] = rig.fake.calls("PUT", "/applications/pbx/eventFilter")
    allowed = {entry["type"] for entry in request.json["allowed"]}
    assert allowed == {
        "ChannelTransfer",
        "ChannelHold",
        "ChannelUnhold",
        "StasisStart",
        "StasisEnd",
        "ChannelStateChange",
        "ChannelHangupRequest",
        "ChannelDestroyed",
        "EndpointStateChange",
        "ContactStatusChange",
        "ApplicationReplaced",
    }
    assert request.json["disallowed"] == []


async def test_a_reconnect_reaps_orphans_but_not_the_legs_of_a_ringing_call(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(controller_module, "ORPHAN_GRACE_S", 0.01)
    rig.fake.push(stasis_start("A", "1002"))
    [leg] = await rig.until("the ring", rig.originates)
    leg_id = leg.params["channelId"]
    rig.channels = [channel("A"), {**channel(leg_id, endpoint="1002@t.example"), "dialplan": None}, channel("OLD")]
    rig.fake.drop()
    await rig.until("the orphan reaped after the reconnect", lambda: rig.hangups("OLD"))
    # The call's own channels are known by their ids: the caller and its ringing leg stay.
    assert not rig.hangups(leg_id) and not rig.hangups("A")
    assert set(rig.controller.calls) == {"A"}


async def test_channels_left_by_an_earlier_controller_are_reaped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(controller_module, "ORPHAN_GRACE_S", 0.01)
    r = Rig()
    r.channels = [channel("OLD"), {**channel("OLD-l2", endpoint="1002@t.example"), "dialplan": None}]
    r.bridges = [{"id": "conf-B", "bridge_type": "mixing", "channels": ["B", "B-l2"]}]
    task = asyncio.create_task(r.controller.run())
    try:
        await r.until("caller reaped", lambda: r.hangups("OLD"))
        await r.until("leg reaped", lambda: r.hangups("OLD-l2"))
        assert r.hangups("OLD")[0].params == {"reason_code": "34"}  # the caller gets 503
        assert set(r.controller.conferences) == {"B"}  # an answered call is adopted, not ended
        assert not r.hangups("B") and not r.hangups("B-l2")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_half_calls_left_by_an_earlier_controller_end_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller who hung up while no controller ran left the callee alone in the conference, and
    the legs still ringing for a caller who is gone: no grace, the first look ends them. Only a
    caller still in Stasis waits out the grace (its StasisStart may be on its way)."""
    monkeypatch.setattr(controller_module, "ORPHAN_GRACE_S", 60.0)
    r = Rig()
    leg = {**channel("GONE-l1", endpoint="1002@t.example"), "dialplan": None}
    r.channels = [channel("WAITING"), leg, {**channel("B-l2", endpoint="1002@t.example"), "dialplan": None}]
    r.bridges = [
        {"id": "conf-B", "bridge_type": "mixing", "channels": ["B-l2"]},
        {"id": "conf-EMPTY", "bridge_type": "mixing", "channels": []},
    ]
    task = asyncio.create_task(r.controller.run())
    try:
        await r.until("the lone callee hung up", lambda: r.hangups("B-l2"))
        await r.until("its bridge destroyed", lambda: r.fake.calls("DELETE", "/bridges/conf-B"))
        await r.until("an empty conference destroyed", lambda: r.fake.calls("DELETE", "/bridges/conf-EMPTY"))
        await r.until("the ringing leg of a caller gone hung up", lambda: r.hangups("GONE-l1"))
        assert r.hangups("GONE-l1")[0].params == {"reason": "normal"}
        assert not r.hangups("WAITING")  # not before the grace
        assert not r.controller.conferences
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_reconnect_ends_a_conference_its_caller_left_while_events_were_down(rig: Rig) -> None:
    rig.fake.push(stasis_start("A", "1002"))
    [leg] = await rig.until("the ring", rig.originates)
    leg_id = leg.params["channelId"]
    rig.fake.push(
        stasis_start(leg_id, "leg", "A", "1"),
        {"type": "ChannelStateChange", "application": "pbx", "channel": {**channel(leg_id), "state": "Up"}},
    )
    await rig.until("bridged", lambda: rig.fake.calls("POST", "/bridges/conf-A/addChannel"))
    await rig.until("the conference is the controller's", lambda: "A" in rig.controller.conferences)
    # The caller hangs up while the WebSocket is down: the bridge holds the callee alone.
    rig.channels = [{**channel(leg_id, endpoint="1002@t.example"), "dialplan": None}]
    rig.bridges = [{"id": "conf-A", "bridge_type": "mixing", "channels": [leg_id]}]
    rig.fake.drop()
    await rig.until("the callee hung up", lambda: rig.hangups(leg_id))
    await rig.until("the bridge destroyed", lambda: rig.fake.calls("DELETE", "/bridges/conf-A"))
    await rig.until("the conference forgotten", lambda: not rig.controller.conferences)


def test_endpoint_of_a_pjsip_channel() -> None:
    ch = Channel.model_validate({"id": "1", "name": "PJSIP/1001@acme.example-0000002a", "state": "Up"})
    assert endpoint_of(ch) == "1001@acme.example"
    assert endpoint_of(Channel.model_validate({"id": "2", "name": "Local/x@y-0001;1", "state": "Up"})) is None


async def test_endpoint_watch_refused_on_a_fresh_node_is_retried_by_the_first_call() -> None:
    from ari_app.ari import AriStatusError

    r = Rig()
    answers = iter([AriStatusError(422, "Event source does not exist"), None])

    def subscribe(req: FakeRequest) -> None:
        answer = next(answers)
        if answer is not None:
            raise answer

    r.fake.route("POST", "/applications/pbx/subscription", subscribe)
    r.fake.route(
        "GET",
        "/endpoints/PJSIP",
        [{"technology": "PJSIP", "resource": "1002@t.example", "state": "online", "channel_ids": ["X"]}],
    )
    task = asyncio.create_task(r.controller.run())
    try:
        await r.until("connected", lambda: r.fake.calls("GET", "/bridges"))
        r.fake.push(stasis_start("A", "1002"))
        hangup = await r.until("busy: the watch came up with the call", lambda: r.hangups("A"))
        assert hangup[0].params == {"reason_code": "17"}
        assert len(r.fake.calls("POST", "/applications/pbx/subscription")) == 2
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_static_contact_asterisk_reports_unreachable_is_offline_and_the_fallback_dials(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    trunks = {
        "1001": {"type": "simple", "name": "Alice", "endpoints": ["1001"], "dialout": True},
        "0": {"type": "trunk", "name": "Main", "endpoints": ["carrier"], "fallback": ["8"], "outbound": {"strip": 1}},
        "8": {"type": "trunk", "name": "Backup", "endpoints": ["backup"], "outbound": {"prepend": "+"}},
    }
    qualified = {"qualify_frequency": "30"}
    endpoints = {
        "carrier": {"aor": {"contact": ["sip:127.0.0.2:5070"], **qualified}},
        "backup": {"aor": {"contact": ["sip:127.0.0.4:5070"], **qualified}},
    }
    monkeypatch.setitem(TENANT, "extensions", trunks)
    monkeypatch.setitem(TENANT, "endpoints", endpoints)
    rig.fake.push(
        {
            "type": "ContactStatusChange",
            "application": "pbx",
            "endpoint": {"technology": "PJSIP", "resource": "carrier@t.example", "state": "offline"},
            "contact_info": {"uri": "sip:127.0.0.2:5070", "contact_status": "Unreachable", "aor": "carrier@t.example"},
        }
    )
    await rig.until(
        "the report", lambda: not rig.controller.reachability.reachable("carrier@t.example", "sip:127.0.0.2:5070")
    )
    rig.fake.push(stasis_start("A", "0301234"))
    [leg] = await rig.until("the fallback's ring", rig.originates)
    # The backup's own rule on the number as dialed, in the request URI's user part.
    assert leg.params["endpoint"] == "PJSIP/backup@t.example/sip:+0301234@127.0.0.4:5070"
