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

--odbc (issue 20, item 1): more storms with realtime families through res_config_odbc and a
res_odbc pool of --odbc-pool connections (psqlODBC) instead of res_config_pgsql's one connection:
`contacts` (ps_contacts only), `reads` (every family but ps_contacts), `all`. A variant that writes
contacts first registers every phone once through ODBC (res_config_odbc stores ';' as '^3B', so the
rows pgsql wrote are not the ones it updates), then the node is restarted for the storm. After each
storm, one warm pass: the refresh rate through that variant. A second static storm closes the run
(the load's drift).

--warm (issue 20, item 1): the realtime node restarted, its endpoint, auth and AOR caches primed
before any phone arrives by one AMI PJSIPShowEndpoint per endpoint (the only action that reads all
three by id; --warm-sessions sessions in parallel), then the storm: the warming's own time and the
storm's.

--node (issue 20, item 5): the database elsewhere. Both Asterisks on core 0, Postgres, `pbxctl
serve`, sipp and this script on core 1 (taskset); the warm ratio is `register_node_ratio`. Other
work on the machine is not pinned: only side-by-side ratios mean anything.

Prints a JSON object as its LAST line. --quick: 10k endpoints, 3 passes each (well under 5 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._pjsip import SippRun, StaticNode, apply_config, config_yaml, endpoint_ids, sipp_register_load
from devstack.asterisk import AsteriskNode
from devstack.odbc import REALTIME_FAMILIES, render_odbc
from devstack.sipp import free_udp_port
from devstack.stack import Stack
from sorcery_backend.ami import AmiError, AmiSession

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


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds of each process (every thread), as far as it is still there."""
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / _TICK
    return out


def timed_storm(stack: Stack, node: AsteriskNode, n: int, port: int, key: str) -> tuple[SippRun, dict[str, float]]:
    """All n phones once against ``node``, with the CPU that Asterisk and Postgres (every backend)
    spent on it per REGISTER: the load on the machine moves the wall clock, much less these."""
    pid = node.pid()
    assert pid is not None, "Asterisk is not running"
    postmaster = int((stack.postgres.datadir / "postmaster.pid").read_text().split()[0])
    before_ast, before_pg = cpu_s([pid]), cpu_s(children(postmaster))
    r = sipp_register_load(node.settings.sip_addr, "breg", n, local_port=port)
    after_ast, after_pg = cpu_s([pid]), cpu_s(children(postmaster))
    ast_ms = (after_ast[pid] - before_ast[pid]) * 1000 / n
    pg_ms = sum(t - before_pg.get(p, 0.0) for p, t in after_pg.items()) * 1000 / n
    return r, {f"{key}_asterisk_cpu_ms": round(ast_ms, 3), f"{key}_pg_cpu_ms": round(pg_ms, 3)}


def restart(node: AsteriskNode) -> None:
    node.stop()
    node.start(timeout=300)


ODBC_VARIANTS: dict[str, tuple[str, ...]] = {
    "contacts": ("ps_contacts",),
    "reads": tuple(f for f in REALTIME_FAMILIES if f != "ps_contacts"),
    "all": REALTIME_FAMILIES,
}


def odbc_storms(
    stack: Stack, n: int, port: int, variants: list[str], pools: list[int], server_prepare: bool
) -> dict[str, object]:
    """Storm, then one warm pass, per ODBC variant and pool size; the shipped files restored after."""
    node = stack.asterisk
    etc = node.dir / "etc"
    shipped = {name: (etc / name).read_text() for name in ("extconfig.conf", "modules.conf")}
    db_host = stack.postgres.local_socket if stack.postgres.local_socket_up() else "127.0.0.1"
    out: dict[str, object] = {}
    try:
        for variant in variants:
            for pool in pools:
                for name, text in shipped.items():
                    (etc / name).write_text(text)
                render_odbc(etc, stack.settings, db_host, ODBC_VARIANTS[variant], pool, server_prepare)
                key = f"odbc_{variant}_{pool}"
                if "ps_contacts" in ODBC_VARIANTS[variant]:
                    restart(node)
                    r = sipp_register_load(node.settings.sip_addr, "breg", n, local_port=port)
                    print(f"{key} contacts through ODBC: {r.rate:7.0f} REGISTER/s, {r.failed} failed", file=sys.stderr)
                restart(node)
                storm, cpu = timed_storm(stack, node, n, port, key)
                warm = sipp_register_load(node.settings.sip_addr, "breg", n, local_port=port)
                line = f"storm after restart {key}: {storm.seconds:6.2f} s, {storm.ok} ok, {storm.failed} failed"
                print(line + f"; warm pass {warm.rate:7.0f} REGISTER/s, {warm.failed} failed", file=sys.stderr)
                out |= cpu | {
                    f"{key}_storm_s": round(storm.seconds, 2),
                    f"{key}_warm_register_per_s": round(warm.rate, 1),
                    f"{key}_failures": storm.failed + warm.failed,
                }
    finally:
        for name, text in shipped.items():
            (etc / name).write_text(text)
        restart(node)
    return out


async def _prime(node: AsteriskNode, ids: list[str], sessions: int) -> int:
    """PJSIPShowEndpoint for every id over ``sessions`` AMI sessions; how many were refused."""
    s = node.settings
    refused = 0

    async def one(chunk: list[str]) -> None:
        nonlocal refused
        ami = AmiSession(s.host, s.ami_port, s.ami_user, s.ami_password)
        await ami.connect()
        try:
            for eid in chunk:
                try:
                    await ami.send_list({"Action": "PJSIPShowEndpoint", "Endpoint": eid}, timeout=60)
                except AmiError:  # counted: an endpoint it could not read is part of the figure
                    refused += 1
        finally:
            ami.close("warming done")

    await asyncio.gather(*(one(ids[i::sessions]) for i in range(sessions)))
    return refused


def warm_storm(stack: Stack, n: int, port: int, sessions: int) -> dict[str, object]:
    node = stack.asterisk
    restart(node)
    pid = node.pid()
    assert pid is not None, "Asterisk is not running"
    before = cpu_s([pid])[pid]
    t0 = time.perf_counter()
    refused = asyncio.run(_prime(node, endpoint_ids("breg", n), sessions))
    warming = time.perf_counter() - t0
    out: dict[str, object] = {"warming_asterisk_cpu_ms": round((cpu_s([pid])[pid] - before) * 1000 / n, 3)}
    r, cpu = timed_storm(stack, node, n, port, "warmed")
    line = f"warming {warming:6.2f} s ({refused} refused), then storm {r.seconds:6.2f} s, {r.ok} ok, {r.failed} failed"
    print(line, file=sys.stderr)
    return (
        out
        | cpu
        | {
            "warming_s": round(warming, 2),
            "warmed_storm_s": round(r.seconds, 2),
            "warmed_failures": r.failed + refused,
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--experiment", action="store_true", help="also a storm against full backend caches")
    ap.add_argument("--node", action="store_true", help="Asterisk on one core, Postgres and sipp on the other")
    ap.add_argument("--odbc", default="", help="ODBC storm variants, comma separated: contacts,reads,all")
    ap.add_argument("--odbc-pool", default="8", help="res_odbc max_connections, comma separated")
    ap.add_argument("--odbc-simple-query", action="store_true", help="psqlODBC UseServerSidePrepare = 0")
    ap.add_argument("--warm", action="store_true", help="also a storm after priming the caches over AMI")
    ap.add_argument("--warm-sessions", type=int, default=4)
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
                r, cpu = timed_storm(stack, node, n, port, kind)
                out |= cpu
                storm[kind] = r.seconds
                if kind == "full_cache":  # an experiment: its failures are its own figure
                    out["full_cache_failures"] = r.failed
                else:
                    failures += r.failed
                line = f"storm after restart {kind:8s}: {r.seconds:6.2f} s, {r.ok} ok, {r.failed} failed"
                print(line, file=sys.stderr)
            sorcery.write_text(shipped)
            static_s = storm["static"]
            extra: dict[str, object] = {}
            if args.odbc:
                pools = [int(x) for x in args.odbc_pool.split(",")]
                extra |= odbc_storms(stack, n, port, args.odbc.split(","), pools, not args.odbc_simple_query)
            if args.warm:
                extra |= warm_storm(stack, n, port, args.warm_sessions)
            if args.odbc or args.warm:
                restart(static.node)
                r = sipp_register_load(static.node.settings.sip_addr, "breg", n, local_port=port)
                failures += r.failed
                print(f"storm after restart static (again): {r.seconds:6.2f} s, {r.failed} failed", file=sys.stderr)
                extra["storm_static_again_s"] = round(r.seconds, 2)
                static_s = (storm["static"] + r.seconds) / 2
            for key, value in list(extra.items()):
                if key.endswith("storm_s") and key != "storm_static_again_s":
                    assert isinstance(value, float)
                    extra[key.removesuffix("storm_s") + "vs_static_ratio"] = round(static_s / value, 3)
            out |= extra
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
