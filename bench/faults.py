"""Faults without loss (#16): each fault on a private stack, and what it left behind.

    python bench/faults.py [--quick]

1. Postgres stopped for a few seconds, once with ``pg_ctl -m fast`` and once with ``-m immediate``
   (a crash: the unlogged ps_contacts comes back empty), while phones REGISTER (~15/s: refreshes of
   bindings made before, plus a few phones that move to a new port, a new binding) and one phone
   calls another (~5/s, each call talking 0.5 s). Figures: registrations that got 200 but are not
   in ps_contacts 10 s after Postgres is back (the new bindings among them are counted apart too:
   the node keeps them in its astdb and the contact sync writes them back); how long
   after Postgres was back a call still failed; channels left once the traffic ended.
2. The node's AMI unreachable (the node moved to a port nothing listens on, as an AMI that refuses
   would look to the pusher) during 1,000 edits, then back: edits never delivered, and endpoints
   whose callerid differs from the last edit.
3. `pbxctl serve` (so the pusher) killed -9 after 400 of 1,000 edits, then started: the same.
4. The controller (`pbxctl serve`) killed -9 while two calls ring and while two calls are bridged,
   then started: channels left once every phone is done. A caller who hangs up while it is down:
   seconds from the controller's start until the callee left alone in the bridge gets its BYE. A
   call placed while it restarts: its final status (asterisk_conf/extensions.conf waits for it).

Every figure is measured; nothing is asserted. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# The real-stack tests' helpers (edits, node counters, phones, channel listings): one copy of each.
sys.path.insert(0, str(REPO / "tests"))

import test_controller_stack as live  # noqa: E402
from test_contacts_sync import crash_postgres  # noqa: E402
from test_pusher_stack import (  # noqa: E402
    callerids,
    edit_many,
    expected_callerids,
    node_connected,
    node_counters,
    tenant,
)

from bench._pjsip import apply_config  # noqa: E402
from devstack import sipp  # noqa: E402
from devstack.play_sipp import caller_xml, device_xml  # noqa: E402
from devstack.sipp import SippProcess, read_trace, status_code  # noqa: E402
from devstack.stack import Stack, run_sql  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def wait_until(probe: Callable[[], Any], timeout: float, step: float = 0.05) -> float | None:
    """Seconds until ``probe()`` is true, or None when it is not within ``timeout``."""
    t0 = time.monotonic()
    while not probe():
        if time.monotonic() - t0 > timeout:
            return None
        time.sleep(step)
    return time.monotonic() - t0


def channel_count(stack: Stack) -> int:
    return len(live.channels(stack))


def settle_channels(stack: Stack, timeout: float = 15.0) -> int:
    """Channels still there after ``timeout`` (0 as soon as there are none)."""
    wait_until(lambda: channel_count(stack) == 0, timeout, 0.2)
    return channel_count(stack)


# --- 1. Postgres stopped under REGISTER and INVITE traffic ----------------------------------------

REFRESHED = 20  # phones 1000..1019: bound before the outage, refreshed during it
MOVED = 3  # phones 1020..1022: bound before, bind afresh from a new port during the outage
CALLER, CALLEE = "1098", "1099"


def pg_tenant() -> str:
    users = [str(1000 + i) for i in range(REFRESHED + MOVED)] + [CALLER, CALLEE]
    lines = [
        "tenants:",
        "  flt:",
        "    domain: flt.example",
        "    templates:",
        '      phone: {endpoint: {context: flt-internal, allow: "!all,ulaw", direct_media: "no"},'
        ' aor: {max_contacts: 1, remove_existing: "yes"}}',
        "    endpoints:",
        *[f'      "{u}": {{templates: [phone], auth: {{password: pw-{u}}}}}' for u in users],
        "    extensions:",
        *[f'      "{u}": {{type: simple, name: P{u}, endpoints: ["{u}"]}}' for u in users],
    ]
    return "\n".join(lines) + "\n"


def register_load(
    stack: Stack, tmp: Path, users: list[str], total: int, rate: float, port: int
) -> subprocess.Popen[bytes]:
    """``total`` REGISTERs cycling over ``users`` at ``rate``/s, all from ``port`` (so each one
    refreshes the binding the first made). Strict: sipp's exit status says whether all got 200."""
    d = Path(tempfile.mkdtemp(dir=tmp, prefix="reg-"))
    rows = "".join(f"{u};flt.example;[authentication username={u} password=pw-{u}];3600\n" for u in users)
    (d / "rows.csv").write_text("SEQUENTIAL\n" + rows)
    argv = [
        "sipp", stack.settings.sip_addr, "-sf", str(REPO / "bench" / "sipp" / "register_strict.xml"),
        "-inf", "rows.csv", "-m", str(total), "-r", f"{rate:g}", "-l", "50", "-i", "127.0.0.1",
        "-p", str(port), "-t", "u1", "-nostdin", "-timeout", "120s", "-trace_stat", "-stf", "stats.csv", "-fd", "1",
    ]  # fmt: skip
    return subprocess.Popen(argv, cwd=d, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def call_load(stack: Stack, tmp: Path, total: int, rate: float) -> tuple[subprocess.Popen[bytes], Path]:
    d = Path(tempfile.mkdtemp(dir=tmp, prefix="calls-"))
    (d / "scenario.xml").write_text(caller_xml(8_000, talk_ms=500))
    auth = f"[authentication username={CALLER} password=pw-{CALLER}]"
    (d / "rows.csv").write_text(f"SEQUENTIAL\n{CALLER};flt.example;{auth};{CALLEE};{CALLER}\n")
    argv = [
        "sipp", stack.settings.sip_addr, "-sf", "scenario.xml", "-inf", "rows.csv", "-m", str(total),
        "-r", f"{rate:g}", "-l", "50", "-i", "127.0.0.1", "-p", str(sipp.free_udp_port()), "-t", "u1",
        "-nostdin", "-timeout", "120s", "-trace_msg", "-message_file", "messages.log",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=d, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, d


def call_outcomes(d: Path) -> list[tuple[float, int | None]]:
    """(INVITE sent, epoch s; its final status, None if none came) of each call of a call_load."""
    first: dict[str, float] = {}
    final: dict[str, int] = {}
    for m in read_trace((d / "messages.log").read_text(errors="replace")):
        cid = m.headers.get("call-id", "")
        if m.direction == "sent" and m.first_line.startswith("INVITE "):
            first.setdefault(cid, m.at)
        code = status_code(m.first_line) if m.direction == "received" else None
        if code is not None and code >= 200 and code != 401 and "INVITE" in m.headers.get("cseq", ""):
            final[cid] = code
    return [(at, final.get(cid)) for cid, at in first.items()]


def stored(stack: Stack) -> set[tuple[str, int]]:
    """(user, port) of each contact of tenant flt in ps_contacts."""
    rows = run_sql(stack, "SELECT endpoint, uri FROM ps_contacts WHERE endpoint LIKE '%@flt.example'")
    return {(str(r["endpoint"]).split("@")[0], int(str(r["uri"]).split("^3B")[0].rsplit(":", 1)[1])) for r in rows}


def register(stack: Stack, user: str, port: int) -> int | None:
    return sipp.register(stack.settings.sip_addr, user, "flt.example", f"pw-{user}", local_port=port, timeout=5).final


def pg_outage(stack: Stack, tmp: Path, mode: str, outage_s: float) -> dict[str, Any]:
    """One Postgres stop (``fast`` or ``immediate``) under traffic; the figures it left."""
    refreshed = [str(1000 + i) for i in range(REFRESHED)]
    moved = [str(1000 + REFRESHED + i) for i in range(MOVED)]
    reg_port = sipp.free_udp_port()
    # Bound before the outage (and, after a previous round, bound afresh from a new port).
    reg = register_load(stack, tmp, refreshed, REFRESHED, 200, reg_port)
    reg.wait(60)
    for u in moved:  # also warms the node's caches, so that it can authenticate them without Postgres
        register(stack, u, sipp.free_udp_port())
    callee = SippProcess("callee", sipp.free_udp_port(), Path(tempfile.mkdtemp(dir=tmp, prefix="callee-")))
    r = sipp.register(stack.settings.sip_addr, CALLEE, "flt.example", f"pw-{CALLEE}", local_port=callee.port)
    assert r.final == 200, (r.responses, r.stderr)
    callee.start(stack.settings.sip_addr, device_xml({"answer_at": 0}, 0), ["-"], 120, calls=10**6)

    rate = 5.0
    before_s, after_s = 2.0, 8.0
    calls, calls_dir = call_load(stack, tmp, int(rate * (before_s + outage_s + after_s)), rate)
    time.sleep(before_s)  # traffic before the fault: its calls are the baseline
    t_stop = time.time()
    if mode == "fast":
        stack.postgres.stop()
    else:
        crash_postgres(stack)
    refresh = register_load(stack, tmp, refreshed, int(15 * outage_s), 15, reg_port)
    moved_to = {u: sipp.free_udp_port() for u in moved}
    moved_finals = {u: register(stack, u, port) for u, port in moved_to.items()}
    refresh_rc = refresh.wait(60)
    stack.postgres.start()
    pg_up = time.time()
    log(f"   Postgres down for {pg_up - t_stop:.1f} s (REGISTER refreshes meanwhile: sipp exit {refresh_rc})")

    # What a phone told 200 believes: its binding, from its port.
    want = {(u, reg_port) for u in refreshed} | {(u, moved_to[u]) for u, code in moved_finals.items() if code == 200}
    wait_until(lambda: want <= stored(stack), 10.0, 0.2)
    lost = sorted(u for u, _ in want - stored(stack))
    calls.wait(int(before_s + outage_s + after_s) + 60)
    outcomes = call_outcomes(calls_dir)
    failed_after = [at for at, code in outcomes if at >= pg_up and code != 200]
    unroutable = max(failed_after) - pg_up if failed_after else 0.0
    callee.stop()
    stuck = settle_channels(stack)
    return {
        "lost": lost,
        "lost_moved": sorted(set(lost) & set(moved)),
        "unroutable_s": round(unroutable, 2),
        "stuck": stuck,
        "calls": len(outcomes),
        "calls_failed": sum(code != 200 for _, code in outcomes),
        "refreshes_not_200": refresh_rc != 0,
        "moved_finals": moved_finals,
    }


# --- 2, 3. edits while the pusher cannot deliver -----------------------------------------------


def edits_lost(stack: Stack, name: str, rows0: int) -> tuple[int, int]:
    """(edits never delivered, endpoints not showing the last edit) once every change is delivered."""
    wait_until(lambda: node_counters(stack)[0] == 0, 120, 0.1)
    _, _, rows1 = node_counters(stack)
    want = expected_callerids(name, 100, 1000)
    seen = asyncio.run(callerids(stack, sorted(want)))
    return max(0, 1000 - (rows1 - rows0)), sum(seen.get(k) != v for k, v in want.items())


def edit_in_background(stack: Stack, name: str) -> tuple[threading.Thread, list[int]]:
    progress = [0]
    editor = threading.Thread(target=edit_many, args=(stack, name, 100, 1000, progress))
    editor.start()
    return editor, progress


def ami_outage(stack: Stack) -> tuple[int, int]:
    apply_config(stack, tenant("amioff", 100))
    wait_until(lambda: node_counters(stack)[0] == 0, 60, 0.1)
    name, port = stack.settings.name, stack.settings.ami_port
    _, _, rows0 = node_counters(stack)

    def move_node(to: int) -> None:
        run_sql(stack, "UPDATE pbx.nodes SET ami_port = $2 WHERE name = $1", name, to)
        run_sql(stack, "SELECT pg_notify('pbx_nodes', $1)", name)

    move_node(sipp.free_udp_port())  # nothing listens there over TCP either
    try:
        wait_until(lambda: not node_connected(stack), 30, 0.1)
        editor, _ = edit_in_background(stack, "amioff")
        editor.join(300)
    finally:
        move_node(port)
    return edits_lost(stack, "amioff", rows0)


def pusher_kill(stack: Stack) -> tuple[int, int]:
    apply_config(stack, tenant("kill9", 100))
    wait_until(lambda: node_counters(stack)[0] == 0, 60, 0.1)
    _, _, rows0 = node_counters(stack)
    editor, progress = edit_in_background(stack, "kill9")
    wait_until(lambda: progress[0] >= 400, 120, 0.01)
    stack.serve.kill()
    editor.join(300)
    stack.serve.start()
    return edits_lost(stack, "kill9", rows0)


# --- 4. the controller killed -9 -----------------------------------------------------------------


@contextmanager
def phones(stack: Stack, tmp: Path) -> Iterator[live.Phones]:
    """The registered sipp phones of test_controller_stack's tenant; unregistered afterwards."""
    p = live.Phones(stack, Path(tempfile.mkdtemp(dir=tmp, prefix="phones-")))
    try:
        yield p
    finally:
        p.stop()
        for user in ("1001", "1002", "1003", "1004"):
            sipp.unregister_all(stack.settings.sip_addr, user, "conf.example", f"pw-{user}")


def restart_controller(stack: Stack) -> float:
    t0 = time.monotonic()
    stack.serve.start()
    return time.monotonic() - t0


def controller_faults(stack: Stack, tmp: Path) -> dict[str, Any]:
    apply_config(stack, live.TENANT)
    out: dict[str, Any] = {}
    with phones(stack, tmp) as ph:  # two calls ringing
        bob, dave = ph.device("1002", {}), ph.device("1004", {})
        a, c = ph.call("1001", "1002", horizon_s=30), ph.call("1003", "1004", horizon_s=30)
        wait_until(lambda: bob.got("INVITE") and dave.got("INVITE"), 15)
        stack.serve.kill()
        out["restart_s"] = [restart_controller(stack)]
        a.wait(40)
        c.wait(40)
        out["ringing_finals"] = [live.final_of(a), live.final_of(c)]
        out["stuck_ringing"] = settle_channels(stack)
    with phones(stack, tmp) as ph:  # two calls bridged, going on through the crash
        bob, dave = ph.device("1002", {"answer_at": 0}), ph.device("1004", {"answer_at": 0})
        a, c = ph.call("1001", "1002", talk_s=5), ph.call("1003", "1004", talk_s=5)
        wait_until(lambda: len([b for b in live.bridges(stack) if b.id.startswith("conf-")]) == 2, 15)
        stack.serve.kill()
        out["restart_s"].append(restart_controller(stack))
        for proc in (a, c, bob, dave):
            proc.wait(40)
        out["bridged_byes"] = [bob.got("BYE"), dave.got("BYE")]
        out["stuck_bridged"] = settle_channels(stack)
    with phones(stack, tmp) as ph:  # the caller hangs up while no controller runs
        bob = ph.device("1002", {"answer_at": 0})
        a = ph.call("1001", "1002", talk_s=2)
        wait_until(lambda: live.conference(stack, 2), 15)
        stack.serve.kill()
        a.wait(30)
        wait_until(lambda: live.conference(stack, 1), 10)
        t0 = time.monotonic()
        stack.serve.start()
        t1 = time.monotonic()
        # Counted from the start command: the new process's own start is part of the wait. Apart:
        # from the moment it was healthy (connected), what the cleanup itself took.
        ended = wait_until(lambda: bob.got("BYE"), 30) is not None
        out["cleanup_s"] = round(time.monotonic() - t0, 2) if ended else None
        out["cleanup_after_start_s"] = round(time.monotonic() - t1, 2) if ended else None
        settle_channels(stack)
    with phones(stack, tmp) as ph:  # a call placed while the controller restarts
        bob = ph.device("1002", {"answer_at": 0})
        stack.serve.kill()
        a = ph.call("1001", "1002", talk_s=0.5)
        out["restart_s"].append(restart_controller(stack))
        a.wait(30)
        out["call_during_restart_final"] = live.final_of(a)
        settle_channels(stack)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter outages (under 5 minutes)")
    args = ap.parse_args()
    outage_s = 3.0 if args.quick else 10.0

    stack = Stack.named(f"bench-faults-{os.getpid()}")
    log("starting a private stack...")
    stack.up()
    try:
        with tempfile.TemporaryDirectory(prefix="pbx-bench-faults-") as t:
            tmp = Path(t)
            apply_config(stack, pg_tenant())
            pg = {}
            for mode in ("fast", "immediate"):
                log(f"1. Postgres {mode} stop for {outage_s:g} s under REGISTER and INVITE traffic")
                pg[mode] = pg_outage(stack, tmp, mode, outage_s)
                log(f"   {pg[mode]}")
            log("2. AMI unreachable during 1,000 edits")
            ami_lost, ami_wrong = ami_outage(stack)
            log(f"   {ami_lost} edits lost, {ami_wrong} endpoints wrong")
            log("3. pusher kill -9 during 1,000 edits")
            kill_lost, kill_wrong = pusher_kill(stack)
            log(f"   {kill_lost} edits lost, {kill_wrong} endpoints wrong")
            log("4. controller kill -9 while ringing, while bridged, with the caller gone, with a call arriving")
            ctl = controller_faults(stack, tmp)
            log(f"   {ctl}")
    finally:
        stack.destroy()
    figures = {
        "pg_restart_lost_registrations": sum(len(r["lost"]) for r in pg.values()),
        "pg_restart_unroutable_s": max(r["unroutable_s"] for r in pg.values()),
        "pg_restart_stuck_calls": sum(r["stuck"] for r in pg.values()),
        "ami_outage_lost_edits": ami_lost,
        "pusher_kill_lost_edits": kill_lost,
        "controller_kill_stuck_channels": ctl["stuck_ringing"] + ctl["stuck_bridged"],
        "caller_gone_while_controller_down_cleanup_s": ctl["cleanup_s"],
        # Added: what stands behind the figures above.
        "pg_restart_lost_new_bindings": sum(len(r["lost_moved"]) for r in pg.values()),
        "pg_restart_calls": sum(r["calls"] for r in pg.values()),
        "pg_restart_calls_failed": sum(r["calls_failed"] for r in pg.values()),
        "ami_outage_wrong_endpoints": ami_wrong,
        "pusher_kill_wrong_endpoints": kill_wrong,
        "caller_gone_cleanup_after_controller_up_s": ctl["cleanup_after_start_s"],
        "controller_restart_s": round(max(ctl["restart_s"]), 2),
        "controller_kill_ringing_finals": ctl["ringing_finals"],
        "call_during_controller_restart_final": ctl["call_during_restart_final"],
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
