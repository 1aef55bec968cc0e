#!/usr/bin/env python3
"""REGISTER rate (digest auth, every endpoint once per pass, 0 failures required) through the
project's realtime setup (Postgres views behind Sorcery memory caches, contacts in ps_contacts
with the node's astdb as their cache)
against the same endpoints in a static pjsip.conf on a second Asterisk, in the same run.

Passes alternate static / realtime. Pass 1 of each registers every endpoint for the first time (the
realtime caches are cold and every contact is an INSERT); later passes refresh the same contacts
(warm caches, UPDATEs): that steady state is the headline ratio; the cold one is printed too.

Prints a JSON object as its LAST line. --quick: 10k endpoints, 3 passes each (well under 5 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._pjsip import StaticNode, apply_config, config_yaml, sipp_register_load
from devstack.sipp import free_udp_port
from devstack.stack import Stack


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--endpoints", type=int, default=10_000)
    ap.add_argument("--passes", type=int, default=None)
    args = ap.parse_args()
    passes = args.passes or (3 if args.quick else 5)
    n = args.endpoints
    stack = Stack.named(f"bench-reg-{os.getpid()}")
    static: StaticNode | None = None
    try:
        stack.up()
        apply_config(stack, config_yaml("breg", n))
        static = StaticNode(stack, "breg", n)
        static.start()
        port = free_udp_port()
        runs: dict[str, list[tuple[float, int]]] = {"static": [], "realtime": []}
        for p in range(passes):
            for kind, addr in (("static", static.sip_addr), ("realtime", stack.settings.sip_addr)):
                r = sipp_register_load(addr, "breg", n, local_port=port)
                runs[kind].append((r.rate, r.failed))
                line = f"pass {p + 1} {kind:8s}: {r.rate:7.0f} REGISTER/s, {r.ok} ok, {r.failed} failed"
                print(line, file=sys.stderr)
        warm = {k: statistics.median(rate for rate, _ in v[1:]) for k, v in runs.items()}
        cold = {k: v[0][0] for k, v in runs.items()}
        failures = sum(f for v in runs.values() for _, f in v)
        print(
            json.dumps(
                {
                    "endpoints": n,
                    "passes": passes,
                    "static_register_per_s": round(warm["static"], 1),
                    "realtime_register_per_s": round(warm["realtime"], 1),
                    "register_vs_static_ratio": round(warm["realtime"] / warm["static"], 3),
                    "cold_static_register_per_s": round(cold["static"], 1),
                    "cold_realtime_register_per_s": round(cold["realtime"], 1),
                    "cold_register_vs_static_ratio": round(cold["realtime"] / cold["static"], 3),
                    "failures": failures,
                }
            )
        )
    finally:
        if static is not None:
            static.destroy()
        stack.destroy()


if __name__ == "__main__":
    main()
