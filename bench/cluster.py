"""A cluster of 3 Asterisk nodes behind the Kamailio edge (issue 18): what a call across nodes costs
against one within a node, and one node's Asterisk killed -9 under REGISTER and call load.

(a) Setup time at the caller (authenticated INVITE sent -> 200 OK received), routed by the entry
node's controller, through the edge both ways. For each node, a caller registered through it calls
a phone registered through the same node ("local") and one registered through another node
("cross"), interleaved in rounds in the same run; the ratio is at p50. The phones answer at once.
(b) Phones refresh their registrations every REFRESH_S (one REGISTER per phone per interval, digest
auth, spread evenly) while a phone of one node places a call a second; after a few seconds that
node's Asterisk is killed -9. failover_s: from the kill to the first success (200) of both kinds of
request the dead node had been taking (a REGISTER of one of its phones, a call of its caller), each
sent after the kill. lost_registrations: phones none of whose REGISTERs sent within one refresh
interval after the kill (plus the edge's timeout) got a 200. Then the node is started again:
rejoin_s, from its Asterisk answering to the edge dispatching to it again.

    python bench/cluster.py [--quick]

Last line: JSON with failover_s, lost_registrations, cross_node_setup_vs_local_ratio (goals: <= 5 s,
0, <= 1.2) and the figures behind them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import percentile
from bench._pjsip import SCENARIO as REGISTER_SCENARIO
from bench.calls import caller_run, log, pbxctl, phone, setup_times
from devstack import sipp
from devstack.stack import Stack, allow_lab_contexts, run_sql

NODES = 3
DOMAIN = "bench.example"
CALLEES = [str(n) for n in range(1001, 1016)]  # answering phones, each with its extension
PHONES = [str(n) for n in range(2001, 2061)]  # the REGISTER load; callers too
REFRESH_S = 10.0  # the load's refresh interval (a phone's is minutes; the edge's behaviour is the same)
EDGE_TIMEOUT_S = 2.0  # kamailio.cfg NODE_FR_MS: how long the edge waits for a node before the next
_FROM_USER = re.compile(r"sip:([^@>;]+)@")


def tenant_yaml() -> str:
    lines = [
        "tenants:",
        "  bench:",
        f"    domain: {DOMAIN}",
        "    templates:",
        '      phone: {endpoint: {context: bench-internal, allow: "!all,ulaw", direct_media: "no"}, '
        'aor: {max_contacts: 1, remove_existing: "yes"}}',
        "    endpoints:",
    ]
    lines += [f'      "{u}": {{templates: [phone], auth: {{password: pw-{u}}}}}' for u in CALLEES + PHONES]
    lines += ["    extensions:"]
    lines += [f'      "{u}": {{type: simple, name: P{u}, endpoints: ["{u}"]}}' for u in CALLEES]
    return "\n".join(lines) + "\n"


def homes(stack: Stack, users: list[str]) -> dict[str, str]:
    """user -> the node it registered through (ps_contacts.reg_server)."""
    rows = run_sql(
        stack,
        "SELECT endpoint, reg_server FROM ps_contacts WHERE endpoint = ANY($1::text[])",
        [f"{u}@{DOMAIN}" for u in users],
    )
    return {r["endpoint"].split("@")[0]: r["reg_server"] for r in rows}


def register_load(
    stack: Stack, tmp: Path, rate: float, total: int, expires: int
) -> tuple[subprocess.Popen[bytes], Path]:
    """Every phone of PHONES in turn, ``rate`` REGISTERs a second, ``total`` in all, from one port;
    the message trace is the record."""
    d = Path(tempfile.mkdtemp(dir=tmp, prefix="register-load-"))
    rows = "".join(f"{u};{DOMAIN};[authentication username={u} password=pw-{u}];{expires}\n" for u in PHONES)
    (d / "rows.csv").write_text("SEQUENTIAL\n" + rows)
    argv = [
        "sipp", stack.settings.sip_addr, "-sf", str(REGISTER_SCENARIO), "-inf", "rows.csv", "-m", str(total),
        "-r", f"{rate:g}", "-l", "200", "-i", "127.0.0.1", "-p", str(sipp.free_udp_port()), "-t", "u1", "-nostdin",
        "-timeout", f"{int(total / rate) + 60}s", "-trace_msg", "-message_file", "messages.log",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=d, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, d


def transactions(d: Path, method: str) -> list[tuple[str, float, float | None]]:
    """Per Call-ID of a sipp trace: (From user, first ``method`` sent, the 200 to it or None)."""
    sent: dict[str, tuple[str, float]] = {}
    ok: dict[str, float] = {}
    for m in sipp.read_trace((d / "messages.log").read_text(errors="replace")):
        cid = m.headers.get("call-id", "")
        if m.direction == "sent" and m.first_line.startswith(method + " ") and cid not in sent:
            user = _FROM_USER.search(m.headers.get("from", ""))
            sent[cid] = (user.group(1) if user else "", m.at)
        elif m.direction == "received" and m.first_line.startswith("SIP/2.0 200") and cid in sent:
            if m.headers.get("cseq", "").endswith(method):
                ok.setdefault(cid, m.at)
    return [(user, at, ok.get(cid)) for cid, (user, at) in sent.items()]


def setup_comparison(
    stack: Stack, tmp: Path, home: dict[str, str], rounds: int, per_round: int
) -> dict[str, list[float]]:
    """For each node, its caller to a phone of the same node and to one of another node."""
    nodes = [n.name for n in stack.settings.nodes()]
    pairs = []
    for node in nodes:
        caller = next((u for u in PHONES if home.get(u) == node), None)
        local = next((u for u in CALLEES if home.get(u) == node), None)
        cross = next((u for u in CALLEES if home.get(u) not in (node, None)), None)
        if caller is None or local is None or cross is None:
            raise SystemExit(f"node {node}: no caller, local or cross phone among the hashed AORs: {home}")
        pairs.append((caller, local, cross))
    samples: dict[str, list[float]] = {"local": [], "cross": []}
    per_pair: dict[tuple[str, str, str], list[float]] = {}
    for i in range(rounds):
        for node, (caller, local, cross) in zip(nodes, pairs, strict=True):
            order = (("local", local), ("cross", cross)) if i % 2 == 0 else (("cross", cross), ("local", local))
            for mode, callee in order:
                rc, d = caller_run(stack, tmp, caller, callee, per_round)
                if rc != 0:
                    raise SystemExit(f"setup round {i} ({mode}, {caller} -> {callee}): sipp exit {rc}; see {d}")
                took = setup_times(d)
                samples[mode].extend(took)
                per_pair.setdefault((node, mode, f"{caller} -> {callee} ({home[callee]})"), []).extend(took)
    for (node, mode, pair), took in sorted(per_pair.items()):
        log(f"  entering {node}, {mode}: {pair}: p50 {percentile(took, 50) * 1e3:.1f} ms")
    return samples


def wait_flags(stack: Stack, node_uri: str, prefix: str, timeout: float) -> float | None:
    """Seconds until the edge shows ``node_uri`` with flags starting ``prefix`` (None: not within)."""
    assert stack.edge is not None
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if stack.edge.destinations().get(node_uri, "").startswith(prefix):
            return time.monotonic() - t0
        time.sleep(0.05)
    return None


def failover(stack: Stack, tmp: Path, home: dict[str, str], victim_index: int, warm_s: float) -> dict[str, object]:
    victim = stack.asterisks[victim_index]
    name = victim.settings.name
    uri = f"sip:{victim.settings.node_sip_addr}"
    caller = next(u for u in PHONES if home.get(u) == name)
    callee = next(u for u in CALLEES if home.get(u) not in (name, None))
    dead_phones = {u for u in PHONES if home.get(u) == name}
    rate = len(PHONES) / REFRESH_S
    after_s = REFRESH_S + EDGE_TIMEOUT_S + 4
    total = int(rate * (warm_s + after_s))
    load, load_dir = register_load(stack, tmp, rate, total, expires=int(REFRESH_S * 3))
    calls: dict[str, tuple[int, Path]] = {}
    placer = threading.Thread(
        target=lambda: calls.setdefault("run", caller_run(stack, tmp, caller, callee, int(warm_s + after_s), rate=1))
    )
    placer.start()
    time.sleep(warm_s)  # the load's steady state before the kill
    killed_at = time.time()
    victim.kill()
    inactive_s = wait_flags(stack, uri, "I", 30)
    placer.join(after_s + 120)
    load.wait(after_s + 120)
    registers = transactions(load_dir, "REGISTER")
    invites = transactions(calls["run"][1], "INVITE")

    def first_success(txs: list[tuple[str, float, float | None]], users: set[str]) -> float | None:
        done = [ok for u, sent, ok in txs if u in users and sent >= killed_at and ok is not None]
        return min(done) - killed_at if done else None

    register_s = first_success(registers, dead_phones)
    call_s = first_success(invites, {caller})
    window = killed_at + REFRESH_S + EDGE_TIMEOUT_S
    refreshed = {u for u, sent, ok in registers if killed_at <= sent <= window and ok is not None}
    lost = sorted(set(PHONES) - refreshed)
    after = [(sent, ok) for _u, sent, ok in registers if sent >= killed_at]
    slowest = max((ok - sent for sent, ok in after if ok is not None), default=None)
    failed = sum(ok is None for _s, ok in after)
    log(f"killed {name} (its {len(dead_phones)} phones, caller {caller}); edge marked it inactive after "
        f"{inactive_s} s; first REGISTER of its phones OK after {register_s} s, first call after {call_s} s; "
        f"{len(lost)} phones not refreshed within {REFRESH_S:g} s + {EDGE_TIMEOUT_S:g} s; slowest REGISTER "
        f"after the kill {slowest} s; {failed} REGISTERs failed after the kill")  # fmt: skip
    t0 = time.monotonic()
    victim.start()
    started_s = time.monotonic() - t0
    rejoin_s = wait_flags(stack, uri, "A", 30)
    log(f"{name} started again in {started_s:.1f} s, dispatched to again {rejoin_s} s later")
    parts = [s for s in (register_s, call_s) if s is not None]
    return {
        "failover_s": round(max(parts), 2) if len(parts) == 2 else None,
        "lost_registrations": len(lost),
        "register_failover_s": None if register_s is None else round(register_s, 2),
        "call_failover_s": None if call_s is None else round(call_s, 2),
        "inactive_after_s": None if inactive_s is None else round(inactive_s, 2),
        "slowest_register_after_kill_s": None if slowest is None else round(slowest, 2),
        "failed_registers_after_kill": failed,
        "failed_calls_after_kill": sum(ok is None for _u, sent, ok in invites if sent >= killed_at),
        "rejoin_s": None if rejoin_s is None else round(rejoin_s, 2),
        "phones": len(PHONES),
        "refresh_s": REFRESH_S,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer setup rounds (under 5 minutes)")
    args = ap.parse_args()
    rounds, per_round = (4, 5) if args.quick else (10, 10)

    stack = Stack.named(f"bench-cluster-{os.getpid()}", nodes=NODES)
    log(f"starting a private {NODES}-node cluster...")
    stack.up()
    try:
        with tempfile.TemporaryDirectory(prefix="pbx-bench-cluster-") as t:
            tmp = Path(t)
            cfg = tmp / "tenant.yaml"
            cfg.write_text(tenant_yaml())
            allow_lab_contexts(stack)
            pbxctl(stack, "apply", str(cfg))
            devices = [phone(stack, tmp, u, 10**6) for u in CALLEES]
            load, load_dir = register_load(stack, tmp, 50, len(PHONES), expires=int(REFRESH_S * 3))
            if load.wait(120) != 0:
                raise SystemExit(f"first registration of the load phones: sipp exit {load.returncode}; see {load_dir}")
            home = homes(stack, CALLEES + PHONES)
            spread = {n.name: sum(h == n.name for h in home.values()) for n in stack.settings.nodes()}
            log(f"phones per node: {spread}")

            samples = setup_comparison(stack, tmp, home, rounds, per_round)
            local, cross = samples["local"], samples["cross"]
            l50, c50 = percentile(local, 50), percentile(cross, 50)
            log(f"setup INVITE->200: same node p50 {l50 * 1e3:.1f} ms p95 {percentile(local, 95) * 1e3:.1f} ms; "
                f"across nodes p50 {c50 * 1e3:.1f} ms p95 {percentile(cross, 95) * 1e3:.1f} ms; "
                f"ratio {c50 / l50:.3f}")  # fmt: skip

            # The last node: not the one whose `pbxctl serve` runs the pusher (that one survives a
            # kill of its Asterisk alike, but the log is simpler to read).
            result = failover(stack, tmp, home, NODES - 1, warm_s=4.0)
            for d in devices:
                d.stop()
    finally:
        stack.destroy()
    out = {
        "failover_s": result.pop("failover_s"),
        "lost_registrations": result.pop("lost_registrations"),
        "cross_node_setup_vs_local_ratio": round(c50 / l50, 3),
        "local_setup_p50_ms": round(l50 * 1000, 2),
        "cross_setup_p50_ms": round(c50 * 1000, 2),
        "local_setup_p95_ms": round(percentile(local, 95) * 1000, 2),
        "cross_setup_p95_ms": round(percentile(cross, 95) * 1000, 2),
        "calls_per_mode": len(local),
        "nodes": NODES,
        **result,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
