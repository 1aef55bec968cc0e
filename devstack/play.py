"""`pbxctl call play`: a routing scenario played live on the running stack, seen from the devices.

The scenario's config is applied to the stack's database; every device in `registrations` is a sipp
UAS that registers from its own port and then behaves as `behaviour` says; every static contact (an
AOR's `contact`, device `<endpoint>/<n>`) is a sipp UAS listening at that address (loopback only);
`in_use` becomes real calls held up on those endpoints; a sipp caller dials `called`: with the
endpoint's password, or for a trunk endpoint (no password) from its `identify` address, or for
`endpoint: null` with no credentials at all. What the devices received (INVITE = ring, with the
request-URI user as `dialed` on a trunk's devices; CANCEL = stop; their own 200 = answer, their
own 486 = rejected) is the timeline, with times from the caller's first INVITE, in the JSON of
`route simulate`.

On a cluster stack every device registers and the caller dials through the edge (`PBX_SIP_ADDR`):
each phone lands on the node the edge hashes its AOR to, the call enters the node of the caller's
AOR (its From), and the calls of `in_use` are held on every node (devstack/play_nodes.py). A
carrier's INVITE (a trunk caller, sent from its identify address) is named by the edge, which
matches that address, and the node identifies the carrier by the edge's header (sql/027).

Live, an INVITE without credentials that no identify matches is challenged (401) and never
reaches the controller: there is no anonymous endpoint, so such a caller gets `error:noauth`
(where the simulator routes an outside caller, `call.endpoint: null`, e.g. S48). A phone that
presents another user's number (From) with its own credentials is refused by Asterisk itself (it
identifies the endpoint by the From user, whose password it does not have: 401 again), which is
`error:forbidden`; the controller refuses the same (403) when the endpoint is identified otherwise.
A 480 after devices rang and were cancelled is `noanswer` (the ring timeout); without any device
cancelled it is `unavailable` (SIP has one code for both).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from devstack import sipp
from devstack.play_nodes import PlayError, PlayTarget, calls_held
from devstack.play_sipp import caller_xml, device_xml
from devstack.services import ServicesError, wait_delivered
from devstack.sipp import Message, SippProcess, read_trace, status_code
from routing.model import directory_from_config, static_contacts_from_config
from routing.stage2 import static_device_name
from sorcery_backend.apply import apply_config
from sorcery_backend.declarative import Config, parse_config

__all__ = ["Message", "PlayError", "PlayTarget", "SippProcess", "play", "read_trace"]

# Time to start every device (all at once; each start returns once it holds its port) before t0,
# the clock of answer_at and reject_at.
_START_MARGIN_S = 0.4


@dataclass
class _Plan:
    tenant: str
    domain: str
    passwords: dict[str, tuple[str, str]]  # endpoint -> (auth user, password)
    devices: dict[str, str] = field(default_factory=dict)  # registering device -> endpoint
    static: dict[str, tuple[str, str, int]] = field(default_factory=dict)  # static device -> (endpoint, ip, port)
    trunk_endpoints: set[str] = field(default_factory=set)  # their devices report `dialed`


@dataclass(frozen=True)
class _Caller:
    endpoint: str | None  # None: unauthenticated
    ip: str = "127.0.0.1"
    credentials: tuple[str, str] | None = None  # (auth user, password); None: sends none


_CONTACT_HOST = re.compile(r"^sips?:(?:[^@;>]*@)?(\[[^\]]+\]|[^:;>]+)(?::(\d+))?")


def _loopback(address: str, what: str) -> str:
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        ip = None
    if ip is None or ip.version != 4 or not ip.is_loopback:
        raise PlayError(f"{what}: {address} is not a 127.0.0.0/8 address (live play binds loopback addresses only)")
    return str(ip)


def _plan(scenario: Mapping[str, Any]) -> tuple[Config, _Plan]:
    call = scenario.get("call") or {}
    tenant = str(call.get("tenant"))
    config = parse_config(scenario.get("config") or {})
    t = config.tenants.get(tenant)
    if t is None:
        raise PlayError(f"scenario: call.tenant {tenant} is not in config.tenants")
    plan = _Plan(tenant, t.domain, {})
    for endpoint, devices in (scenario.get("registrations") or {}).items():
        for dev in devices or ():
            plan.devices[str(dev)] = str(endpoint)
    # The simulator's own reading of the file: the same devices, named alike.
    raw = scenario["config"]["tenants"][tenant]
    for endpoint, contacts in static_contacts_from_config(raw).items():
        for i, contact in enumerate(contacts, start=1):
            m = _CONTACT_HOST.match(contact.uri)
            what = f"endpoint {endpoint}: contact {contact.uri}"
            if m is None:
                raise PlayError(f"{what}: no host to listen at")
            plan.static[static_device_name(endpoint, i)] = (endpoint, _loopback(m[1], what), int(m[2] or 5060))
    directory = directory_from_config(tenant, raw)
    plan.trunk_endpoints = {ep for n in directory.trunks for ep in directory.extensions[n].endpoints}
    return config, plan


async def _read_credentials(conn: asyncpg.Connection, config: Config, plan: _Plan) -> None:
    """The auth username Asterisk checks (after inheritance) from the realtime view itself; the
    password from the scenario, since the database keeps only its digest."""
    tenant = config.tenants[plan.tenant]
    assert tenant is not None
    rows = await conn.fetch(
        "SELECT id, username FROM public.ps_auths WHERE id LIKE '%@' || $1 AND id NOT LIKE '%~out'",
        plan.domain,
    )
    for r in rows:
        name = r["id"].rsplit("@", 1)[0]
        endpoint = tenant.endpoints.get(name)
        password = endpoint.auth.get("password") if endpoint is not None else None
        if password:
            plan.passwords[name] = (r["username"] or name, password[0])
    for dev, endpoint_name in plan.devices.items():
        if endpoint_name not in plan.passwords:
            raise PlayError(f"registrations: {dev}: endpoint {endpoint_name} has no auth password to register with")


async def play(scenario: Mapping[str, Any], target: PlayTarget, horizon_s: float | None = None) -> dict[str, Any]:
    if shutil.which("sipp") is None:
        raise PlayError("sipp is not installed (apt-get install sip-tester)")
    config, plan = _plan(scenario)
    call = scenario["call"]
    anonymous = "endpoint" in call and call["endpoint"] is None
    caller_endpoint = (
        None if anonymous else str(call.get("endpoint") or _first_endpoint(config, plan.tenant, str(call["caller"])))
    )
    horizon = float(horizon_s if horizon_s is not None else scenario.get("horizon_s") or 120)
    behaviour = {str(k): v or {} for k, v in (scenario.get("behaviour") or {}).items()}
    _check_transfers(behaviour)

    with tempfile.TemporaryDirectory(prefix="pbx-play-") as tmp:
        conn = await asyncpg.connect(target.database_url)
        try:
            await apply_config(conn, config)
            try:
                # A call placed before every connected node has the change (cached objects expired,
                # endpoint contexts created) could meet yesterday's endpoint or a missing context.
                await wait_delivered(conn)
            except ServicesError as exc:
                raise PlayError(f"the config change: {exc} (pbxctl push status)") from None
            await _read_credentials(conn, config, plan)
            caller = await _caller(conn, plan, caller_endpoint)
            await _forget_contacts(conn, target, plan)
            devices = await _register_devices(target, plan, Path(tmp))
            devices.update(_static_devices(plan, Path(tmp)))
            in_use = {str(ep): int(n or 0) for ep, n in (scenario.get("in_use") or {}).items()}
            async with calls_held(target, plan.domain, in_use, Path(tmp)):
                return await asyncio.to_thread(
                    _run_call, target, plan, devices, behaviour, caller, call, horizon, Path(tmp)
                )
        finally:
            try:
                await _forget_contacts(conn, target, plan)
            finally:
                await conn.close()


def _check_transfers(behaviour: Mapping[str, Mapping[str, Any]]) -> None:
    """``transfer_at`` (seconds, the clock of ``answer_at``) needs the number to transfer to, and a
    device that answers before it."""
    for dev, b in behaviour.items():
        if "transfer_at" not in b and "transfer_to" not in b:
            continue
        if "transfer_at" not in b or not str(b.get("transfer_to") or ""):
            raise PlayError(f"behaviour: {dev}: transfer_at and transfer_to go together (when, and the number)")
        if not re.fullmatch(r"[+*#0-9A-Za-z]+", str(b["transfer_to"])):
            raise PlayError(f"behaviour: {dev}: transfer_to {b['transfer_to']!r} is not a number one can dial")
        if "answer_at" not in b or float(b["transfer_at"]) < float(b["answer_at"]):
            raise PlayError(f"behaviour: {dev}: transfer_at needs an answer_at before it (only a call up transfers)")


async def _caller(conn: asyncpg.Connection, plan: _Plan, endpoint: str | None) -> _Caller:
    """How the caller presents itself: the endpoint's password, else its identify address (a
    trunk: the carrier calls from there), else nothing (unauthenticated)."""
    if endpoint is None:
        return _Caller(None)
    if endpoint in plan.passwords:
        return _Caller(endpoint, credentials=plan.passwords[endpoint])
    match = await conn.fetchval(
        "SELECT match FROM public.ps_endpoint_id_ips WHERE endpoint = $1 ORDER BY id LIMIT 1",
        f"{endpoint}@{plan.domain}",
    )
    if not match:
        raise PlayError(f"call: the caller's endpoint {endpoint} has neither an auth password nor an identify match")
    first = str(match).split(",")[0].strip().split("/")[0]
    return _Caller(endpoint, _loopback(first, f"endpoint {endpoint}: identify match"))


def _static_devices(plan: _Plan, tmp: Path) -> dict[str, SippProcess]:
    out = {}
    for i, (dev, (_endpoint, ip, port)) in enumerate(plan.static.items()):
        d = tmp / f"static-{i}"
        d.mkdir()
        out[dev] = SippProcess(dev, port, d, ip=ip)
    return out


def _first_endpoint(config: Config, tenant: str, caller: str) -> str:
    t = config.tenants.get(tenant)
    ext = t.extensions.get(caller) if t is not None else None
    if ext is None or not ext.endpoints:
        raise PlayError(f"call: caller {caller} has no endpoint to call from (set call.endpoint)")
    return ext.endpoints[0]


async def _forget_contacts(conn: asyncpg.Connection, target: PlayTarget, plan: _Plan) -> None:
    """Registrations left by an earlier play would ring dead ports, hide "offline" and fill the AORs'
    max_contacts. The node keeps contacts in its astdb cache too, so they are dropped the SIP way
    (``Contact: *``); rows of endpoints without a password to do that with go by hand."""
    rows = await conn.fetch(
        "SELECT DISTINCT endpoint FROM public.ps_contacts WHERE endpoint LIKE '%@' || $1", plan.domain
    )
    endpoints = {r["endpoint"].rsplit("@", 1)[0] for r in rows} | set(plan.devices.values())

    def unregister(endpoint: str) -> None:
        user, password = plan.passwords[endpoint]
        r = sipp.unregister_all(target.sip_addr, endpoint, plan.domain, password, auth_user=user)
        if r.final != 200:
            raise PlayError(f"registrations: clearing {endpoint}@{plan.domain} got {r.final}: {r.stderr[-200:]}")

    await asyncio.gather(*(asyncio.to_thread(unregister, ep) for ep in sorted(endpoints) if ep in plan.passwords))
    await conn.execute("DELETE FROM public.ps_contacts WHERE endpoint LIKE '%@' || $1", plan.domain)


async def _register_devices(target: PlayTarget, plan: _Plan, tmp: Path) -> dict[str, SippProcess]:
    devices: dict[str, SippProcess] = {}
    for dev in plan.devices:
        d = tmp / f"dev-{len(devices)}"
        d.mkdir()
        devices[dev] = SippProcess(dev, sipp.free_udp_port(), d)

    def register(dev: str) -> None:
        endpoint = plan.devices[dev]
        user, password = plan.passwords[endpoint]
        r = sipp.register(
            target.sip_addr, endpoint, plan.domain, password, auth_user=user, local_port=devices[dev].port
        )
        if r.final != 200:
            raise PlayError(
                f"registrations: {dev} ({endpoint}@{plan.domain}) REGISTER got {r.final}: {r.stderr[-200:]}"
            )

    await asyncio.gather(*(asyncio.to_thread(register, dev) for dev in devices))
    return devices


def _run_call(
    target: PlayTarget,
    plan: _Plan,
    devices: dict[str, SippProcess],
    behaviour: Mapping[str, Mapping[str, Any]],
    who: _Caller,
    call: Mapping[str, Any],
    horizon: float,
    tmp: Path,
) -> dict[str, Any]:
    # Only a device that answers or rejects at a given time reads the clock: the start of the
    # others need not be waited out.
    clocked = any("answer_at" in b or "reject_at" in b for dev, b in behaviour.items() if dev in devices)
    t0 = time.time() + (_START_MARGIN_S if clocked else 0.0)
    t0_ms = int(t0 * 1000)
    d = tmp / "caller"
    d.mkdir()
    caller = SippProcess("caller", sipp.free_udp_port(), d, movable=True, ip=who.ip)
    name = str(call.get("callername") or "")
    auth = ""
    if who.credentials is not None:
        user, password = who.credentials
        auth = f"[authentication username={user} password={password}]"
    row = [str(call["caller"]), plan.domain, auth, str(call["called"]), name]
    # A transfer happens during the talk: the caller then stays on until the horizon.
    talk_s = horizon if any("transfer_at" in b for b in behaviour.values()) else 1.0
    xml = caller_xml(int(horizon * 1000), int(talk_s * 1000), auth=who.credentials is not None)
    try:
        _start_devices(target.sip_addr, devices, behaviour, t0_ms, horizon + 60)
        time.sleep(max(0.0, t0 - time.time()))  # the agreed start time, not a wait for some state
        caller.start(target.sip_addr, xml, row, horizon + talk_s + 30)
        assert caller.proc is not None
        caller.proc.wait(timeout=horizon + talk_s + 40)
        # Devices that rang end by themselves (CANCEL or BYE); wait for those, kill the rest.
        deadline = time.monotonic() + 5
        for proc in devices.values():
            if proc.proc is not None and proc.proc.poll() is None and proc.got("INVITE"):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    finally:
        caller.stop()
        for proc in devices.values():
            proc.stop()
    endpoints = {**plan.devices, **{dev: ep for dev, (ep, _, _) in plan.static.items()}}
    trunk_devices = {dev for dev, ep in endpoints.items() if ep in plan.trunk_endpoints}
    return _timeline(caller.messages(), {dev: p.messages() for dev, p in devices.items()}, horizon, trunk_devices)


def _start_devices(
    sip_addr: str,
    devices: Mapping[str, SippProcess],
    behaviour: Mapping[str, Mapping[str, Any]],
    t0_ms: int,
    timeout_s: float,
) -> None:
    """Every device at once: each start returns once its sipp holds its port, which one after the
    other added up to most of a play's set-up."""

    def start(item: tuple[str, SippProcess]) -> None:
        dev, proc = item
        proc.start(sip_addr, device_xml(behaviour.get(dev) or {}, t0_ms), ["-"], timeout_s)

    with ThreadPoolExecutor(max_workers=max(1, len(devices))) as pool:
        list(pool.map(start, devices.items()))


_FINALS = {200: "answered", 486: "busy", 600: "busy", 480: "unavailable", 408: "noanswer", 487: "noanswer"}


def _timeline(
    caller: list[Message], devices: Mapping[str, list[Message]], horizon: float, trunk_devices: Collection[str] = ()
) -> dict[str, Any]:
    invites = [m for m in caller if m.direction == "sent" and m.first_line.startswith("INVITE ")]
    if not invites:
        raise PlayError("the caller sent no INVITE (is sipp able to reach the stack?)")
    t0 = invites[0].at
    cancel_at = next((m.at for m in caller if m.direction == "sent" and m.first_line.startswith("CANCEL ")), None)
    # The caller cancels by its own timer, at the horizon or later: on a loaded machine its trace
    # can log that CANCEL after a device logged the CANCEL it caused.
    hangup_at = None if cancel_at is None else min(cancel_at, t0 + horizon)
    status, result = "ok", "noanswer"
    challenged = any(m.direction == "sent" and "authorization" in m.headers for m in caller)
    cancelled = any(
        m.direction == "received" and m.first_line.startswith("CANCEL ") for ms in devices.values() for m in ms
    )
    for m in caller:
        code = status_code(m.first_line)
        if m.direction == "received" and code is not None and code >= 200 and "INVITE" in m.headers.get("cseq", ""):
            if code == 401:
                if m.headers.get("cseq", "").startswith("1 "):
                    continue  # the challenge a caller with credentials answers
                # Refused credentials: they are not those of the endpoint the From names (a phone
                # presenting another user's number). None sent: nothing names an endpoint.
                status, result = ("error:forbidden" if challenged else "error:noauth"), "noroute"
            elif code == 480:
                result = "noanswer" if cancelled else "unavailable"
            elif code == 404:
                status, result = "noroute", "noroute"
            elif code == 403:
                status, result = "error:forbidden", "noroute"
            elif code in (500, 503):
                status, result = "error:failure", "noroute"
            else:
                result = _FINALS.get(code, "noanswer")
    events: list[dict[str, Any]] = []

    def t(m: Message) -> float:
        return round(m.at - t0, 2)

    for dev, messages in devices.items():
        for m in messages:
            if (
                m.direction == "received"
                and m.first_line.startswith("INVITE ")
                and "tag=" not in m.headers.get("to", "")
            ):
                display, user = _from(m.headers.get("from", ""))
                ring = {"t": t(m), "ring": dev, "caller": user, "callername": display}
                if dev in trunk_devices:
                    ring["dialed"] = _request_user(m.first_line)
                events.append(ring)
            elif m.direction == "received" and m.first_line.startswith("CANCEL "):
                why = "drop"
                if "cause=200" in m.headers.get("reason", ""):
                    why = "answered_elsewhere"
                elif hangup_at is not None and m.at >= hangup_at:
                    why = "caller_hangup"
                events.append({"t": t(m), "stop": dev, "why": why})
            elif m.direction == "sent" and m.first_line.startswith("REFER "):
                events.append({"t": t(m), "transfer": dev, "to": _refer_to(m), "result": _transfer_result(messages)})
            elif m.direction == "sent" and "INVITE" in m.headers.get("cseq", ""):
                code = status_code(m.first_line)
                if code == 200 and not any(e.get("answer") == dev for e in events):
                    events.append({"t": t(m), "answer": dev})
                elif code == 486 and not any(e.get("stop") == dev for e in events):
                    events.append({"t": t(m), "stop": dev, "why": "rejected"})
    events.sort(key=lambda e: (e["t"], 0 if "ring" in e else 1))
    return {"status": status, "result": result, "timeline": events, "horizon_s": horizon}


def _refer_to(refer: Message) -> str:
    m = re.search(r"sips?:([^@;>]+)@", refer.headers.get("refer-to", ""))
    return m.group(1) if m else ""


def _transfer_result(messages: list[Message]) -> str:
    """``answered`` when the last NOTIFY's sipfrag says 200, else ``failed`` (declined, nobody
    answered, or no final NOTIFY at all)."""
    frags = [m.body for m in messages if m.direction == "received" and m.first_line.startswith("NOTIFY ")]
    return "answered" if frags and frags[-1].startswith("SIP/2.0 200") else "failed"


def _request_user(first_line: str) -> str:
    """``INVITE sip:+4930123@127.0.0.2:5070 SIP/2.0`` → ``+4930123`` (the number a trunk sends out)."""
    m = re.match(r"INVITE sips?:([^@;>\s]+)@", first_line)
    return m.group(1) if m else ""


def _from(value: str) -> tuple[str, str]:
    display = value.split("<", 1)[0].strip().strip('"') if "<" in value else ""
    user = re.search(r"sips?:([^@;>]+)@", value)
    return display, user.group(1) if user else ""
