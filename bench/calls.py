"""Call setup through the ARI controller vs a plain Dial(), and the highest load with no failure.

(a) Setup time at the caller (authenticated INVITE sent -> 200 OK received), 1001 -> 1002 on the
same stack in the same run, interleaved in rounds: once through Stasis and the controller (routing
tree, originate per contact, mixing bridge), once through the `pbx-dial-test` context (a plain
Dial() of the same endpoint), and once through the least an ARI app can do (bench/_ari_floor.py:
originate, answer, bridge; no routing). The phone answers at once; the ratios are at p50. The
controller's calls are made twice per round, with call records on and off (PBX_CALL_RECORDS), each
block on a `pbxctl serve` restarted for it and warmed up by two unmeasured calls, so that
records_on_vs_off_ratio compares the setup path with and without the recorder in the same run.
(b) sipp calls at rising cps into group 2000 (one rank of 3 phones that answer at once; the two
that lose are cancelled or hung up), each call talking 1 s; each level runs for a while and the
highest cps where every call succeeded is reported.

    python bench/calls.py [--quick]

Last line: JSON with setup_vs_dial_ratio and max_cps_zero_fail (and the figures behind them),
floor_vs_dial_ratio: the baseline ARI app over Dial(), controller_vs_floor_ratio: the controller
over the baseline ARI app (its own share above what ARI call control costs), records_on_vs_off_ratio,
and recorder_setup_us_per_call: the recorder's own work on a call's setup path, timed in-process.
"""

from __future__ import annotations

import argparse
import asyncio
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
from ari_app.controller.records import CallRecord, CallRecorder
from bench import _ari_floor
from bench._common import percentile
from devstack import sipp
from devstack.play import SippProcess, read_trace
from devstack.play_sipp import caller_xml, device_xml
from devstack.stack import Stack, allow_lab_contexts, run_sql

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


def set_records(stack: Stack, tmp: Path, on: bool) -> None:
    """`pbxctl serve` again with call records on or off; one call to have its controller connected
    and its routing cache loaded before anything is measured."""
    os.environ["PBX_CALL_RECORDS"] = "true" if on else "false"
    stack.serve.restart()
    rc, d = caller_run(stack, tmp, "1001", "1002", 2)
    if rc != 0:
        raise SystemExit(f"warm-up after the restart (records {'on' if on else 'off'}): sipp exit {rc}; see {d}")


def recorder_setup_us(calls: int = 20000) -> float:
    """What the recorder adds to a call's setup path, in µs of CPU per call (CPU time: the wall
    time of a shared machine is mostly other processes'): the reports a call makes from StasisStart
    to the answer (its end and the write come after the setup)."""
    out: list[CallRecord] = []

    async def run() -> float:
        rec = CallRecorder(out.append)
        t0 = time.process_time()
        for i in range(calls):
            cid = f"{i}.1"
            rec.call_started(cid, node="n", caller="1001", caller_name="Alice", endpoint="1001@b", called="1002")
            rec.call_routed(cid, None)
            rec.leg_dialed(cid, f"{cid}-l1", kind="leg", endpoint="1002@b", device="c", extension="1002")
            rec.leg_ringing(f"{cid}-l1")
            rec.leg_answered(f"{cid}-l1")
            rec.call_answered(cid, f"{cid}-l1")
            rec.call_result(cid, "answered")
        took = time.process_time() - t0
        rec.close()
        return took

    return asyncio.run(run()) / calls * 1e6


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
    os.environ["PBX_CALL_RECORDS"] = "true"  # the stack's `pbxctl serve` starts with records on
    log("starting a private stack...")
    stack.up()
    try:
        with tempfile.TemporaryDirectory(prefix="pbx-bench-calls-") as t:
            tmp = Path(t)
            cfg = tmp / "tenant.yaml"
            cfg.write_text(TENANT)
            allow_lab_contexts(stack)  # 1008 and 1009 name the node's pbx-ari-floor and pbx-dial-test
            pbxctl(stack, "apply", str(cfg))
            phones = [phone(stack, tmp, u, 10**6) for u in ("1002", "1003", "1004")]
            _ari_floor.install_context(stack)
            floor_dial = dial_string(
                "1002@bench.example",
                run_sql(stack, "SELECT uri FROM ps_contacts WHERE endpoint = $1", "1002@bench.example")[0]["uri"],
                None,
            )
            # ours (records on), floor, Dial(), ours with records off ("off" calls from 1001 too)
            samples: dict[str, list[float]] = {"1001": [], "1008": [], "1009": [], "off": []}
            orders = [("1001", "1008", "1009", "off"), ("off", "1009", "1008", "1001"), ("1001", "1009", "1008", "off")]
            with _ari_floor.FloorApp(stack, floor_dial):
                for i in range(rounds):
                    for mode in orders[i % len(orders)]:
                        if mode in ("1001", "off"):
                            # Before each of the controller's blocks alike: an A/A run (both modes
                            # with records on) gave 1.15 while only a switch restarted serve.
                            set_records(stack, tmp, mode == "1001")
                        caller = "1001" if mode == "off" else mode
                        rc, d = caller_run(stack, tmp, caller, "1002", per_round)
                        if rc != 0:
                            raise SystemExit(f"setup round {i} ({mode}): sipp exit {rc}; see {d}")
                        samples[mode].extend(setup_times(d))
                set_records(stack, tmp, True)  # the load runs as the product does
            ours, floor, dial, off = samples["1001"], samples["1008"], samples["1009"], samples["off"]
            r50 = percentile(off, 50)
            log(f"setup with call records on p50 {percentile(ours, 50) * 1e3:.1f} ms, off p50 {r50 * 1e3:.1f} ms: "
                f"ratio {percentile(ours, 50) / r50:.3f}")  # fmt: skip
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
            records = run_sql(stack, "SELECT count(*) AS n FROM pbx.call_records")[0]["n"]
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
                "records_off_p50_ms": round(r50 * 1000, 2),
                "call_records_rows": records,
                "records_on_vs_off_ratio": round(o50 / r50, 3),
                "recorder_setup_us_per_call": round(recorder_setup_us(), 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
