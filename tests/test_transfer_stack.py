"""Transfers and hold on the real stack: sipp phones REFER and re-INVITE, the controller answers.

Who talks to whom is read from the conference bridge over ARI; what the transferer's phone was told
from its own trace (the REFER's 202 and the NOTIFY sipfrags).
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from urllib.parse import quote

import pytest
from stack import apply_yaml, pbxctl, serve_url, wait_for, wait_routable
from test_controller_stack import (
    Phones,
    _hangup,
    ari,
    bridges,
    channels,
    conference,
    final_of,
    phones,
)

from ari_app.ari import AriClient, AriNotFound
from devstack import sipp
from devstack.play_sipp import caller_xml, device_xml
from devstack.stack import Stack, sql

pytestmark = pytest.mark.stack

__all__ = ["phones"]  # the fixture of test_controller_stack, used by name


def conf_caller(phones: Phones, name: str, user: str, number: str, xml: str) -> sipp.SippProcess:
    """``user`` of conf.example calls ``number``, doing what the caller scenario ``xml`` says."""
    proc = phones._proc(name)
    auth = f"[authentication username={user} password=pw-{user}]"
    proc.start(phones.stack.settings.sip_addr, xml, [user, "conf.example", auth, number, user], 90)
    return proc


def transferring_caller(
    phones: Phones, user: str, number: str, target: str, *, after_ms: int = 1000
) -> sipp.SippProcess:
    """``user`` calls ``number``, talks 1 s, REFERs the call to ``target``."""
    xml = caller_xml(60_000, 1000, transfer_to=target, after_ms=after_ms)
    return conf_caller(phones, f"transferer-{user}", user, number, xml)


def sipfrags(proc: sipp.SippProcess) -> list[str]:
    """The status lines of the NOTIFYs the phone received, in order."""
    text = proc.trace_path.read_text(errors="replace") if proc.trace_path.exists() else ""
    blocks = re.split(r"^UDP message (?:sent|received).*$", text, flags=re.M)
    notifies = [b for b in blocks if b.lstrip().startswith("NOTIFY ")]
    return [m.group(1) for b in notifies if (m := re.search(r"^\s*(SIP/2\.0 \d{3}[^\r\n]*)", b, re.M))]


def endpoints_in(stack: Stack, bridge_channels: tuple[str, ...]) -> list[str]:
    names = {c.id: c.name for c in channels(stack)}
    return sorted(names[c].split("/", 1)[1].rsplit("-", 1)[0] for c in bridge_channels if c in names)


def test_blind_transfer_puts_the_target_in_the_conference_and_the_transferer_leaves(
    stack: Stack, phones: Phones
) -> None:
    phones.device("1002", {"answer_at": 0})
    carol = phones.device("1003", {"answer_at": 0})
    alice = transferring_caller(phones, "1001", "1002", "1003")

    assert alice.wait(30) == 0, alice.stderr()
    assert carol.got("INVITE")
    # Alice's phone: 202 to its REFER, then NOTIFY sipfrags ending in 200.
    received = [m.first_line for m in alice.messages() if m.direction == "received"]
    assert "SIP/2.0 202 Accepted" in received, received
    assert sipfrags(alice)[-1].startswith("SIP/2.0 200"), sipfrags(alice)
    # Bob (the transferee) and Carol talk in the conference; Alice is gone from it.
    bridge = wait_for("Bob and Carol in the conference", lambda: conference(stack, 2))
    wait_for(
        "Alice out of the conference",
        lambda: endpoints_in(stack, conference(stack, 2).channels) == ["1002@conf.example", "1003@conf.example"],  # type: ignore[union-attr]
    )
    assert bridge.bridge_type == "mixing"
    wait_for("Alice's channel gone", lambda: not [c for c in channels(stack) if "1001@" in c.name])
    # Once the conference is over (Bob and Carol hang up), the call's record names the transfer.
    stack.asterisk.rx("channel request hangup all")
    query = "SELECT transferred_from, transferred_to FROM pbx.call_records WHERE transferred_to = '1003'"
    [row] = wait_for("the call's record", lambda: asyncio.run(sql(stack, query)), 30)
    assert row["transferred_from"], dict(row)


def test_blind_transfer_to_an_unknown_number_fails_cleanly_and_the_call_stays_up(stack: Stack, phones: Phones) -> None:
    phones.device("1002", {"answer_at": 0})
    alice = transferring_caller(phones, "1001", "1002", "9999", after_ms=3000)
    wait_for("the refused transfer's NOTIFY", lambda: any(not f.startswith("SIP/2.0 1") for f in sipfrags(alice)))
    assert not sipfrags(alice)[-1].startswith("SIP/2.0 200"), sipfrags(alice)
    # The original call is still Alice and Bob.
    bridge = conference(stack, 2)
    assert bridge is not None
    assert endpoints_in(stack, bridge.channels) == ["1001@conf.example", "1002@conf.example"]
    assert alice.wait(30) == 0, alice.stderr()
    assert final_of(alice) == 200
    wait_for("no conference left", lambda: not any(b.id.startswith("conf-") for b in bridges(stack)))


def playback_state(stack: Stack, playback_id: str) -> str | None:
    async def go() -> str | None:
        async with ari(stack) as t:
            try:
                return (await AriClient(t, "pbx-test").playbacks.get(playback_id)).state
            except AriNotFound:
                return None

    return asyncio.run(go())


def test_hold_gives_the_other_party_the_hold_tone_and_resume_ends_it(stack: Stack, phones: Phones) -> None:
    phones.device("1002", {"answer_at": 0})
    proc = conf_caller(phones, "holder-1001", "1001", "1002", caller_xml(60_000, 1000, hold_ms=4000))
    bridge = wait_for("the conference", lambda: conference(stack, 2))
    bob = next(c for c in bridge.channels if "-l" in c)
    wait_for("the hold tone playing to Bob", lambda: playback_state(stack, f"{bob}-hold") == "playing")
    # Nothing else changed: both still in the conference, nobody hung up.
    assert set(conference(stack, 2).channels) == set(bridge.channels)  # type: ignore[union-attr]
    wait_for("the tone stopped on resume", lambda: playback_state(stack, f"{bob}-hold") is None, 10)
    assert conference(stack, 2) is not None
    assert proc.wait(30) == 0, proc.stderr()
    oks = [m for m in proc.messages() if m.direction == "received" and m.first_line.startswith("SIP/2.0 200")]
    assert len([m for m in oks if "INVITE" in m.headers.get("cseq", "")]) >= 3  # the call, hold, resume


def test_in_a_conference_of_three_hold_affects_only_the_holder(stack: Stack, phones: Phones) -> None:
    phones.device("1002", {"answer_at": 0})
    phones.device("1003", {"answer_at": 0})
    # 8 s of talk (Carol is added meanwhile), 8 s on hold, resumed, 8 s of talk.
    alice = conf_caller(phones, "holder-1001", "1001", "1002", caller_xml(60_000, 8000, hold_ms=8000))
    call_id = wait_for("the conference", lambda: conference(stack, 2)).id.removeprefix("conf-")
    p = pbxctl(stack, "call", "add-party", call_id, "1003", "--http", serve_url(stack).removeprefix("http://"))
    assert p.returncode == 0, p.stderr
    three = wait_for("Carol in the conference", lambda: conference(stack, 3))
    bob = next(c for c in three.channels if c.startswith(f"{call_id}-l"))
    carol = next(c for c in three.channels if c.startswith(f"{call_id}-p"))
    wait_for("the controller seeing Alice hold", lambda: f"{call_id} holds" in stack.serve.log_text(), 20)
    # Bob and Carol go on talking to each other: no hold tone for either, nobody left.
    assert playback_state(stack, f"{bob}-hold") is None and playback_state(stack, f"{carol}-hold") is None
    assert set(conference(stack, 3).channels) == set(three.channels)  # type: ignore[union-attr]
    # Carol leaves while Alice still holds: Bob, left with a held party only, hears the tone now.
    asyncio.run(_hangup(stack, carol))
    wait_for("the hold tone playing to Bob", lambda: playback_state(stack, f"{bob}-hold") == "playing")
    wait_for("the tone stopped on resume", lambda: playback_state(stack, f"{bob}-hold") is None, 15)
    assert alice.wait(30) == 0, alice.stderr()


def _tag(header: str) -> str:
    return header.split("tag=", 1)[1].split(";", 1)[0].strip()


def test_attended_transfer_joins_the_two_remote_parties_and_the_transferer_leaves(stack: Stack, phones: Phones) -> None:
    phones.device("1002", {"answer_at": 0})
    carol = phones.device("1003", {"answer_at": 0})
    # Alice's second call (to Carol) first: the REFER of her first call names it by its dialog.
    second = conf_caller(phones, "alice-second", "1001", "1003", caller_xml(60_000, until_bye=True))
    ok = wait_for(
        "Carol answering Alice",
        lambda: next(
            (m for m in second.messages() if m.direction == "received" and m.first_line.startswith("SIP/2.0 200")),
            None,
        ),
    )
    replaces = quote(f"{ok.headers['call-id']};to-tag={_tag(ok.headers['to'])};from-tag={_tag(ok.headers['from'])}")
    first = transferring_caller(phones, "1001", "1002", f"1003?Replaces={replaces}")

    assert first.wait(30) == 0, first.stderr()
    assert sipfrags(first)[-1].startswith("SIP/2.0 200"), sipfrags(first)
    # Alice's second call ended by Asterisk (BYE), Carol kept.
    assert second.wait(30) == 0, second.stderr()
    wait_for(
        "Bob and Carol in one conference",
        lambda: (
            (c := conference(stack, 2)) is not None
            and endpoints_in(stack, c.channels) == ["1002@conf.example", "1003@conf.example"]
        ),
    )
    assert len([b for b in bridges(stack) if b.id.startswith("conf-")]) == 1
    assert not carol.got("BYE")
    wait_for("Alice's channels gone", lambda: not [c for c in channels(stack) if "1001@" in c.name])


PLAYED = """
id: X01
title: Bob answers and transfers Alice to Carol
config:
  tenants:
    t:
      domain: xfer.example
      templates:
        phone: {endpoint: {context: t-internal, allow: "!all,ulaw"}, aor: {max_contacts: 5}}
      endpoints:
        "1001": {templates: [phone], auth: {password: pw-x1001}}
        "1002": {templates: [phone], auth: {password: pw-x1002}}
        "1003": {templates: [phone], auth: {password: pw-x1003}}
      extensions:
        "1001": {type: simple, name: Alice, endpoints: ["1001"]}
        "1002": {type: simple, name: Bob, endpoints: ["1002"]}
        "1003": {type: simple, name: Carol, endpoints: ["1003"]}
registrations: {"1002": [dev-1002], "1003": [dev-1003]}
call: {tenant: t, caller: "1001", called: "1002"}
behaviour:
  dev-1002: {answer_at: 1, transfer_at: 3, transfer_to: "1003"}
  dev-1003: {answer_at: 4}
horizon_s: 8
"""


def test_call_play_plays_a_transfer_behaviour(stack: Stack, tmp_path: Path) -> None:
    scenario = tmp_path / "X01.yaml"
    scenario.write_text(PLAYED)
    p = pbxctl(stack, "call", "play", str(scenario), "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    timeline = out["timeline"]
    assert out["result"] == "answered", out
    transfer = next((e for e in timeline if "transfer" in e), None)
    assert transfer is not None, timeline
    assert transfer["transfer"] == "dev-1002" and transfer["to"] == "1003" and transfer["result"] == "answered"
    assert 2.5 <= transfer["t"] <= 4.5, timeline
    ring = next(e for e in timeline if e.get("ring") == "dev-1003")
    # Carol sees the transferer's caller id: the new leg is Bob's call.
    assert ring["caller"] == "1002" and ring["t"] >= transfer["t"], timeline
    assert any(e.get("answer") == "dev-1003" for e in timeline), timeline
    assert len([e for e in timeline if e.get("ring") == "dev-1003"]) == 1, timeline  # one transfer, one ring


def test_the_callee_transfers_the_caller_as_its_own_extension(stack: Stack, phones: Phones) -> None:
    bob = phones.device("1002", {"answer_at": 0, "transfer_at": 2, "transfer_to": "1003"})
    carol = phones.device("1003", {"answer_at": 0})
    alice = phones.call("1001", "1002", talk_s=30)
    wait_for(
        "Alice and Carol in the conference",
        lambda: (
            (c := conference(stack, 2)) is not None
            and endpoints_in(stack, c.channels) == ["1001@conf.example", "1003@conf.example"]
        ),
        20,
    )
    invite = next(m for m in carol.messages() if m.direction == "received" and m.first_line.startswith("INVITE "))
    assert '"Bob" <sip:1002@' in invite.headers["from"], invite.headers["from"]  # Bob's call, Bob's caller id
    assert sipfrags(bob)[-1].startswith("SIP/2.0 200"), (sipfrags(bob), bob.stderr())
    wait_for("Bob's dialog ended", lambda: bob.got("BYE"))
    assert alice.proc is not None and alice.proc.poll() is None  # Alice still talking


TRUNKED = """
tenants:
  xtrunk:
    domain: xtrunk.example
    templates:
      phone: {{endpoint: {{context: xt-internal, allow: "!all,ulaw", direct_media: "no"}}, aor: {{max_contacts: 2}}}}
      carrier: {{endpoint: {{context: xt-carrier, allow: "!all,ulaw"}}}}
    endpoints:
      "1001": {{templates: [phone], auth: {{password: pw-t1001}}}}
      "1002": {{templates: [phone], auth: {{password: pw-t1002}}}}
      out: {{templates: [carrier], aor: {{contact: ["sip:127.0.0.9:{port}"]}}}}
    extensions:
      "1001": {{type: simple, name: Alice, endpoints: ["1001"], dialout: true}}
      "1002": {{type: simple, name: Bob, endpoints: ["1002"]}}
      "0": {{type: trunk, name: Out, endpoints: [out], outbound: {{strip: 1}}}}
"""


def test_a_blind_transfer_to_an_external_number_goes_out_through_the_trunk(
    stack: Stack, phones: Phones, tmp_path: Path
) -> None:
    port = sipp.free_udp_port()
    apply_yaml(stack, TRUNKED.format(port=port), tmp_path)
    wait_routable(stack, "xt-internal")
    carrier = sipp.SippProcess("carrier", port, tmp_path / "carrier", ip="127.0.0.9")
    bob = phones._proc("dev-t1002")
    (tmp_path / "carrier").mkdir()
    phones.procs.append(carrier)
    r = sipp.register(stack.settings.sip_addr, "1002", "xtrunk.example", "pw-t1002", local_port=bob.port)
    assert r.final == 200, (r.responses, r.stderr)
    try:
        bob.start(stack.settings.sip_addr, device_xml({"answer_at": 0}, 0), ["-"], 120)
        carrier.start(stack.settings.sip_addr, device_xml({"answer_at": 0}, 0), ["-"], 120)
        alice = phones._proc("transferer-t1001")
        auth = "[authentication username=1001 password=pw-t1001]"
        xml = caller_xml(60_000, 1000, transfer_to="00301")
        alice.start(stack.settings.sip_addr, xml, ["1001", "xtrunk.example", auth, "1002", "1001"], 90)
        assert alice.wait(30) == 0, alice.stderr()
        assert sipfrags(alice)[-1].startswith("SIP/2.0 200"), sipfrags(alice)
        invite = next(m for m in carrier.messages() if m.direction == "received" and m.first_line.startswith("INVITE"))
        assert invite.first_line.startswith(f"INVITE sip:0301@127.0.0.9:{port}"), invite.first_line  # strip 1
        assert '"Alice" <sip:1001@' in invite.headers["from"], invite.headers["from"]
        wait_for(
            "Bob and the carrier in the conference",
            lambda: (
                (c := conference(stack, 2)) is not None
                and endpoints_in(stack, c.channels) == ["1002@xtrunk.example", "out@xtrunk.example"]
            ),
        )
    finally:
        sipp.unregister_all(stack.settings.sip_addr, "1002", "xtrunk.example", "pw-t1002")
