"""The ARI controller on the real stack: sipp phones, `pbxctl serve`'s controller, Asterisk 22.

Played scenarios are compared with the simulator by the shared checker (`--live`); the rest
checks what only a live call has: the conference bridge, a third party, concurrent calls, and a
controller that dies mid-call.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from stack import apply_yaml, check_live, pbxctl, serve_url, wait_for, wait_routable

from ari_app.ari import AriClient, AriNotFound, Bridge, Channel, HttpAriTransport
from devstack import sipp
from devstack.play import SippProcess, read_trace
from devstack.play_sipp import caller_xml, device_xml
from devstack.stack import Stack

pytestmark = pytest.mark.stack

REPO = Path(__file__).resolve().parent.parent
# Public routing scenarios played live: every rank mode, a nested group, each forward mode, several
# registrations, call waiting off and on (busy forward), a device reachable twice.
LIVE = ["S03", "S07", "S08", "S10", "S13", "S15a", "S16a", "S20b", "S21", "S23a", "S30", "S42"]


def test_public_scenarios_played_live_give_the_simulated_timeline(
    stack: Stack, shared_dir: Path, tmp_path: Path
) -> None:
    files = [shared_dir / "scenarios" / "routing" / f"{sid}.yaml" for sid in LIVE]
    check_live(stack, shared_dir, files, tmp_path)


def test_answers_rejects_and_busy_phones_played_live_match_the_simulator(
    stack: Stack, shared_dir: Path, tmp_path: Path
) -> None:
    """Our own scenarios with device behaviour; what is expected is what `route simulate` says."""
    files = []
    for src in sorted((REPO / "tests" / "scenarios" / "live").glob("L*.yaml")):
        p = pbxctl(stack, "route", "simulate", str(src), "--json")
        assert p.returncode == 0, p.stderr
        doc = yaml.safe_load(src.read_text())
        doc["expect"] = json.loads(p.stdout)
        dst = tmp_path / src.name
        dst.write_text(yaml.safe_dump(doc, sort_keys=False))
        files.append(dst)
    check_live(stack, shared_dir, files, tmp_path)


# Our own trunk scenarios left out live: T13's only event is at its 120 s horizon.
TRUNKS_NOT_LIVE = {"T13"}


def test_trunk_scenarios_played_live_give_the_simulated_timeline(
    stack: Stack, shared_dir: Path, tmp_path: Path
) -> None:
    """Static contacts ring as sipp devices at their loopback addresses (request-URI user = the
    number dialed out, From = the caller), carriers call in from their identify address through
    the DID rules, fallbacks, and the ring timeout (480, noanswer)."""
    files = sorted((shared_dir / "scenarios" / "trunks").glob("*.yaml"))
    own = sorted((REPO / "tests" / "scenarios" / "trunks").glob("T*.yaml"))
    check_live(stack, shared_dir, files + [p for p in own if p.stem not in TRUNKS_NOT_LIVE], tmp_path)


def test_unauthenticated_and_impersonating_callers_played_live(stack: Stack, shared_dir: Path, tmp_path: Path) -> None:
    """S35a: an INVITE without credentials is challenged and goes no further (error:noauth).
    S35b: a phone presenting another user's number is refused by the controller (403)."""
    files = [shared_dir / "scenarios" / "routing" / f"{sid}.yaml" for sid in ("S35a", "S35b")]
    check_live(stack, shared_dir, files, tmp_path)


QUALIFIED = """
tenants:
  qual:
    domain: qual.example
    templates:
      carrier: {endpoint: {context: qual-carrier, allow: "!all,ulaw"}}
    endpoints:
      "1001": {endpoint: {context: qual-internal, allow: "!all,ulaw"}, auth: {password: pw-1001}}
      dead: {templates: [carrier], aor: {contact: ["sip:127.0.0.6:5070"], qualify_frequency: 1}}
      alive: {templates: [carrier], aor: {contact: ["sip:127.0.0.7:5070"]}}
    extensions:
      "1001": {type: simple, name: Alice, endpoints: ["1001"], dialout: true}
      "0": {type: trunk, name: Dead, endpoints: [dead], fallback: ["8"], outbound: {strip: 1}}
      "8": {type: trunk, name: Alive, endpoints: [alive], outbound: {prepend: "+"}}
"""


def endpoint_state(stack: Stack, resource: str) -> str:
    async def go() -> str:
        async with ari(stack) as t:
            try:
                return (await AriClient(t, "pbx-test").endpoints.get("PJSIP", resource)).state
            except AriNotFound:
                return "not loaded"

    return asyncio.run(go())


def test_a_qualified_static_contact_nobody_answers_is_offline_and_the_fallback_carries_the_call(
    stack: Stack, tmp_path: Path
) -> None:
    apply_yaml(stack, QUALIFIED, tmp_path)
    # Asterisk qualifies the realtime AORs it had at start only; one added later needs this (the
    # pusher does not send it yet: a gap of #17, left to it).
    stack.asterisk.rx("pjsip reload qualify aor dead@qual.example")
    # Nothing listens at 127.0.0.6:5070: Asterisk's OPTIONS go unanswered.
    wait_for(
        "Asterisk to find the dead carrier unreachable",
        lambda: endpoint_state(stack, "dead@qual.example") == "offline",
        30,
    )
    (tmp_path / "alive").mkdir()
    (tmp_path / "caller").mkdir()
    alive = SippProcess("alive", 5070, tmp_path / "alive", ip="127.0.0.7")
    caller = SippProcess("caller", sipp.free_udp_port(), tmp_path / "caller", movable=True)
    try:
        alive.start(stack.settings.sip_addr, device_xml({"answer_at": 0}, int(time.time() * 1000)), ["-"], 60)
        auth = "[authentication username=1001 password=pw-1001]"
        caller.start(stack.settings.sip_addr, caller_xml(20_000), ["1001", "qual.example", auth, "0301", "Alice"], 40)
        assert caller.wait(40) == 0, caller.stderr()
        invites = [m for m in alive.messages() if m.direction == "received" and m.first_line.startswith("INVITE ")]
        assert invites, "the fallback carrier was not called"
        invite = invites[0]  # then retransmissions, if any, of the same INVITE
        # The fallback's own rule on the number as dialed; From: the caller as the contract says.
        assert invite.first_line.startswith("INVITE sip:+0301@127.0.0.7:5070"), invite.first_line
        assert invite.headers["from"].startswith('"Alice" <sip:1001@'), invite.headers["from"]
        assert final_of(caller) == 200
    finally:
        caller.stop()
        alive.stop()
        asyncio.run(_hang_up_everything(stack))


# --- live calls held open by the test ----------------------------------------------------------

TENANT = """
tenants:
  conf:
    domain: conf.example
    templates:
      phone: {endpoint: {context: conf-internal, allow: "!all,ulaw", direct_media: "no"}, aor: {max_contacts: 2}}
    endpoints:
      "1001": {templates: [phone], auth: {password: pw-1001}}
      "1002": {templates: [phone], auth: {password: pw-1002}}
      "1003": {templates: [phone], auth: {password: pw-1003}}
      "1004": {templates: [phone], auth: {password: pw-1004}}
    extensions:
      "1001": {type: simple, name: Alice, endpoints: ["1001"]}
      "1002": {type: simple, name: Bob, endpoints: ["1002"], call_waiting: false}
      "1003": {type: simple, name: Carol, endpoints: ["1003"]}
      "1004": {type: simple, name: Dave, endpoints: ["1004"], ringback: tone-de}
"""


class Phones:
    """Registered sipp phones of tenant conf and callers; everything is stopped at the end."""

    def __init__(self, stack: Stack, tmp: Path) -> None:
        self.stack = stack
        self.tmp = tmp
        self.procs: list[SippProcess] = []
        self.started = 0.0

    def _proc(self, name: str) -> SippProcess:
        d = self.tmp / f"{name}-{len(self.procs)}"
        d.mkdir()
        proc = SippProcess(name, sipp.free_udp_port(), d)
        self.procs.append(proc)
        return proc

    def device(self, user: str, behaviour: dict[str, Any]) -> SippProcess:
        """``answer_at``/``reject_at`` count from when the device starts (``self.started``)."""
        proc = self._proc(f"dev-{user}")
        r = sipp.register(self.stack.settings.sip_addr, user, "conf.example", f"pw-{user}", local_port=proc.port)
        assert r.final == 200, (r.responses, r.stderr)
        self.started = time.time()
        proc.start(self.stack.settings.sip_addr, device_xml(behaviour, int(self.started * 1000)), ["-"], 120)
        return proc

    def call(self, user: str, number: str, *, horizon_s: float = 60, talk_s: float = 1) -> SippProcess:
        proc = self._proc(f"caller-{user}")
        auth = f"[authentication username={user} password=pw-{user}]"
        xml = caller_xml(int(horizon_s * 1000), int(talk_s * 1000))
        proc.start(self.stack.settings.sip_addr, xml, [user, "conf.example", auth, number, user], horizon_s + 30)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()


@pytest.fixture
def phones(stack: Stack, tmp_path: Path) -> Iterator[Phones]:
    apply_yaml(stack, TENANT, tmp_path)
    wait_routable(stack, "conf-internal")
    p = Phones(stack, tmp_path)
    try:
        yield p
    finally:
        p.stop()
        asyncio.run(_hang_up_everything(stack))
        for user in ("1001", "1002", "1003", "1004"):
            r = sipp.unregister_all(stack.settings.sip_addr, user, "conf.example", f"pw-{user}")
            assert r.final == 200, r.stderr


def ari(stack: Stack) -> HttpAriTransport:
    s = stack.settings
    return HttpAriTransport(s.ari_url, s.ari_user, s.ari_password)


async def _hang_up_everything(stack: Stack) -> None:
    async with ari(stack) as t:
        client = AriClient(t, "pbx-test")
        for ch in await client.channels.list():
            try:
                await client.channels.hangup(ch.id)
            except AriNotFound:
                pass


def channels(stack: Stack) -> list[Channel]:
    async def go() -> list[Channel]:
        async with ari(stack) as t:
            return await AriClient(t, "pbx-test").channels.list()

    return asyncio.run(go())


def bridges(stack: Stack) -> list[Bridge]:
    async def go() -> list[Bridge]:
        async with ari(stack) as t:
            return await AriClient(t, "pbx-test").bridges.list()

    return asyncio.run(go())


def conference(stack: Stack, parties: int) -> Bridge | None:
    return next((b for b in bridges(stack) if b.id.startswith("conf-") and len(b.channels) == parties), None)


def api_headers(stack: Stack) -> dict[str, str]:
    """The operator token `dev up` made for the stack."""
    return {"Authorization": f"Bearer {stack.settings.exports()['PBX_HTTP_TOKEN']}"}


def controller_calls(stack: Stack) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        headers = api_headers(stack)
        async with aiohttp.ClientSession(headers=headers) as http, http.get(f"{serve_url(stack)}/calls") as resp:
            assert resp.status == 200, await resp.text()
            body: dict[str, Any] = await resp.json()
            return body

    return asyncio.run(go())


def final_of(proc: SippProcess) -> int | None:
    codes = [
        int(m.first_line.split()[1])
        for m in read_trace(proc.trace_path.read_text())
        if m.direction == "received" and m.first_line.startswith("SIP/2.0") and "INVITE" in m.headers.get("cseq", "")
    ]
    finals = [c for c in codes if c >= 200 and c != 401]
    return finals[-1] if finals else None


def test_answered_call_is_a_two_party_mixing_bridge_that_takes_a_third_party(stack: Stack, phones: Phones) -> None:
    bob = phones.device("1002", {"answer_at": 0})
    carol = phones.device("1003", {"answer_at": 0})
    alice = phones.call("1001", "1002", talk_s=6)

    bridge = wait_for("the answered call's conference bridge", lambda: conference(stack, 2))
    assert bridge.bridge_type == "mixing", bridge
    call_id = bridge.id.removeprefix("conf-")
    assert [c["call_id"] for c in controller_calls(stack)["conferences"]] == [call_id]

    # A third party through the CLI: the controller dials Carol into the same bridge.
    p = pbxctl(stack, "call", "add-party", call_id, "1003", "--http", serve_url(stack).removeprefix("http://"))
    assert p.returncode == 0, p.stderr
    wait_for("Carol in the conference", lambda: conference(stack, 3))
    assert carol.got("INVITE")

    # Alice hangs up (after 6 s of talk): Bob and Carol stay in the conference.
    assert alice.wait(30) == 0
    wait_for("the conference going on with 2 parties", lambda: conference(stack, 2))
    # Bob hangs up (from Asterisk's side, as his phone would): one party left, the conference ends.
    bob_leg = next(c for c in conference(stack, 2).channels if "-l" in c)  # type: ignore[union-attr]
    asyncio.run(_hangup(stack, bob_leg))
    wait_for("no channel left", lambda: not channels(stack))
    wait_for("no conference left", lambda: not any(b.id.startswith("conf-") for b in bridges(stack)))
    assert carol.wait(10) == 0 and carol.got("BYE")
    assert bob.got("BYE")


OTHER_TENANT = """
  other:
    domain: other.example
    endpoints:
      "1003": {auth: {password: pw-other-1003}}
    extensions:
      "1003": {type: simple, name: Other Carol, endpoints: ["1003"]}
"""


def _pbxctl_as(stack: Stack, token: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **stack.settings.exports())
    env.pop("PBX_HTTP_TOKEN")
    if token is not None:
        env["PBX_HTTP_TOKEN"] = token
    http = ["--http", serve_url(stack).removeprefix("http://")]
    return subprocess.run(
        [sys.executable, "-m", "pbxctl", *args, *http], capture_output=True, text=True, env=env, timeout=60
    )


def test_add_party_refuses_a_dial_string_and_another_tenants_token(
    stack: Stack, phones: Phones, tmp_path: Path
) -> None:
    apply_yaml(stack, TENANT + OTHER_TENANT, tmp_path)
    made = pbxctl(stack, "token", "create", "--name", "other-tenant", "--tenant", "other", "--json")
    assert made.returncode == 0, made.stderr
    other_token = json.loads(made.stdout)["token"]
    operator_token = stack.settings.exports()["PBX_HTTP_TOKEN"]
    phones.device("1002", {"answer_at": 0})
    phones.call("1001", "1002", talk_s=60)  # hung up by the fixture
    call_id = wait_for("the conference", lambda: conference(stack, 2)).id.removeprefix("conf-")

    # Issue #15: this string dialed tenant other's 1003 into tenant conf's conference.
    crafted = "1003@other.example/1003@other.example,"
    p = _pbxctl_as(stack, operator_token, "call", "add-party", call_id, crafted)
    assert p.returncode == 1 and "no dial-string syntax" in p.stderr and p.stderr.count("\n") == 1, p.stderr
    p = _pbxctl_as(stack, operator_token, "call", "add-party", call_id, "1003@other.example")
    assert p.returncode == 1 and "not of the call's tenant" in p.stderr, p.stderr
    # Tenant other's token neither sees tenant conf's call nor adds a party to it.
    p = _pbxctl_as(stack, other_token, "call", "list")
    assert p.returncode == 0 and json.loads(p.stdout) == {"ringing": [], "conferences": []}, p.stderr
    p = _pbxctl_as(stack, other_token, "call", "add-party", call_id, "1003")
    assert p.returncode == 1 and f"call {call_id}: not visible to token other-tenant" in p.stderr, p.stderr
    p = _pbxctl_as(stack, None, "call", "add-party", call_id, "1003")
    assert p.returncode == 1 and "bearer token is required" in p.stderr, p.stderr
    # Refused before any dial string was made: nobody else rings, the call still has two parties.
    assert not [c for c in channels(stack) if "1003@" in c.name]
    assert conference(stack, 2) is not None
    assert [c["call_id"] for c in controller_calls(stack)["conferences"]] == [call_id]


async def _hangup(stack: Stack, channel_id: str) -> None:
    async with ari(stack) as t:
        await AriClient(t, "pbx-test").channels.hangup(channel_id)


def test_a_user_without_call_waiting_is_busy_for_a_second_concurrent_call(stack: Stack, phones: Phones) -> None:
    bob = phones.device("1002", {})  # rings until cancelled
    first = phones.call("1001", "1002", horizon_s=20)
    wait_for("Bob's phone ringing", lambda: bob.got("INVITE"))
    second = phones.call("1003", "1002", horizon_s=20)
    assert second.wait(15) == 0
    assert final_of(second) == 486
    assert first.proc is not None and first.proc.poll() is None  # the first call still rings


def test_controller_killed_mid_ring_the_call_ends_cleanly(stack: Stack, phones: Phones) -> None:
    bob = phones.device("1002", {})
    alice = phones.call("1001", "1002", horizon_s=60)
    wait_for("Bob's phone ringing", lambda: bob.got("INVITE"))
    stack.serve.kill()
    stack.serve.start()
    # The new controller finds the caller in Stasis and the leg it cannot know: both are ended.
    assert alice.wait(20) == 0
    assert final_of(alice) == 503
    wait_for("Bob's phone cancelled", lambda: bob.got("CANCEL"))
    wait_for("no channel left", lambda: not channels(stack))


def test_controller_restarted_during_a_call_keeps_the_bridge(stack: Stack, phones: Phones) -> None:
    bob = phones.device("1002", {"answer_at": 0})
    alice = phones.call("1001", "1002", talk_s=8)
    bridge = wait_for("the conference bridge", lambda: conference(stack, 2))
    stack.serve.restart()
    assert conference(stack, 2) == bridge
    wait_for("the new controller adopting the conference", lambda: controller_calls(stack)["conferences"])
    # Alice hangs up after her 8 s: the new controller ends the conference and Bob gets a BYE.
    assert alice.wait(30) == 0
    assert bob.wait(15) == 0 and bob.got("BYE")
    wait_for("no channel left", lambda: not channels(stack))


def test_a_ringback_tone_is_early_media_and_the_call_is_counted(stack: Stack, phones: Phones) -> None:
    dave = phones.device("1004", {"answer_at": 1.0})  # rings for a second: long enough to hear the tone
    alice = phones.call("1001", "1004", talk_s=0.5)
    assert alice.wait(30) == 0
    received = [m.first_line for m in read_trace(alice.trace_path.read_text()) if m.direction == "received"]
    assert "SIP/2.0 183 Session Progress" in received  # the German ring tone, played by Asterisk
    assert received.index("SIP/2.0 183 Session Progress") < received.index("SIP/2.0 200 OK")
    assert dave.wait(10) == 0

    async def metrics() -> str:
        async with aiohttp.ClientSession() as http, http.get(f"{serve_url(stack)}/metrics") as resp:
            return await resp.text()

    text = asyncio.run(metrics())
    assert 'pbx_calls_total{result="answered"}' in text and "pbx_routing_seconds_count" in text, text
