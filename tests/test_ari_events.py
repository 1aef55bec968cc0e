"""Parsing ARI event payloads (tests/fixtures/ari/*.json) into typed events and models."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydantic
import pytest

from ari_app.ari import (
    ApplicationReplaced,
    AsteriskInfo,
    Bridge,
    BridgeDestroyed,
    Channel,
    ChannelDestroyed,
    ChannelDtmfReceived,
    ChannelEnteredBridge,
    ChannelHangupRequest,
    ChannelLeftBridge,
    ChannelStateChange,
    ChannelVarset,
    Dial,
    PlaybackFinished,
    StasisEnd,
    StasisStart,
    UnknownEvent,
    parse_event,
)

FIXTURES = Path(__file__).parent / "fixtures" / "ari"
EVENT_FILES = sorted(FIXTURES.glob("*.json"))
# Real sessions: each file a JSON array of events in arrival order.
CAPTURES = sorted((FIXTURES / "captured").glob("*.json"))


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def test_fixtures_present() -> None:
    assert len(EVENT_FILES) >= 20


@pytest.mark.parametrize("path", EVENT_FILES, ids=lambda p: p.stem)
def test_every_fixture_parses_to_its_type_or_unknown(path: Path) -> None:
    data = json.loads(path.read_text())
    event = parse_event(data)
    assert event.type == data["type"]
    assert event.application == data.get("application", "")
    if isinstance(event, UnknownEvent):
        assert event.raw == data
    else:
        assert type(event).__name__ == data["type"]
    if "timestamp" in data:
        assert event.timestamp is not None and event.timestamp.tzinfo is not None


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.stem)
def test_every_captured_event_parses(path: Path) -> None:
    events = [parse_event(e) for e in json.loads(path.read_text())]
    assert events
    for event in events:
        if isinstance(event, UnknownEvent):
            assert event.type not in {"StasisStart", "StasisEnd", "Dial", "ChannelDestroyed"}
        else:
            assert type(event).__name__ == event.type


def test_captured_local_call() -> None:
    events = [parse_event(e) for e in json.loads((FIXTURES / "captured" / "local_call_22.json").read_text())]
    starts = [e for e in events if isinstance(e, StasisStart)]
    assert {(s.channel.id, s.args) for s in starts} >= {("ari-t-a2", ("2000",)), ("ari-t-b2", ("3000",))}
    destroyed = [e for e in events if isinstance(e, ChannelDestroyed)]
    assert destroyed and all(d.cause_txt for d in destroyed)
    assert any(isinstance(e, BridgeDestroyed) and e.bridge.bridge_class == "stasis" for e in events)


def test_stasis_start() -> None:
    event = parse_event(load("stasis_start.json"))
    assert isinstance(event, StasisStart)
    assert event.args == ("2000",)
    assert event.replace_channel is None
    ch = event.channel
    assert (ch.id, ch.name, ch.state) == ("1778321523.12", "PJSIP/1001@acme.example-00000006", "Ring")
    assert (ch.caller.name, ch.caller.number) == ("Alice", "1001")
    assert ch.connected.number == ""
    assert ch.dialplan is not None
    assert (ch.dialplan.context, ch.dialplan.exten, ch.dialplan.priority) == ("pbx-stasis", "2000", 1)
    assert ch.channelvars == {"PBX_TENANT": "acme"}
    # Asterisk writes +0000 (no colon); it must still come out as an aware UTC time.
    assert ch.creationtime == datetime(2026, 5, 9, 10, 12, 3, 398000, tzinfo=UTC)
    assert event.timestamp == datetime(2026, 5, 9, 10, 12, 3, 412000, tzinfo=UTC)
    assert event.asterisk_id == "02:42:ac:11:00:02"


def test_stasis_start_with_replace_channel() -> None:
    event = parse_event(load("stasis_start_replace_channel.json"))
    assert isinstance(event, StasisStart)
    assert event.args == ()
    assert event.replace_channel is not None and event.replace_channel.id == "1778321523.12"


def test_channel_events() -> None:
    end = parse_event(load("stasis_end.json"))
    assert isinstance(end, StasisEnd) and end.channel.state == "Up"
    up = parse_event(load("channel_state_change_up.json"))
    assert isinstance(up, ChannelStateChange) and up.channel.state == "Up"
    dtmf = parse_event(load("channel_dtmf_received.json"))
    assert isinstance(dtmf, ChannelDtmfReceived) and (dtmf.digit, dtmf.duration_ms) == ("5", 120)


def test_channel_destroyed_cause_and_tech_cause() -> None:
    normal = parse_event(load("channel_destroyed.json"))
    assert isinstance(normal, ChannelDestroyed)
    assert (normal.cause, normal.cause_txt, normal.tech_cause) == (16, "Normal Clearing", None)
    busy = parse_event(load("channel_destroyed_busy.json"))
    assert isinstance(busy, ChannelDestroyed)
    assert (busy.cause, busy.cause_txt, busy.tech_cause) == (17, "User busy", 486)


def test_hangup_request_hard_and_soft() -> None:
    hard = parse_event(load("channel_hangup_request.json"))
    assert isinstance(hard, ChannelHangupRequest) and (hard.cause, hard.soft) == (16, None)
    soft = parse_event(load("channel_hangup_request_soft.json"))
    assert isinstance(soft, ChannelHangupRequest) and (soft.cause, soft.soft) == (None, True)


def test_dial() -> None:
    start = parse_event(load("dial_start.json"))
    assert isinstance(start, Dial) and start.dialstatus == ""
    assert start.dialstring == "1002@1002@acme.example" and start.forward == ""
    answer = parse_event(load("dial_answer.json"))
    assert isinstance(answer, Dial)
    assert answer.dialstatus == "ANSWER"
    assert answer.peer.id == "ctl-6f1c2d.1002" and answer.peer.state == "Up"
    # A leg dialed over ARI has no caller in its Dial events (seen on 22.10.1, even with caller=);
    # only the dialplan's Dial() names one.
    assert answer.caller is None and answer.dialstring == ""
    busy = parse_event(load("dial_busy.json"))
    assert isinstance(busy, Dial) and busy.dialstatus == "BUSY"
    ringing = parse_event(load("dial_ringing_dialplan_dial.json"))
    assert isinstance(ringing, Dial) and ringing.caller is not None and ringing.caller.id == "1778321523.12"


def test_bridge_events() -> None:
    entered = parse_event(load("channel_entered_bridge.json"))
    assert isinstance(entered, ChannelEnteredBridge)
    assert entered.bridge.channels == ("1778321523.12",)
    assert entered.channel is not None and entered.channel.id == "1778321523.12"
    left = parse_event(load("channel_left_bridge.json"))
    assert isinstance(left, ChannelLeftBridge) and left.bridge.bridge_type == "mixing"
    gone = parse_event(load("bridge_destroyed.json"))
    assert isinstance(gone, BridgeDestroyed)
    assert (gone.bridge.id, gone.bridge.technology, gone.bridge.channels) == ("b-6f1c2d", "simple_bridge", ())


def test_varset_on_channel_and_global() -> None:
    on_channel = parse_event(load("channel_varset.json"))
    assert isinstance(on_channel, ChannelVarset) and on_channel.channel is not None
    assert (on_channel.variable, on_channel.value) == ("PBX_TENANT", "acme")
    global_ = parse_event(load("channel_varset_global.json"))
    assert isinstance(global_, ChannelVarset) and global_.channel is None


def test_playback_and_application_replaced() -> None:
    done = parse_event(load("playback_finished.json"))
    assert isinstance(done, PlaybackFinished) and done.playback.state == "done"
    replaced = parse_event(load("application_replaced.json"))
    assert isinstance(replaced, ApplicationReplaced) and replaced.application == "pbx"


def test_unknown_event_keeps_the_payload() -> None:
    data = load("unknown_channel_dialplan.json")
    event = parse_event(data)
    assert isinstance(event, UnknownEvent)
    assert event.type == "ChannelDialplan"
    assert event.raw["dialplan_app"] == "Stasis"


def test_known_type_missing_a_required_field_is_an_error() -> None:
    data = load("stasis_start.json")
    del data["channel"]
    with pytest.raises(pydantic.ValidationError):
        parse_event(data)


def test_unknown_keys_are_ignored_and_models_are_frozen() -> None:
    data = load("stasis_start.json")
    data["channel"]["some_future_field"] = {"x": 1}
    data["added_in_asterisk_23"] = True
    event = parse_event(data)
    assert isinstance(event, StasisStart)
    with pytest.raises(pydantic.ValidationError):
        event.channel.state = "Up"


def test_channel_with_only_required_keys() -> None:
    # What older Asterisk sends: no protocol_id, no channelvars, no dialplan app fields.
    ch = Channel.model_validate(
        {
            "id": "1.1",
            "name": "Local/x@y-00000001;1",
            "state": "Down",
            "caller": {"name": "", "number": ""},
            "connected": {"name": "", "number": ""},
            "accountcode": "",
            "dialplan": {"context": "y", "exten": "x", "priority": 1},
            "creationtime": "2026-05-09T10:00:00.000+0000",
            "language": "en",
        }
    )
    assert ch.protocol_id == "" and ch.channelvars == {} and ch.tenantid is None
    assert ch.dialplan is not None and ch.dialplan.app_name == ""


def test_rest_models_from_fixtures() -> None:
    bridge = Bridge.model_validate(load("rest/bridge.json"))
    assert bridge.channels == ("1778321523.12", "ctl-6f1c2d.1002") and bridge.video_mode == "talker"
    info = AsteriskInfo.model_validate(load("rest/asterisk_info.json"))
    assert info.system is not None and info.system.version == "22.10.1"
    assert info.status is not None and info.status.startup_time.tzinfo is not None
    assert info.config is not None and info.config.default_language == "en"
