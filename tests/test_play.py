"""devstack.play: reading sipp traces into the simulator's timeline; the generated sipp XML."""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

import pytest

from devstack.play import Message, PlayError, _check_transfers, _plan, _timeline, read_trace
from devstack.play_nodes import PlayTarget, node_ari_urls
from devstack.play_sipp import caller_xml, device_xml
from devstack.settings import StackSettings
from pbx_base.settings import get_settings

TRACE = """----------------------------------------------- 2026-11-30 04:47:50.044657
UDP message received [343] bytes :

INVITE sip:1002@127.0.0.1:5062 SIP/2.0
From: "[TEAM] Alice" <sip:1001@127.0.0.1>;tag=x
To: <sip:1002@127.0.0.1:5062>
CSeq: 1 INVITE
Content-Length: 0


----------------------------------------------- 2026-11-30 04:47:51.544657
UDP message received [200] bytes :

CANCEL sip:1002@127.0.0.1:5062 SIP/2.0
Reason: SIP;cause=200;text="Call completed elsewhere"
CSeq: 1 CANCEL

"""


def ts(s: str) -> float:
    return datetime.strptime(s, "%Y-%m-%d %H:%M:%S.%f").timestamp()


def test_read_trace() -> None:
    msgs = read_trace(TRACE)
    assert [(m.direction, m.first_line.split()[0]) for m in msgs] == [("received", "INVITE"), ("received", "CANCEL")]
    assert msgs[0].headers["from"].startswith('"[TEAM] Alice"')
    assert msgs[1].at - msgs[0].at == pytest.approx(1.5)


def test_timeline_from_the_devices_point_of_view() -> None:
    t0 = ts("2026-11-30 04:47:50.000000")
    caller = [
        Message(t0, "sent", "INVITE sip:2000@t SIP/2.0", {"cseq": "1 INVITE"}),
        Message(t0 + 2, "received", "SIP/2.0 200 OK", {"cseq": "2 INVITE"}),
    ]
    answerer = [
        Message(t0 + 0.1, "received", "INVITE sip:1003@x SIP/2.0", {"from": '"Alice" <sip:1001@t>', "to": "<sip:x>"}),
        Message(t0 + 2, "sent", "SIP/2.0 200 OK", {"cseq": "1 INVITE"}),
    ]
    out = _timeline(caller, {"dev-1002": read_trace(TRACE), "dev-1003": answerer}, 10)
    assert out["status"] == "ok" and out["result"] == "answered"
    assert out["timeline"] == [
        {"t": 0.04, "ring": "dev-1002", "caller": "1001", "callername": "[TEAM] Alice"},
        {"t": 0.1, "ring": "dev-1003", "caller": "1001", "callername": "Alice"},
        {"t": 1.54, "stop": "dev-1002", "why": "answered_elsewhere"},
        {"t": 2.0, "answer": "dev-1003"},
    ]


@pytest.mark.parametrize("behaviour", [{}, {"answer_at": 3}, {"reject_at": 2}, {"busy": True}])
def test_device_scenarios_are_well_formed(behaviour: dict[str, object]) -> None:
    root = ET.fromstring(device_xml(behaviour, 1_800_000_000_000))
    assert root.tag == "scenario" and root[0].tag == "recv" and root[0].get("request") == "INVITE"


def test_caller_scenario_is_well_formed_and_times_the_horizon_everywhere_it_waits() -> None:
    root = ET.fromstring(caller_xml(7000, 2000))
    recvs = [e for e in root if e.tag == "recv"]
    ringing = [e for e in recvs if e.get("response") in ("180", "183", "486")]
    ringing.append(next(e for e in recvs if e.get("response") == "200"))  # the answer
    assert len(ringing) == 4 and all(e.get("timeout") == "7000" for e in ringing)


def test_trunk_devices_report_the_request_uri_user_as_dialed() -> None:
    t0 = ts("2026-11-30 04:47:50.000000")
    caller = [Message(t0, "sent", "INVITE sip:0030123@t SIP/2.0", {"cseq": "2 INVITE"})]
    carrier = [
        Message(t0 + 0.1, "received", "INVITE sip:+4930123@127.0.0.2:5070 SIP/2.0", {"from": '"Alice" <sip:1001@t>'})
    ]
    out = _timeline(caller, {"carrier/1": carrier}, 10, {"carrier/1"})
    assert out["timeline"] == [
        {"t": 0.1, "ring": "carrier/1", "caller": "1001", "callername": "Alice", "dialed": "+4930123"}
    ]


def test_finals_without_credentials_and_after_a_ring_timeout() -> None:
    t0 = ts("2026-11-30 04:47:50.000000")
    invite = Message(t0, "sent", "INVITE sip:1002@t SIP/2.0", {"cseq": "2 INVITE"})
    challenged = Message(t0 + 0.01, "received", "SIP/2.0 401 Unauthorized", {"cseq": "2 INVITE"})
    assert _timeline([invite, challenged], {}, 10)[("status")] == "error:noauth"
    # With credentials: the first 401 is the challenge; one to the INVITE that carried them refuses them.
    first = Message(t0, "sent", "INVITE sip:1002@t SIP/2.0", {"cseq": "1 INVITE"})
    challenge = Message(t0, "received", "SIP/2.0 401 Unauthorized", {"cseq": "1 INVITE"})
    authorized = Message(t0, "sent", "INVITE sip:1002@t SIP/2.0", {"cseq": "2 INVITE", "authorization": "Digest"})
    ok = Message(t0 + 1, "received", "SIP/2.0 200 OK", {"cseq": "2 INVITE"})
    assert _timeline([first, challenge, authorized, ok], {}, 10)["status"] == "ok"
    refused = _timeline([first, challenge, authorized, challenged], {}, 10)
    assert (refused["status"], refused["result"]) == ("error:forbidden", "noroute")
    unavailable = Message(t0 + 20, "received", "SIP/2.0 480 Temporarily Unavailable", {"cseq": "2 INVITE"})
    assert _timeline([invite, unavailable], {}, 30)["result"] == "unavailable"
    rung = [
        Message(t0 + 0.1, "received", "INVITE sip:1002@x SIP/2.0", {"from": "<sip:1001@t>"}),
        Message(t0 + 20, "received", "CANCEL sip:1002@x SIP/2.0", {}),
    ]
    assert _timeline([invite, unavailable], {"dev-1002": rung}, 30)["result"] == "noanswer"


def test_caller_without_credentials_sends_one_invite_and_takes_401_as_final() -> None:
    root = ET.fromstring(caller_xml(7000, auth=False))
    sends = [e for e in root if e.tag == "send" and "INVITE sip:" in (e.text or "")]
    assert len(sends) == 1 and "[field2]" not in (sends[0].text or "")
    assert any(e.get("response") == "401" and e.get("next") == "failed" for e in root if e.tag == "recv")


def test_plan_static_devices_on_loopback_only() -> None:
    tenant = {
        "domain": "t.example",
        "endpoints": {"carrier": {"aor": {"contact": ["sip:127.0.0.2:5070", "sip:gw@127.0.0.4"]}}},
        "extensions": {"0": {"type": "trunk", "name": "C", "endpoints": ["carrier"]}},
    }
    scenario = {"config": {"tenants": {"t": tenant}}, "call": {"tenant": "t", "caller": "1", "called": "2"}}
    _, plan = _plan(scenario)
    assert plan.static == {"carrier/1": ("carrier", "127.0.0.2", 5070), "carrier/2": ("carrier", "127.0.0.4", 5060)}
    assert plan.trunk_endpoints == {"carrier"}
    tenant["endpoints"]["carrier"]["aor"]["contact"] = ["sip:192.0.2.1:5060"]  # type: ignore[index]
    with pytest.raises(
        PlayError, match=re.escape("carrier: contact sip:192.0.2.1:5060: 192.0.2.1 is not a 127.0.0.0/8")
    ):
        _plan(scenario)


def test_a_device_transfer_is_a_timeline_event_with_its_outcome() -> None:
    t0 = ts("2026-11-30 04:47:50.000000")
    caller = [
        Message(t0, "sent", "INVITE sip:1002@t SIP/2.0", {"cseq": "1 INVITE"}),
        Message(t0 + 1, "received", "SIP/2.0 200 OK", {"cseq": "2 INVITE"}),
    ]
    frag = "SIP/2.0 100 Trying"
    bob = [
        Message(t0 + 0.1, "received", "INVITE sip:1002@x SIP/2.0", {"from": '"Alice" <sip:1001@t>', "to": "<sip:x>"}),
        Message(t0 + 1, "sent", "SIP/2.0 200 OK", {"cseq": "1 INVITE"}),
        Message(t0 + 3, "sent", "REFER sip:127.0.0.1 SIP/2.0", {"refer-to": "<sip:1003@127.0.0.1>"}),
        Message(t0 + 3.1, "received", "NOTIFY sip:x SIP/2.0", {"event": "refer"}, frag),
        Message(t0 + 4, "received", "NOTIFY sip:x SIP/2.0", {"event": "refer"}, "SIP/2.0 200 OK"),
    ]
    out = _timeline(caller, {"dev-1002": bob}, 10)
    assert {"t": 3.0, "transfer": "dev-1002", "to": "1003", "result": "answered"} in out["timeline"]
    bob[-1] = Message(t0 + 4, "received", "NOTIFY sip:x SIP/2.0", {"event": "refer"}, "SIP/2.0 603 Declined")
    assert _timeline(caller, {"dev-1002": bob}, 10)["timeline"][-1]["result"] == "failed"


def test_read_trace_keeps_the_body() -> None:
    trace = TRACE.replace("CSeq: 1 CANCEL\n", "CSeq: 1 CANCEL\n\nSIP/2.0 200 OK\n")
    assert read_trace(trace)[1].body == "SIP/2.0 200 OK"


@pytest.mark.parametrize(
    ("behaviour", "error"),
    [
        ({"answer_at": 1, "transfer_at": 3}, "transfer_at and transfer_to go together"),
        ({"answer_at": 1, "transfer_to": "1003"}, "transfer_at and transfer_to go together"),
        ({"transfer_at": 3, "transfer_to": "1003"}, "needs an answer_at before it"),
        ({"answer_at": 1, "transfer_at": 3, "transfer_to": "1003,x"}, "not a number one can dial"),
    ],
)
def test_a_transfer_behaviour_is_checked(behaviour: dict[str, object], error: str) -> None:
    with pytest.raises(PlayError, match=error):
        _check_transfers({"dev-1002": behaviour})


@pytest.mark.parametrize(
    "xml",
    [
        device_xml({"answer_at": 1, "transfer_at": 3, "transfer_to": "1003"}, 1_800_000_000_000),
        caller_xml(7000, 2000, transfer_to="1003"),
        caller_xml(7000, 2000, hold_ms=1000),
        caller_xml(7000, until_bye=True),
    ],
)
def test_transfer_and_hold_scenarios_are_well_formed_with_unique_labels(xml: str) -> None:
    root = ET.fromstring(xml)
    labels = [e.get("id") for e in root if e.tag == "label"]
    assert len(labels) == len(set(labels))
    jumps = {e.get(a) for e in root for a in ("next", "ontimeout") if e.get(a)}
    assert jumps <= set(labels)


def _stack(nodes: int) -> StackSettings:
    one = StackSettings(
        name="p", pg_port=1, sip_port=2, http_port=3, ami_port=4, rtp_start=10000, rtp_end=10098,
        db_password="d", ari_password="a", ami_password="m",
    )  # fmt: skip
    return one if nodes == 1 else one.model_copy(update={"rtp_start": 20000}).with_nodes(nodes)


def test_play_holds_calls_on_every_node_of_the_stack_that_exported_the_ari_url() -> None:
    single = _stack(1)
    assert node_ari_urls(single.ari_url, single) == ("http://127.0.0.1:3",)
    cluster = _stack(3)
    assert node_ari_urls(cluster.ari_url + "/", cluster) == tuple(f"http://127.0.0.1{i}:3" for i in (1, 2, 3))
    # Another stack's ARI (PBX_STACK names a stack the URL is not from), or no stack.json at all.
    assert node_ari_urls("http://127.0.0.1:9", cluster) == ("http://127.0.0.1:9",)
    assert node_ari_urls("http://127.0.0.1:9", None) == ("http://127.0.0.1:9",)


def test_play_target_from_the_environment_of_a_cluster_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = _stack(2)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "stack.json").write_text(cluster.model_dump_json())
    monkeypatch.setenv("PBX_STACKS_DIR", str(tmp_path))
    for name, value in cluster.exports().items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()  # the settings are read once per process
    try:
        target = PlayTarget.from_env()
        assert target.sip_addr == "127.0.0.10:2"  # the edge
        assert target.ari_urls == ("http://127.0.0.11:3", "http://127.0.0.12:3")
        monkeypatch.setenv("PBX_STACK", "gone")
        get_settings.cache_clear()
        assert PlayTarget.from_env().ari_urls == ("http://127.0.0.11:3",)
    finally:
        get_settings.cache_clear()


def test_a_play_without_in_use_calls_loads_no_ari_client(tmp_path: Path) -> None:
    """The checker starts `call play` once per scenario: aiohttp (the ARI client that holds
    ``in_use`` calls) was a third of that start-up, and most scenarios hold no call."""
    probe = (
        "import asyncio, pathlib, sys\n"
        "import pbxctl.commands.call\n"
        "from devstack.play import PlayTarget\n"
        "from devstack.play_nodes import calls_held\n"
        "async def none_held():\n"
        "    target = PlayTarget('postgresql://-', '127.0.0.1:1', ('http://127.0.0.1:1',), 'u', 'p')\n"
        f"    async with calls_held(target, 'a.example', {{'1001': 0}}, pathlib.Path({str(tmp_path)!r})):\n"
        "        pass\n"
        "asyncio.run(none_held())\n"
        "print(sorted(m for m in ('aiohttp', 'ari_app.ari', 'devstack.play_hold') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_device_cancelled_at_the_horizon_stops_for_the_caller_hangup_whenever_the_caller_logged_it() -> None:
    t0 = ts("2026-11-30 04:47:50.000000")
    caller = [
        Message(t0, "sent", "INVITE sip:2000@t SIP/2.0", {"cseq": "2 INVITE"}),
        Message(t0 + 20.06, "sent", "CANCEL sip:2000@t SIP/2.0", {"cseq": "2 CANCEL"}),
        Message(t0 + 20.07, "received", "SIP/2.0 487 Request Terminated", {"cseq": "2 INVITE"}),
    ]
    ringing = [
        Message(t0 + 15, "received", "INVITE sip:1004@x SIP/2.0", {"from": "<sip:1001@t>", "to": "<sip:x>"}),
        Message(t0 + 20.04, "received", "CANCEL sip:1004@x SIP/2.0", {}),
    ]
    dropped = [
        Message(t0 + 1, "received", "INVITE sip:1002@x SIP/2.0", {"from": "<sip:1001@t>", "to": "<sip:x>"}),
        Message(t0 + 19.9, "received", "CANCEL sip:1002@x SIP/2.0", {}),
    ]
    out = _timeline(caller, {"dev-1004": ringing, "dev-1002": dropped}, 20)
    stops = {e["stop"]: e["why"] for e in out["timeline"] if "stop" in e}
    assert stops == {"dev-1004": "caller_hangup", "dev-1002": "drop"}
