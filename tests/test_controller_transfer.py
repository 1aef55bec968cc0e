"""Transfers and hold in the controller, on the fake ARI transport (the live ones: test_transfer_stack.py)."""

from __future__ import annotations

from typing import Any

import pytest
from test_controller import TENANT, Rig, channel, destroyed, rig, stasis_start

from ari_app.ari import AriNotFound, AriStatusError
from ari_app.controller import transfer as transfer_module
from ari_app.controller.conference import HOLD_TONE
from ari_app.controller.transfer import TransferOutcome

__all__ = ["rig"]  # the fixture, shared with test_controller

# An extension whose forward each test sets: it rings Eve's phone (1005) before forwarding.
FORWARDED: dict[str, Any] = {"type": "simple", "name": "Fwd", "endpoints": ["1005"]}


@pytest.fixture(autouse=True)
def quick_hangup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer_module, "TRANSFERER_HANGUP_S", 0.01)


@pytest.fixture(autouse=True)
def playbacks(rig: Rig) -> None:
    def play(r: Any) -> dict[str, Any]:
        target = f"channel:{r.path_params['channel_id']}"
        return {"id": r.params["playbackId"], "media_uri": r.params["media"], "target_uri": target, "state": "queued"}

    rig.fake.route("POST", "/channels/{channel_id}/play", play)


def outcomes(r: Rig) -> list[TransferOutcome]:
    seen: list[TransferOutcome] = []
    original = r.controller.on_transfer

    def record(outcome: TransferOutcome) -> None:
        seen.append(outcome)
        original(outcome)

    r.controller.on_transfer = record  # type: ignore[method-assign]
    return seen


async def answered_call(r: Rig, caller: str = "A", number: str = "1002") -> str:
    """``caller`` (1001) calls ``number``; its one leg answers: the conference conf-<caller>."""
    r.fake.push(stasis_start(caller, number))
    [leg] = await r.until("the ring", lambda: [o for o in r.originates() if o.params["channelId"].startswith(caller)])
    leg_id: str = leg.params["channelId"]
    endpoint = f"{number}@t.example"
    r.fake.push(
        stasis_start(leg_id, "leg", caller, "1", endpoint=endpoint, number="1001"),
        {"type": "ChannelStateChange", "application": "pbx", "channel": {**channel(leg_id, endpoint), "state": "Up"}},
    )
    await r.until("bridged", lambda: r.fake.calls("POST", f"/bridges/conf-{caller}/addChannel"))
    await r.until("the conference is the controller's", lambda: caller in r.controller.conferences)
    return leg_id


def refer(source: dict[str, Any], destination: str = "", **refer_to: Any) -> dict[str, Any]:
    wanted: dict[str, Any] = {"destination": destination}
    if "protocol_id" in refer_to:
        wanted["protocol_id"] = refer_to.pop("protocol_id")
    return {
        "type": "ChannelTransfer",
        "application": "pbx",
        "refer_to": {"requested_destination": wanted, **refer_to},
        "referred_by": {"source_channel": source},
    }


def progress(r: Rig, channel_id: str) -> list[str]:
    return [q.params["states"] for q in r.fake.calls("POST", f"/channels/{channel_id}/transfer_progress")]


def transfer_rings(r: Rig) -> list[Any]:
    return [o for o in r.originates() if "-t" in o.params["channelId"]]


def answer(r: Rig, leg_id: str, endpoint: str) -> None:
    """The transfer's leg ``leg_id`` answers (its StasisStart and its Up)."""
    call_id, _, number = leg_id.rpartition("-l")
    r.fake.push(
        stasis_start(leg_id, "leg", call_id, number, endpoint=endpoint),
        {"type": "ChannelStateChange", "application": "pbx", "channel": {**channel(leg_id, endpoint), "state": "Up"}},
    )


async def test_a_blind_transfer_rings_the_target_as_the_transferer_and_swaps_it_in(rig: Rig) -> None:
    seen = outcomes(rig)
    bob = await answered_call(rig)
    rig.fake.push(refer(channel("A"), "1003"))
    [ring] = await rig.until("the target rings", lambda: transfer_rings(rig))
    target = ring.params["channelId"]
    assert target.startswith("A-t") and "-l" in target
    assert ring.params["endpoint"].startswith("PJSIP/1003@t.example/")
    assert ring.params["callerId"] == '"Alice" <1001>'  # the transferer's caller id rules
    assert ring.json["variables"]["PJSIP_TRANSFER_HANDLING()"] == "ari-only"
    assert progress(rig, "A") == ["channel_progress"]
    # The transferer hangs up at once (as phones do after the 202): Bob stays, alone for now.
    rig.fake.push(destroyed("A", 16))
    await rig.until("A gone", lambda: "A" not in rig.controller.conferences["A"].members)
    assert not rig.fake.calls("DELETE", "/bridges/conf-A")
    # Carol answers: she joins Bob.
    answer(rig, target, "1003@t.example")
    await rig.until("Carol bridged", lambda: [q for q in rig.fake.calls("POST", "/bridges/conf-A/addChannel")][1:])
    assert rig.controller.conferences["A"].members == {bob, target}
    await rig.until("reported", lambda: seen)
    assert seen[0].kind == "blind" and seen[0].result == "answered" and seen[0].answered_by == target
    assert rig.controller.metrics.value("pbx_transfers_total", kind="blind", result="answered") == 1
    # Carol's channel, moved into call A's conference, is known by it: her hangup ends it.
    rig.fake.push(destroyed(target, 16))
    await rig.until("the conference ends", lambda: rig.fake.calls("DELETE", "/bridges/conf-A"))
    assert rig.hangups(bob)


async def test_the_transferer_still_there_is_told_200_taken_out_and_hung_up(rig: Rig) -> None:
    bob = await answered_call(rig)
    rig.fake.push(refer(channel("A"), "1003"))
    [ring] = await rig.until("the target rings", lambda: transfer_rings(rig))
    target = ring.params["channelId"]
    answer(rig, target, "1003@t.example")
    await rig.until("taken out", lambda: rig.fake.calls("POST", "/bridges/conf-A/removeChannel"))
    assert progress(rig, "A") == ["channel_progress", "channel_answered"]
    await rig.until("hung up", lambda: rig.hangups("A"))
    assert rig.controller.conferences["A"].members == {bob, target}


async def test_a_transfer_to_an_unknown_number_is_declined_and_the_call_stays(rig: Rig) -> None:
    seen = outcomes(rig)
    bob = await answered_call(rig)
    rig.fake.push(refer(channel("A"), "9999"))
    await rig.until("declined", lambda: "channel_declined" in progress(rig, "A"))
    assert seen[0].result == "noroute"
    assert rig.controller.conferences["A"].members == {"A", bob}
    assert not rig.hangups("A") and not rig.hangups(bob)


async def test_a_transfer_nobody_answers_is_declined_and_the_call_stays(rig: Rig) -> None:
    bob = await answered_call(rig)
    rig.fake.push(refer(channel("A"), "1003"))
    [ring] = await rig.until("the target rings", lambda: transfer_rings(rig))
    rig.fake.push(destroyed(ring.params["channelId"], 17))  # busy
    await rig.until("declined", lambda: "channel_declined" in progress(rig, "A"))
    assert rig.controller.conferences["A"].members == {"A", bob}
    assert not rig.hangups("A")


async def test_a_transfer_by_the_callee_routes_as_the_extension_it_answered_for(rig: Rig) -> None:
    bob = await answered_call(rig)
    rig.fake.route("GET", f"/channels/{bob}/variable", {"value": "1002"})
    rig.fake.push(refer(channel(bob, "1002@t.example", number="1001"), "1003"))
    [ring] = await rig.until("the target rings", lambda: transfer_rings(rig))
    assert ring.params["callerId"] == '"Bob" <1002>'


async def test_an_attended_transfer_joins_the_two_remote_parties(rig: Rig) -> None:
    seen = outcomes(rig)
    bob = await answered_call(rig, "A", "1002")  # Alice - Bob
    carol = await answered_call(rig, "B", "1003")  # Alice again (channel B) - Carol
    event = refer(
        channel("A"),
        protocol_id="call-id-of-B",
        destination_channel=channel("B"),
        connected_channel=channel(carol, "1003@t.example"),
    )
    rig.fake.push(event)
    await rig.until("Carol joined Bob", lambda: carol in rig.controller.conferences["A"].members)
    assert [q.params["channel"] for q in rig.fake.calls("POST", "/bridges/conf-B/removeChannel")] == [carol]
    assert rig.fake.calls("POST", "/bridges/conf-A/addChannel")[-1].params["channel"] == carol
    assert progress(rig, "A") == ["channel_answered"]
    await rig.until("call B's conference closed", lambda: rig.fake.calls("DELETE", "/bridges/conf-B"))
    assert rig.hangups("B") and not rig.hangups(carol)
    await rig.until("the transferer hung up", lambda: rig.hangups("A"))
    assert rig.controller.conferences["A"].members == {bob, carol}
    assert seen[-1].kind == "attended" and seen[-1].result == "answered"
    # Carol is followed in call A now.
    rig.fake.push(destroyed(carol, 16))
    await rig.until("the conference ends", lambda: rig.fake.calls("DELETE", "/bridges/conf-A"))


async def test_an_attended_transfer_naming_no_call_of_ours_is_declined(rig: Rig) -> None:
    bob = await answered_call(rig)
    rig.fake.push(refer(channel("A"), protocol_id="elsewhere", destination_channel=channel("Z")))
    await rig.until("declined", lambda: progress(rig, "A") == ["channel_declined"])
    assert rig.controller.conferences["A"].members == {"A", bob}


async def test_progress_echoes_are_not_new_transfers(rig: Rig) -> None:
    await answered_call(rig)
    rig.fake.push(refer(channel("A"), "1003") | {"state": "channel_progress"})
    rig.fake.push(refer(channel("A"), "9999"))
    await rig.until("the real one declined", lambda: "channel_declined" in progress(rig, "A"))
    assert progress(rig, "A") == ["channel_progress", "channel_declined"]  # the second REFER's only
    assert not transfer_rings(rig)


def hold(cid: str, on: bool) -> dict[str, Any]:
    return {"type": "ChannelHold" if on else "ChannelUnhold", "application": "pbx", "channel": channel(cid)}


async def test_hold_plays_the_hold_tone_to_the_other_party_and_unhold_stops_it(rig: Rig) -> None:
    bob = await answered_call(rig)
    rig.fake.push(hold("A", True))
    [play] = await rig.until("the tone", lambda: rig.fake.calls("POST", f"/channels/{bob}/play"))
    assert play.params == {"media": HOLD_TONE, "playbackId": f"{bob}-hold"}
    assert not rig.fake.calls("POST", "/channels/A/play")
    rig.fake.push(hold("A", False))
    await rig.until("the tone stopped", lambda: rig.fake.calls("DELETE", f"/playbacks/{bob}-hold"))


async def test_in_a_conference_of_three_hold_affects_only_the_holder(rig: Rig) -> None:
    bob = await answered_call(rig)
    conf = rig.controller.conferences["A"]
    conf.members.add("A-p1")  # a third party
    rig.fake.push(hold("A", True))
    await rig.until("A holds", lambda: "A" in conf.on_hold)
    assert not [q for q in rig.fake.requests if q.path.endswith("/play")]
    # The third party leaves: Bob is alone with a held party now, and hears the tone.
    rig.fake.push(destroyed("A-p1", 16))
    await rig.until("the tone", lambda: rig.fake.calls("POST", f"/channels/{bob}/play"))


async def test_a_refer_seen_twice_starts_one_transfer(rig: Rig) -> None:
    await answered_call(rig)
    event = refer(channel("A"), "1003") | {"timestamp": "2026-12-03T11:24:21.779+0000"}
    rig.fake.push(event, event)
    await rig.until("the target rings", lambda: transfer_rings(rig))
    rig.fake.push(refer(channel("A"), "9999"))  # a later REFER is another one
    await rig.until("declined", lambda: "channel_declined" in progress(rig, "A"))
    assert len(transfer_rings(rig)) == 1


async def test_a_transfer_to_a_group_rings_it_rank_by_rank(rig: Rig) -> None:
    await answered_call(rig)
    rig.fake.push(refer(channel("A"), "2002"))  # Chain: 1003, then 1005, then 1006
    rings = await rig.until("two ranks", lambda: len(t := transfer_rings(rig)) >= 2 and t)
    assert [r.params["endpoint"].split("/")[1] for r in rings[:2]] == ["1003@t.example", "1005@t.example"]
    assert rings[0].json["variables"]["PBX_CALLED_NAME"] == "Chain"


async def test_the_party_being_transferred_hears_ringing_until_the_target_answers(rig: Rig) -> None:
    bob = await answered_call(rig)
    rig.fake.push(refer(channel("A"), "1003"))
    [ring] = await rig.until("the target rings", lambda: transfer_rings(rig))
    [tone] = rig.fake.calls("POST", f"/channels/{bob}/play")
    assert tone.params == {"media": "tone:ring", "playbackId": f"{bob}-transfer"}
    assert not rig.fake.calls("POST", "/channels/A/play")
    target = ring.params["channelId"]
    answer(rig, target, "1003@t.example")
    await rig.until("the tone stopped", lambda: rig.fake.calls("DELETE", f"/playbacks/{bob}-transfer"))


async def test_a_transfer_to_an_immediately_forwarded_extension_rings_the_forward(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(TENANT["extensions"], "1007", FORWARDED | {"forward": {"mode": "always", "to": "1003"}})
    seen = outcomes(rig)
    bob = await answered_call(rig)
    rig.fake.push(refer(channel("A"), "1007"))
    [ring] = await rig.until("the forward's target rings", lambda: transfer_rings(rig))
    assert ring.params["endpoint"].startswith("PJSIP/1003@t.example/")
    carol = ring.params["channelId"]
    answer(rig, carol, "1003@t.example")
    await rig.until("reported", lambda: seen)
    assert rig.controller.conferences["A"].members == {bob, carol}
    assert progress(rig, "A") == ["channel_progress", "channel_answered"]
    assert (seen[0].target, seen[0].result, seen[0].answered_by) == ("1007", "answered", carol)


async def test_a_transfer_to_an_extension_forwarded_on_busy_rings_the_forward_when_it_is_busy(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(TENANT["extensions"], "1007", FORWARDED | {"forward": {"mode": "busy", "to": "1003"}})
    seen = outcomes(rig)
    bob = await answered_call(rig)
    rig.fake.push(refer(channel("A"), "1007"))
    [first] = await rig.until("the extension rings", lambda: transfer_rings(rig))
    assert first.params["endpoint"].startswith("PJSIP/1005@t.example/")
    rig.fake.push(destroyed(first.params["channelId"], 17))  # busy
    [_, ring] = await rig.until(
        "the forward's target rings", lambda: len(transfer_rings(rig)) == 2 and transfer_rings(rig)
    )
    assert ring.params["endpoint"].startswith("PJSIP/1003@t.example/")
    assert progress(rig, "A") == ["channel_progress"]  # not declined on the first device's busy
    carol = ring.params["channelId"]
    answer(rig, carol, "1003@t.example")
    await rig.until("reported", lambda: seen)
    assert rig.controller.conferences["A"].members == {bob, carol}
    assert (seen[0].result, seen[0].answered_by) == ("answered", carol)


async def test_a_transfer_to_an_extension_forwarded_on_no_answer_rings_the_forward_after_the_delay(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(
        TENANT["extensions"], "1007", FORWARDED | {"forward": {"mode": "always", "to": "1003", "delay_ms": 30}}
    )
    seen = outcomes(rig)
    bob = await answered_call(rig)
    rig.fake.push(refer(channel("A"), "1007"))
    rings = await rig.until("both ring", lambda: len(transfer_rings(rig)) == 2 and transfer_rings(rig))
    assert [r.params["endpoint"].split("/")[1] for r in rings] == ["1005@t.example", "1003@t.example"]
    carol = rings[1].params["channelId"]
    answer(rig, carol, "1003@t.example")
    await rig.until("reported", lambda: seen)
    assert rig.controller.conferences["A"].members == {bob, carol}
    await rig.until("the first device stopped", lambda: rig.hangups(rings[0].params["channelId"]))


async def two_calls(r: Rig) -> tuple[str, str]:
    """Alice talks to Bob (call A), holds him, and calls Carol (call B): the attended transfer's start."""
    bob = await answered_call(r, "A", "1002")
    r.fake.push(hold("A", True))
    await r.until("Bob hears the hold tone", lambda: r.fake.calls("POST", f"/channels/{bob}/play"))
    carol = await answered_call(r, "B", "1003")
    return bob, carol


def replaces(carol: str, second: str = "B") -> dict[str, Any]:
    """Alice's REFER on her first call (channel A) naming her second call (channel ``second``)."""
    return refer(
        channel("A"),
        protocol_id=f"call-id-of-{second}",
        destination_channel=channel(second),
        connected_channel=channel(carol, "1003@t.example"),
    )


async def test_an_attended_transfer_given_up_leaves_the_first_call_as_it_was(rig: Rig) -> None:
    seen = outcomes(rig)
    bob, carol = await two_calls(rig)
    # Alice hangs up on Carol instead of transferring: call B ends, call A is untouched.
    rig.fake.push(destroyed("B", 16))
    await rig.until("call B over", lambda: rig.fake.calls("DELETE", "/bridges/conf-B"))
    assert rig.hangups(carol)
    conf = rig.controller.conferences["A"]
    assert (conf.members, conf.on_hold, conf.closed) == ({"A", bob}, {"A"}, False)
    assert not rig.fake.calls("DELETE", f"/playbacks/{bob}-hold")  # Bob still hears the hold tone
    assert not rig.hangups("A") and not rig.hangups(bob)
    # A REFER naming the call that ended changes nothing either.
    rig.fake.push(replaces(carol))
    await rig.until("declined", lambda: progress(rig, "A") == ["channel_declined"])
    assert (conf.members, conf.on_hold) == ({"A", bob}, {"A"})
    assert not rig.fake.calls("POST", "/bridges/conf-A/removeChannel")
    assert [(o.kind, o.result) for o in seen] == [("attended", "refused")]
    # Alice takes Bob off hold: they talk again.
    rig.fake.push(hold("A", False))
    await rig.until("the tone stopped", lambda: rig.fake.calls("DELETE", f"/playbacks/{bob}-hold"))


async def test_an_attended_transfer_naming_no_dialog_is_declined_and_both_calls_stay(rig: Rig) -> None:
    bob, carol = await two_calls(rig)
    # Replaces names a dialog Asterisk could not find: no destination channel in the event.
    rig.fake.push(refer(channel("A"), protocol_id="no-such-call-id"))
    await rig.until("declined", lambda: progress(rig, "A") == ["channel_declined"])
    assert rig.controller.conferences["A"].members == {"A", bob}
    assert rig.controller.conferences["B"].members == {"B", carol}
    assert not [q for q in rig.fake.requests if q.method == "DELETE" and q.path.startswith("/channels/")]


async def test_an_attended_transfer_that_fails_midway_puts_the_party_back_in_the_second_call(rig: Rig) -> None:
    seen = outcomes(rig)
    bob, carol = await two_calls(rig)

    def refuse(r: Any) -> None:
        raise AriStatusError(422, "Channel not in Stasis application")

    rig.fake.route("POST", "/bridges/conf-A/addChannel", refuse)
    rig.fake.push(replaces(carol))
    await rig.until("declined", lambda: progress(rig, "A") == ["channel_declined"])
    first, second = rig.controller.conferences["A"], rig.controller.conferences["B"]
    assert (first.members, first.on_hold, second.members) == ({"A", bob}, {"A"}, {"B", carol})
    assert rig.fake.calls("POST", "/bridges/conf-B/addChannel")[-1].params["channel"] == carol  # back with Alice
    assert not [q for q in rig.fake.requests if q.method == "DELETE" and q.path.startswith("/channels/")]
    assert [(o.kind, o.result) for o in seen] == [("attended", "failed")]
    # Carol's hangup is still call B's: it ends it (and only it).
    rig.fake.push(destroyed(carol, 16))
    await rig.until("call B over", lambda: rig.fake.calls("DELETE", "/bridges/conf-B"))
    assert not first.closed and first.members == {"A", bob}


async def test_an_attended_transfer_whose_party_left_meanwhile_ends_the_second_call_only(rig: Rig) -> None:
    bob, carol = await two_calls(rig)

    def gone(r: Any) -> None:
        raise AriNotFound(404, "Channel not found")

    rig.fake.route("POST", "/bridges/conf-A/addChannel", gone)
    rig.fake.route("POST", "/bridges/conf-B/addChannel", gone)
    rig.fake.push(replaces(carol))
    await rig.until("declined", lambda: progress(rig, "A") == ["channel_declined"])
    # Carol's phone hung up as Alice transferred: Alice's second call is over, her first is not.
    await rig.until("call B over", lambda: rig.fake.calls("DELETE", "/bridges/conf-B"))
    assert rig.hangups("B") and not rig.hangups("A")
    assert rig.controller.conferences["A"].members == {"A", bob}
