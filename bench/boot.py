#!/usr/bin/env python3
"""Node boot (issue 20, item 2): Asterisk start → "fully booted", and → the first successful
REGISTER, with N endpoints in realtime (the project's setup: Postgres views, Sorcery memory caches)
vs the same N endpoints in a static pjsip.conf on a second Asterisk, in the same run, rounds
alternating. Asterisk ignores every SIP request until it is fully booted, so the first REGISTER is
sent as soon as `core waitfullybooted` returns (one sipp call of an endpoint not yet used: cold
caches, a contact INSERT); `first_register_s` is counted from the start too. No phone is registered
before a boot, so the realtime node finds no contact in its astdb.

--before also boots, in the same rounds, the realtime node with the Sorcery mapping it had before
issue 20: Asterisk's unqualified reads ("all endpoints", "all AORs") answered from Postgres, where
now they are refused (`allow_unqualified_fetch=no`) and answered from the node's boot set in astdb.

Prints a JSON object as its LAST line. --quick: 10k endpoints, 2 rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._pjsip import StaticNode, apply_config, config_yaml, sipp_register_load
from devstack.asterisk import AsteriskError, AsteriskNode
from devstack.sipp import free_udp_port
from devstack.stack import Stack

# What makes the shipped mapping refuse "all objects" reads: the option, and the astdb wizard.
BOOT_SET = re.compile(r",allow_unqualified_fetch=no$|^(?:endpoint|aor) = astdb,pbx_boot\n", re.MULTILINE)


def wait_fully_booted(node: AsteriskNode, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            if "fully booted" in node.rx("core waitfullybooted", timeout=300).lower():
                return
        except AsteriskError:
            pass  # the control socket is not there yet
        time.sleep(0.02)
    raise TimeoutError("Asterisk did not boot")


def boot_once(node: AsteriskNode, tenant: str, endpoint: int, port: int) -> tuple[float, float]:
    """(start → fully booted, start → first REGISTER answered 200), in seconds."""
    node.stop()
    result: dict[str, float] = {}
    t0 = time.perf_counter()

    def watch() -> None:
        wait_fully_booted(node, time.monotonic() + 300)
        result["booted"] = time.perf_counter() - t0
        r = sipp_register_load(node.settings.sip_addr, tenant, 1, first=endpoint, local_port=port, timeout_s=30)
        if r.ok == 1:
            result["registered"] = time.perf_counter() - t0

    watcher = threading.Thread(target=watch)
    watcher.start()
    node.start(timeout=300)
    watcher.join(330)
    if "registered" not in result:
        raise RuntimeError(f"no REGISTER answered 200 after boot: {result}")
    return result["booted"], result["registered"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--before", action="store_true")
    ap.add_argument("--endpoints", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=None)
    args = ap.parse_args()
    rounds = args.rounds or (2 if args.quick else 4)
    n = args.endpoints
    stack = Stack.named(f"bench-boot-{os.getpid()}")
    static: StaticNode | None = None
    try:
        stack.up()
        apply_config(stack, config_yaml("bboot", n))
        static = StaticNode(stack, "bboot", n)
        static.start()
        port = free_udp_port()
        realtime = stack.asterisk
        sorcery = realtime.dir / "etc" / "sorcery.conf"
        shipped = sorcery.read_text()
        kinds = ["static", "realtime", *(["realtime_before"] if args.before else [])]
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
        used = 0
        for r in range(rounds):
            for kind in kinds:
                node = static.node if kind == "static" else realtime
                if kind != "static":
                    sorcery.write_text(BOOT_SET.sub("", shipped) if kind == "realtime_before" else shipped)
                used += 1
                booted, registered = boot_once(node, "bboot", (used * 997) % n, port)
                times[kind].append((booted, registered))
                print(
                    f"round {r + 1} {kind:24s}: booted {booted:6.2f} s, first REGISTER {registered:6.2f} s",
                    file=sys.stderr,
                )
        sorcery.write_text(shipped)
        boot = {k: statistics.median(b for b, _ in v) for k, v in times.items()}
        first = {k: statistics.median(f for _, f in v) for k, v in times.items()}
        out: dict[str, object] = {
            "endpoints": n,
            "rounds": rounds,
            "static_boot_s": round(boot["static"], 2),
            "realtime_boot_s": round(boot["realtime"], 2),
            "static_first_register_s": round(first["static"], 2),
        }
        if args.before:
            out |= {
                "before_boot_s": round(boot["realtime_before"], 2),
                "before_first_register_s": round(first["realtime_before"], 2),
                "before_boot_vs_static_ratio": round(boot["realtime_before"] / boot["static"], 3),
            }
        out |= {
            "boot_vs_static_ratio": round(boot["realtime"] / boot["static"], 3),
            "first_register_s": round(first["realtime"], 2),
        }
        print(json.dumps(out))
    finally:
        if static is not None:
            static.destroy()
        stack.destroy()


if __name__ == "__main__":
    main()
