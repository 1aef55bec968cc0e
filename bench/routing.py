#!/usr/bin/env python3
"""Routing decision latency, ours against ywsd 0.14.2 on the same data, same Postgres, same run.

Data: 10k simple extensions (each with its endpoint), a group tree of depth 6 with 48 members
(each level: 8 users over three ranks and the next level's group), and an immediate-forward chain
of 6. Cases: a simple call, the group tree, the forward chain.

Figures:
- in-process: the routing data (`RoutingData.for_call`: the tenant's directory and the registered
  contacts from memory, checked by one statement that reads the routing version and the contacts'
  counter; the cache's listener runs as in `pbxctl serve`) + stage 1 +
  stage 2 + the fork's first commands; against the same with the uncached loader (`load_for_call`,
  one statement), interleaved; and the cached path split into its phases;
- HTTP, like for like: our `GET /route` (served by `pbxctl serve`; the decision) and
  `GET /route?explain=1` (the decision and the whole explained tree) against ywsd's web-only
  `GET /stage1`, requests interleaved in random order so all see the same machine noise; and the
  HTTP floor (a request our server refuses at once).

ywsd comes from PyPI into its own venv (~/.cache/pbx/ywsd-venv), with its own schema in a second
database of the same private cluster. Prints a JSON object as its LAST line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import percentile
from devstack.ports import free_port
from devstack.postgres import PostgresCluster
from http_api.tokens import create_token
from pbx_base.settings import get_settings
from routing.stage1 import CallRequest
from routing_store.cache import RoutingData
from routing_store.loader import load_for_call
from sorcery_backend.apply import apply_config
from sorcery_backend.declarative import parse_config
from sorcery_backend.schema import migrate

YWSD_VENV = get_settings().cache_dir / "ywsd-venv"
USERS = [str(10000 + i) for i in range(10000)]
LEVELS = 6
CASES = {"simple": ("10000", "10001"), "group_tree": ("10000", "3000"), "forward_chain": ("10000", "4000")}


def model() -> dict[str, Any]:
    """Our declarative config; ywsd rows are derived from the same dict."""
    exts: dict[str, Any] = {n: {"type": "simple", "name": f"User {n}", "endpoints": [n]} for n in USERS}
    for level in range(LEVELS):
        members = [str(10100 + level * 8 + k) for k in range(8)]
        ranks = [
            {"mode": "default", "members": members[:3] + ([str(3001 + level)] if level + 1 < LEVELS else [])},
            {"mode": "next", "delay_ms": 5000, "members": members[3:6]},
            {"mode": "drop", "delay_ms": 10000, "members": members[6:]},
        ]
        exts[str(3000 + level)] = {"type": "group", "name": f"Group {level}", "short_name": f"G{level}", "ranks": ranks}
    for k in range(6):
        target = str(4001 + k) if k < 5 else "10500"
        exts[str(4000 + k)] = {
            "type": "simple",
            "name": f"Fwd {k}",
            "endpoints": [str(10600 + k)],
            "forward": {"mode": "always", "to": target},
        }
    endpoints = {n: {"auth": {"password": "x"}} for n in USERS}
    return {"tenants": {"bench": {"domain": "bench.example", "endpoints": endpoints, "extensions": exts}}}


async def load_ours(dsn: str, cfg: dict[str, Any]) -> str:
    """Load the model; returns an operator token of the HTTP API."""
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        await apply_config(conn, parse_config(cfg))
        # Every endpoint registered once, so stage 2 rings real contacts.
        await conn.execute(
            "INSERT INTO ps_contacts (id, uri, endpoint) SELECT n || '@bench.example^3B@c', "
            "'sip:' || n || '@127.0.0.1:5999', n || '@bench.example' FROM unnest($1::text[]) AS n",
            USERS,
        )
        await conn.execute("ANALYZE")  # a warm database has statistics (autovacuum would get there)
        return await create_token(conn, "bench")
    finally:
        await conn.close()


async def load_ywsd(dsn: str, cfg: dict[str, Any]) -> None:
    exts = cfg["tenants"]["bench"]["extensions"]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("""INSERT INTO "Yate" (id, hostname, guru3_identifier, voip_listener)
                              VALUES (1, 'local', 'local', 'local')""")
        rows = [(n, e["name"], e.get("short_name"), e["type"].upper()) for n, e in exts.items()]
        await conn.executemany(
            """INSERT INTO "Extension" (yate_id, extension, name, short_name, type, forwarding_mode, lang)
               VALUES (CASE WHEN $4 IN ('SIMPLE', 'MULTIRING') THEN 1 END, $1, $2, $3,
                       $4::extension_type, 'DISABLED', 'en')""",
            rows,
        )
        ids = {r["extension"]: r["id"] for r in await conn.fetch('SELECT id, extension FROM "Extension"')}
        for n, e in exts.items():
            if "forward" in e:
                await conn.execute(
                    """UPDATE "Extension" SET forwarding_mode = 'ENABLED', forwarding_delay = 0,
                                      forwarding_extension_id = $2 WHERE id = $1""",
                    ids[n],
                    ids[e["forward"]["to"]],
                )
            for i, rank in enumerate(e.get("ranks", [])):
                rid = await conn.fetchval(
                    """INSERT INTO "ForkRank" (extension_id, index, mode, delay)
                       VALUES ($1, $2, $3::fork_rank_mode, $4) RETURNING id""",
                    ids[n],
                    i,
                    rank["mode"].upper(),
                    rank.get("delay_ms", 0) // 1000 if rank["mode"] != "default" else None,
                )
                await conn.executemany(
                    """INSERT INTO "ForkRankMember" (forkrank_id, extension_id, rankmember_type, active)
                       VALUES ($1, $2, 'DEFAULT', true)""",
                    [(rid, ids[m]) for m in rank["members"]],
                )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def wait_http(url: str, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text()[-800:]}")
            try:
                async with s.get(url) as r:
                    if r.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{what} did not answer at {url} within 60 s: {log.read_text()[-800:]}")


def _ms(samples: list[float], p: float) -> float:
    return round(percentile(samples, p) * 1000, 3)


async def measure_inproc(dsn: str, rounds: int) -> dict[str, Any]:
    """The routing decision in process: uncached (`load_for_call`, one statement) against the
    routing cache (`RoutingData.for_call`: the version check + the contacts), interleaved; and where
    the cached path spends its time."""
    from http_api.route import decide
    from routing.fork import Fork, Start
    from routing.simulate import ScenarioDevices
    from routing.stage1 import build_tree

    out: dict[str, Any] = {}
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=3)
    conn = await asyncpg.connect(dsn)
    rng = random.Random(5)
    routing = RoutingData(pool)
    listener = asyncio.create_task(routing.listen())
    try:
        await asyncio.wait_for(routing.listening.wait(), 30)
        await routing.preload("bench")
        for case, (caller, called) in CASES.items():
            call = CallRequest("bench", caller, called)
            plain: list[float] = []
            cached: list[float] = []
            phases: dict[str, list[float]] = {"db": [], "stage1": [], "fork": [], "json": []}
            for _ in range(rounds):
                first_plain = rng.random() < 0.5
                for who in ("plain", "cached") if first_plain else ("cached", "plain"):
                    t0 = time.perf_counter()
                    if who == "plain":
                        data = await load_for_call(conn, "bench", caller, called, caller)
                        decision = decide(data, call)
                        plain.append(time.perf_counter() - t0)
                        continue
                    data = await routing.for_call(conn, "bench", caller, called, caller)
                    t1 = time.perf_counter()
                    tree = build_tree(data.directory, call)
                    t2 = time.perf_counter()
                    fork = Fork(tree, called, ScenarioDevices(data.contacts, {}))
                    commands = [{"command": type(c).__name__, **vars(c)} for c in fork.handle(Start(), 0)]
                    t3 = time.perf_counter()
                    json.dumps({"status": tree.status, "commands": commands})
                    t4 = time.perf_counter()
                    cached.append(t3 - t0)
                    for k, a, b in (("db", t0, t1), ("stage1", t1, t2), ("fork", t2, t3), ("json", t3, t4)):
                        phases[k].append(b - a)
                    assert data.cached, case
            assert decision["status"] == "ok" and decision["commands"], (case, decision)
            assert decide(data, call) == decision, case
            out[f"inproc_{case}_p50_ms"] = _ms(cached, 50)
            out[f"inproc_{case}_p99_ms"] = _ms(cached, 99)
            out[f"inproc_uncached_{case}_p50_ms"] = _ms(plain, 50)
            out[f"inproc_uncached_{case}_p99_ms"] = _ms(plain, 99)
            out[f"inproc_{case}_cache_speedup"] = round(percentile(plain, 50) / percentile(cached, 50), 2)
            for k, v in phases.items():
                out[f"inproc_{case}_{k}_p50_ms"] = _ms(v, 50)
        out["inproc_contacts_from_memory"] = routing.stats.contact_hits
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await conn.close()
        await pool.close()
    return out


async def wait_cached(ours_url: str, auth: dict[str, str]) -> None:
    """pbxctl serve loads its tenants in the background: measure once the cache serves."""
    deadline = time.monotonic() + 60
    params = {"tenant": "bench", "caller": "10000", "called": "10001"}
    async with aiohttp.ClientSession(headers=auth) as http:
        while time.monotonic() < deadline:
            async with http.get(ours_url, params=params) as r:
                if (await r.json()).get("cached"):
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError("pbxctl serve did not serve /route from its cache within 60 s")


async def measure_http(ours_url: str, ywsd_url: str | None, rounds: int, auth: dict[str, str]) -> dict[str, Any]:
    """Like for like over HTTP, interleaved in random order per round: our /route (the decision),
    our /route?explain=1 (the decision and the whole explained tree), ywsd's /stage1 (its tree);
    and the floor: a /route refused at once (400), which is aiohttp's and the client's own cost."""
    out: dict[str, Any] = {}
    rng = random.Random(3)
    # The token goes to ywsd too: it ignores the header, and both sides carry the same bytes.
    async with aiohttp.ClientSession(headers=auth) as http:

        async def get(url: str, params: dict[str, str]) -> tuple[int, Any]:
            async with http.get(url, params=params) as r:
                return r.status, await r.json()

        for _ in range(20):  # warm both servers (connections, ywsd's own caches) before timing
            await get(ours_url, {"tenant": "bench", "caller": "10000", "called": "3000"})
            if ywsd_url:
                await get(ywsd_url, {"caller": "10000", "called": "3000"})
        floor: list[float] = []
        for case, (caller, called) in CASES.items():
            samples: dict[str, list[float]] = {"ours": [], "explain": [], "ywsd": [], "floor": []}
            server_us: list[float] = []
            kinds = ["ours", "explain", "floor"] + (["ywsd"] if ywsd_url else [])
            for _ in range(rounds):
                rng.shuffle(kinds)
                for who in kinds:
                    ours = {"tenant": "bench", "caller": caller, "called": called}
                    if who == "ours":
                        url, params = ours_url, ours
                    elif who == "explain":
                        url, params = ours_url, {**ours, "explain": "1"}
                    elif who == "floor":
                        url, params = ours_url, {"tenant": "bench"}
                    else:
                        assert ywsd_url is not None
                        url, params = ywsd_url, {"caller": caller, "called": called}
                    t0 = time.perf_counter()
                    status, body = await get(url, params)
                    samples[who].append(time.perf_counter() - t0)
                    if who == "floor":
                        assert status == 400, body
                    elif who == "ywsd":
                        assert status == 200 and body.get("routing_status") == "OK", (case, str(body)[:300])
                    else:
                        assert status == 200 and body["status"] == "ok" and body["cached"], (case, str(body)[:300])
                        if who == "ours":
                            server_us.append(body["routing_time_us"] / 1e6)
            floor += samples["floor"]
            out[f"http_{case}_p50_ms"] = _ms(samples["ours"], 50)
            out[f"http_{case}_p99_ms"] = _ms(samples["ours"], 99)
            out[f"http_{case}_server_p50_ms"] = _ms(server_us, 50)
            out[f"http_explain_{case}_p50_ms"] = _ms(samples["explain"], 50)
            if ywsd_url:
                ywsd = percentile(samples["ywsd"], 50)
                out[f"ywsd_{case}_p50_ms"] = round(ywsd * 1000, 3)
                out[f"ywsd_{case}_speedup"] = round(ywsd / percentile(samples["ours"], 50), 2)
                out[f"ywsd_{case}_speedup_vs_explain"] = round(ywsd / percentile(samples["explain"], 50), 2)
        out["http_floor_p50_ms"] = _ms(floor, 50)
    return out


def ensure_ywsd() -> Path:
    exe = YWSD_VENV / "bin" / "ywsd_engine"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(YWSD_VENV)], check=True)
        subprocess.run([str(YWSD_VENV / "bin" / "pip"), "install", "-q", "ywsd==0.14.2"], check=True)
    return YWSD_VENV / "bin"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-ywsd", action="store_true", help="measure only ours")
    args = ap.parse_args()
    rounds = 300 if args.quick else 2000
    root = Path(tempfile.mkdtemp(prefix="pbx-bench-routing-"))
    os.chmod(root, 0o755)
    cluster = PostgresCluster(root=root / "pg", port=free_port())
    procs: list[subprocess.Popen[bytes]] = []
    try:
        cluster.start()
        cluster.create_database("ours")
        cluster.create_database("ywsd")
        cfg = model()
        auth = {"Authorization": f"Bearer {asyncio.run(load_ours(cluster.dsn('ours'), cfg))}"}
        ours_port = free_port()
        ours_log = root / "serve.log"
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pbxctl",
                    "serve",
                    "--dsn",
                    cluster.dsn("ours"),
                    "--http",
                    f"127.0.0.1:{ours_port}",
                    "--no-push",
                    "--no-controller",
                ],
                stdout=ours_log.open("wb"),
                stderr=subprocess.STDOUT,
            )
        )
        ours_url = f"http://127.0.0.1:{ours_port}/route"
        asyncio.run(wait_http(ours_url, procs[-1], "pbxctl serve", ours_log))
        ywsd_url = None
        if not args.no_ywsd:
            bindir = ensure_ywsd()
            ywsd_port = free_port()
            conf = root / "ywsd.yaml"
            db = {"host": "127.0.0.1", "port": cluster.port, "user": "postgres", "database": "ywsd"}
            conf.write_text(
                json.dumps(
                    {
                        "DB_CONFIG": db,
                        "STAGE2_DB_CONFIG": db,
                        "LOCAL_YATE_ID": 1,
                        "INTERNAL_YATE_LISTENER": "local",
                        "CACHE_IMPLEMENTATION": "ywsd.routing_cache.PythonDictRoutingCache",
                        "WEB_INTERFACE": {"bind_address": "127.0.0.1", "port": ywsd_port},
                        "YATE_CONNECTION": {"host": "127.0.0.1", "port": free_port()},
                    }
                )
            )
            subprocess.run([str(bindir / "ywsd_init_db"), "--config", str(conf)], check=True, capture_output=True)
            asyncio.run(load_ywsd(cluster.dsn("ywsd"), cfg))
            ylog = root / "ywsd.log"
            procs.append(
                subprocess.Popen(
                    [str(bindir / "ywsd_engine"), "--config", str(conf), "--web-only"],
                    stdout=ylog.open("wb"),
                    stderr=subprocess.STDOUT,
                )
            )
            ywsd_url = f"http://127.0.0.1:{ywsd_port}/stage1"
            asyncio.run(wait_http(ywsd_url, procs[-1], "ywsd", ylog))
        asyncio.run(wait_cached(ours_url, auth))
        result = asyncio.run(measure_inproc(cluster.dsn("ours"), rounds))
        result.update(asyncio.run(measure_http(ours_url, ywsd_url, rounds, auth)))
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        cluster.destroy()
    result["p50_ms"] = result["inproc_group_tree_p50_ms"]
    result["p99_ms"] = result["inproc_group_tree_p99_ms"]
    if "ywsd_group_tree_speedup" in result:
        result["ywsd_speedup_ratio"] = result["ywsd_group_tree_speedup"]
        result["ywsd_speedup_ratio_explain"] = result["ywsd_group_tree_speedup_vs_explain"]
    for k, v in result.items():
        print(f"{k:32} {v}", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
