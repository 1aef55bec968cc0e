"""Call setup through the ARI controller vs a plain Dial(), and the highest load with no failure.

(a) Setup time at the caller (authenticated INVITE sent -> 200 OK received), 1001 -> 1002 on the
same stack in the same run, interleaved in rounds: once through Stasis and the controller (routing
tree, originate per contact, mixing bridge), once through the `pbx-dial-test` context (a plain
Dial() of the same endpoint), and once through the least an ARI app can do (bench/_ari_floor.py:
originate, answer, bridge; no routing). The phone answers at once; the ratios are at p50.
(b) sipp calls at rising cps into group 2000 (one rank of 3 phones that answer at once; the two
that lose are cancelled or hung up), each call talking 1 s; each level runs for a while and the
highest cps where every call succeeded is reported.

    python bench/calls.py [--quick]

Last line: JSON with setup_vs_dial_ratio and max_cps_zero_fail (and the figures behind them),
floor_vs_dial_ratio: the baseline ARI app over Dial(), and controller_vs_floor_ratio: the controller
over the baseline ARI app (its own share above what ARI call control costs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ari_app.controller.call import dial_string
from bench import _ari_floor
from bench._common import LAB_POLICY, percentile
from devstack import sipp
from devstack.play import SippProcess, read_trace
from devstack.play_sipp import caller_xml, device_xml
from devstack.stack import Stack, run_sql

TENANT = """
tenants:
  bench:
    domain: bench.example
    templates:
      phone: {endpoint: {context: bench-internal, allow: "!all,ulaw", direct_media: "no"}, aor: {max_contacts: 2}}
    endpoints:
      "1001": {templates: [phone], auth: {password: pw-1001}}
      "1002": {templates: [phone], auth: {password: pw-1002}}
      "1003": {templates: [phone], auth: {password: pw-1003}}
      "1004": {templates: [phone], auth: {password: pw-1004}}
      "1008": {templates: [phone], auth: {password: pw-1008}, endpoint: {context: pbx-ari-floor}}
      "1009": {templates: [phone], auth: {password: pw-1009}, endpoint: {context: pbx-dial-test}}
    extensions:
      "1001": {type: simple, name: Alice, endpoints: ["1001"]}
      "1002": {type: simple, name: Bob, endpoints: ["1002"]}
      "1003": {type: simple, name: Carol, endpoints: ["1003"]}
      "1004": {type: simple, name: Dave, endpoints: ["1004"]}
      "1008": {type: simple, name: Floor, endpoints: ["1008"]}
      "1009": {type: simple, name: Dialer, endpoints: ["1009"]}
      "2000": {type: group, name: Team, ranks: [{mode: default, members: ["1002", "1003", "1004"]}]}
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pbxctl(stack: Stack, *args: str) -> None:
    env = dict(os.environ, **stack.settings.exports())
    p = subprocess.run([sys.executable, "-m", "pbxctl", *args], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"pbxctl {' '.join(args)}: {p.stderr.strip()}")


def phone(stack: Stack, tmp: Path, user: str, calls: int) -> SippProcess:
    d = Path(tempfile.mkdtemp(dir=tmp, prefix=f"dev-{user}-"))
    proc = SippProcess(f"dev-{user}", sipp.free_udp_port(), d)
    r = sipp.register(stack.settings.sip_addr, user, "bench.example", f"pw-{user}", local_port=proc.port)
    if r.final != 200:
        raise SystemExit(f"REGISTER {user}: {r.responses} {r.stderr[-200:]}")
    proc.start(stack.settings.sip_addr, device_xml({"answer_at": 0}, 0), ["-"], 3600, calls=calls)
    assert proc.proc is not None
    return proc


def caller_run(
    stack: Stack, tmp: Path, user: str, number: str, calls: int, *, rate: float | None = None, trace: bool = True
) -> tuple[int, Path]:
    d = Path(tempfile.mkdtemp(dir=tmp, prefix=f"caller-{user}-"))
    (d / "scenario.xml").write_text(caller_xml(30_000, talk_ms=1000 if rate else 1))
    (d / "rows.csv").write_text(
        f"SEQUENTIAL\n{user};bench.example;[authentication username={user} password=pw-{user}];{number};{user}\n"
    )
    argv = ["sipp", stack.settings.sip_addr, "-sf", "scenario.xml", "-inf", "rows.csv", "-m", str(calls),
            "-i", "127.0.0.1", "-p", str(sipp.free_udp_port()), "-t", "u1", "-nostdin",
            "-timeout", f"{int(calls / (rate or 5)) + 60}s", "-max_socket", "4096"]  # fmt: skip
    argv += ["-r", f"{rate:g}", "-l", str(int(rate * 4) + 10)] if rate else ["-l", "1"]
    if trace:
        argv += ["-trace_msg", "-message_file", "messages.log"]
    p = subprocess.run(argv, cwd=d, stdin=subprocess.DEVNULL, capture_output=True, timeout=calls / (rate or 5) + 120)
    return p.returncode, d


def setup_times(d: Path) -> list[float]:
    sent: dict[str, float] = {}
    out: list[float] = []
    by_call: dict[str, list[tuple[float, str, str]]] = defaultdict(list)
    for m in read_trace((d / "messages.log").read_text(errors="replace")):
        by_call[m.headers.get("call-id", "")].append(
            (m.at, m.direction, m.first_line + " " + m.headers.get("cseq", ""))
        )
    for cid, msgs in by_call.items():
        for at, direction, line in msgs:
            if direction == "sent" and line.startswith("INVITE ") and line.endswith("2 INVITE"):
                sent[cid] = at
            elif (
                direction == "received" and line.startswith("SIP/2.0 200") and line.endswith("2 INVITE") and cid in sent
            ):
                out.append(at - sent.pop(cid))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer calls, shorter load levels (under 5 minutes)")
    ap.add_argument("--no-load", action="store_true", help="only the setup-time comparison")
    args = ap.parse_args()
    rounds, per_round = (6, 10) if args.quick else (20, 20)
    level_s = 10 if args.quick else 30
    levels = [10, 20, 30, 40, 50, 60, 70] if args.quick else [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]

    stack = Stack.named(f"bench-calls-{os.getpid()}")
    log("starting a private stack...")
    stack.up()
    try:
        with tempfile.TemporaryDirectory(prefix="pbx-bench-calls-") as t:
            tmp = Path(t)
            cfg = tmp / "tenant.yaml"
            cfg.write_text(TENANT)
            run_sql(stack, LAB_POLICY)
            pbxctl(stack, "apply", str(cfg))
            phones = [phone(stack, tmp, u, 10**6) for u in ("1002", "1003", "1004")]
            _ari_floor.install_context(stack)
            floor_dial = dial_string(
                "1002@bench.example",
                run_sql(stack, "SELECT uri FROM ps_contacts WHERE endpoint = $1", "1002@bench.example")[0]["uri"],
                None,
            )
            samples: dict[str, list[float]] = {"1001": [], "1008": [], "1009": []}  # ours, floor, Dial()
            orders = [("1001", "1008", "1009"), ("1009", "1008", "1001"), ("1008", "1001", "1009")]
            with _ari_floor.FloorApp(stack, floor_dial):
                for i in range(rounds):
                    for caller in orders[i % len(orders)]:
                        rc, d = caller_run(stack, tmp, caller, "1002", per_round)
                        if rc != 0:
                            raise SystemExit(f"setup round {i} ({caller}): sipp exit {rc}; see {d}")
                        samples[caller].extend(setup_times(d))
            ours, floor, dial = samples["1001"], samples["1008"], samples["1009"]
            o50, d50, f50 = percentile(ours, 50), percentile(dial, 50), percentile(floor, 50)
            o95, d95 = percentile(ours, 95), percentile(dial, 95)
            log(f"setup INVITE->200: controller p50 {o50 * 1e3:.1f} ms p95 {o95 * 1e3:.1f} ms; "
                f"Dial() p50 {d50 * 1e3:.1f} ms p95 {d95 * 1e3:.1f} ms; ratio {o50 / d50:.2f}; "
                f"baseline ARI app p50 {f50 * 1e3:.1f} ms, {f50 / d50:.2f}x Dial()")  # fmt: skip

            best = 0
            for cps in [] if args.no_load else levels:
                calls = cps * level_s
                t0 = time.monotonic()
                rc, d = caller_run(stack, tmp, "1001", "2000", calls, rate=cps, trace=False)
                log(f"load {cps} cps x {level_s} s into a group of 3: sipp exit {rc} ({time.monotonic() - t0:.0f} s)")
                if rc != 0:
                    break
                best = cps
            for p in phones:
                p.stop()
    finally:
        stack.destroy()
    print(
        json.dumps(
            {
                "setup_vs_dial_ratio": round(o50 / d50, 3),
                "setup_p50_ms": round(o50 * 1000, 2),
                "dial_p50_ms": round(d50 * 1000, 2),
                "setup_p95_ms": round(percentile(ours, 95) * 1000, 2),
                "dial_p95_ms": round(percentile(dial, 95) * 1000, 2),
                "floor_p50_ms": round(f50 * 1000, 2),
                "floor_vs_dial_ratio": round(f50 / d50, 3),
                "controller_vs_floor_ratio": round(o50 / f50, 3),
                "max_cps_zero_fail": best,
                "calls_per_mode": len(ours),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
