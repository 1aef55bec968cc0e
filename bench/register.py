#!/usr/bin/env python3
"""REGISTER rate (digest auth, every endpoint once per pass, 0 failures required) through the
project's realtime setup (Postgres views behind Sorcery memory caches, contacts in ps_contacts
with the node's astdb as their cache)
against the same endpoints in a static pjsip.conf on a second Asterisk, in the same run.

Passes alternate static / realtime. Pass 1 of each registers every endpoint for the first time (the
realtime caches are cold and every contact is an INSERT); later passes refresh the same contacts
(warm caches, UPDATEs): that steady state is the headline ratio; the first-time one is printed too.

Then the storm after a restart (issue 20): each node in turn is restarted and, as soon as it
answers, every phone registers again (the realtime node's memory caches are empty, its contacts
are still in ps_contacts and its astdb): `cold_vs_static_ratio`.

--experiment adds a third storm: the realtime node restarted with its endpoint, auth and AOR
memory caches as full backend caches (one read per type fills each; not shippable, as such a cache
refuses per-object expiry): what warming every cache in bulk would give.

--node (issue 20, item 5): the database elsewhere. Both Asterisks on core 0, Postgres, `pbxctl
serve`, sipp and this script on core 1 (taskset); the warm ratio is `register_node_ratio`. Other
work on the machine is not pinned: only side-by-side ratios mean anything.

Prints a JSON object as its LAST line. --quick: 10k endpoints, 3 passes each (well under 5 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._pjsip import StaticNode, apply_config, config_yaml, sipp_register_load
from devstack.asterisk import AsteriskNode
from devstack.sipp import free_udp_port
from devstack.stack import Stack

ASTERISK_CPU, REST_CPU = 0, 1
# --experiment: per-object caches made full backend caches, which need the "all objects" reads.
_PER_OBJECT_CACHE = re.compile(r"^((?:endpoint|auth|aor)/cache = memory_cache),", re.MULTILINE)
_BOOT_SET = re.compile(r",allow_unqualified_fetch=no$|^(?:endpoint|aor) = astdb,pbx_boot\n", re.MULTILINE)


def pin(pid: int, cpu: int) -> None:
    """Every thread of ``pid`` on core ``cpu`` (processes it starts later inherit it)."""
    subprocess.run(["taskset", "-a", "-cp", str(cpu), str(pid)], check=True, capture_output=True)


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def pin_node_layout(stack: Stack, static: StaticNode) -> None:
    for node in (stack.asterisk, static.node):
        pid = node.pid()
        assert pid is not None, "Asterisk is not running"
        pin(pid, ASTERISK_CPU)
    postmaster = int((stack.postgres.datadir / "postmaster.pid").read_text().split()[0])
    serve = stack.serve.pid()
    for pid in [postmaster, *children(postmaster), *([serve] if serve else [])]:
        pin(pid, REST_CPU)
    os.sched_setaffinity(0, {REST_CPU})


def restart(node: AsteriskNode) -> None:
    node.stop()
    node.start(timeout=300)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--experiment", action="store_true", help="also a storm against full backend caches")
    ap.add_argument("--node", action="store_true", help="Asterisk on one core, Postgres and sipp on the other")
    ap.add_argument("--endpoints", type=int, default=10_000)
    ap.add_argument("--passes", type=int, default=None)
    args = ap.parse_args()
    passes = args.passes or (3 if args.quick else 5)
    n = args.endpoints
    stack = Stack.named(f"bench-reg-{os.getpid()}")
    static: StaticNode | None = None
    sipp_cpu = REST_CPU if args.node else None
    try:
        stack.up()
        apply_config(stack, config_yaml("breg", n))
        static = StaticNode(stack, "breg", n)
        static.start()
        if args.node:
            pin_node_layout(stack, static)
        port = free_udp_port()
        nodes = {"static": static.node, "realtime": stack.asterisk}
        runs: dict[str, list[tuple[float, int]]] = {"static": [], "realtime": []}
        for p in range(passes):
            for kind in nodes:
                r = sipp_register_load(nodes[kind].settings.sip_addr, "breg", n, local_port=port, cpu=sipp_cpu)
                runs[kind].append((r.rate, r.failed))
                line = f"pass {p + 1} {kind:8s}: {r.rate:7.0f} REGISTER/s, {r.ok} ok, {r.failed} failed"
                print(line, file=sys.stderr)
        warm = {k: statistics.median(rate for rate, _ in v[1:]) for k, v in runs.items()}
        first = {k: v[0][0] for k, v in runs.items()}
        failures = sum(f for v in runs.values() for _, f in v)
        out: dict[str, object] = {
            "endpoints": n,
            "passes": passes,
            "static_register_per_s": round(warm["static"], 1),
            "realtime_register_per_s": round(warm["realtime"], 1),
            "register_vs_static_ratio": round(warm["realtime"] / warm["static"], 3),
            "cold_static_register_per_s": round(first["static"], 1),
            "cold_realtime_register_per_s": round(first["realtime"], 1),
            "cold_register_vs_static_ratio": round(first["realtime"] / first["static"], 3),
        }
        if args.node:
            out["register_node_ratio"] = out["register_vs_static_ratio"]
        else:
            storm: dict[str, float] = {}
            sorcery = stack.asterisk.dir / "etc" / "sorcery.conf"
            shipped = sorcery.read_text()
            storms = [*nodes.items(), *([("full_cache", stack.asterisk)] if args.experiment else [])]
            for kind, node in storms:
                if kind == "full_cache":
                    full = _PER_OBJECT_CACHE.sub(r"\1,full_backend_cache=yes,", _BOOT_SET.sub("", shipped))
                    sorcery.write_text(full)
                restart(node)
                r = sipp_register_load(node.settings.sip_addr, "breg", n, local_port=port)
                storm[kind] = r.seconds
                if kind == "full_cache":  # an experiment: its failures are its own figure
                    out["full_cache_failures"] = r.failed
                else:
                    failures += r.failed
                line = f"storm after restart {kind:8s}: {r.seconds:6.2f} s, {r.ok} ok, {r.failed} failed"
                print(line, file=sys.stderr)
            sorcery.write_text(shipped)
            if args.experiment:
                out["full_cache_cold_vs_static_ratio"] = round(storm["static"] / storm["full_cache"], 3)
            out |= {
                "storm_static_s": round(storm["static"], 2),
                "storm_realtime_s": round(storm["realtime"], 2),
                "cold_vs_static_ratio": round(storm["static"] / storm["realtime"], 3),
            }
        out["failures"] = failures
        print(json.dumps(out))
    finally:
        if static is not None:
            static.destroy()
        stack.destroy()


if __name__ == "__main__":
    main()
