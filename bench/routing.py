#!/usr/bin/env python3
"""Routing decision latency, ours against ywsd 0.14.2 on the same data, same Postgres, same run.

Data: 10k simple extensions (each with its endpoint), a group tree of depth 6 with 48 members
(each level: 8 users over three ranks and the next level's group), and an immediate-forward chain
of 6. Cases: a simple call, the group tree, the forward chain.

Figures:
- in-process: `load_for_call` (one query) + stage 1 + stage 2 + the fork's first commands;
- HTTP, like for like: our `GET /route` (served by `pbxctl serve`) against ywsd's web-only
  `GET /stage1`, requests interleaved so both see the same machine noise.

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
from devstack.postgres import PostgresCluster, free_port
from routing.stage1 import CallRequest
from sorcery_backend.apply import apply_config
from sorcery_backend.declarative import parse_config
from sorcery_backend.routing_loader import load_for_call
from sorcery_backend.schema import migrate

YWSD_VENV = Path(os.environ.get("PBX_CACHE_DIR") or Path.home() / ".cache" / "pbx") / "ywsd-venv"
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


async def load_ours(dsn: str, cfg: dict[str, Any]) -> None:
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


async def measure(our_dsn: str, ours_url: str, ywsd_url: str | None, rounds: int) -> dict[str, Any]:
    from ari_app.route_api import decide

    out: dict[str, Any] = {}
    conn = await asyncpg.connect(our_dsn)
    rng = random.Random(3)
    try:
        for case, (caller, called) in CASES.items():
            samples = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                data = await load_for_call(conn, "bench", caller, called, caller)
                decision = decide(data, CallRequest("bench", caller, called))
                samples.append(time.perf_counter() - t0)
            assert decision["status"] == "ok" and decision["commands"], (case, decision)
            out[f"inproc_{case}_p50_ms"] = round(percentile(samples, 50) * 1000, 3)
            out[f"inproc_{case}_p99_ms"] = round(percentile(samples, 99) * 1000, 3)
    finally:
        await conn.close()

    async with aiohttp.ClientSession() as http:
        for case, (caller, called) in CASES.items():
            ours: list[float] = []
            theirs: list[float] = []
            for _ in range(rounds):
                order = [("ours", ours), ("ywsd", theirs)] if ywsd_url else [("ours", ours)]
                rng.shuffle(order)
                for who, sink in order:
                    if who == "ours":
                        url, params = ours_url, {"tenant": "bench", "caller": caller, "called": called}
                    else:
                        assert ywsd_url is not None
                        url, params = ywsd_url, {"caller": caller, "called": called}
                    t0 = time.perf_counter()
                    async with http.get(url, params=params) as r:
                        body = await r.json()
                    sink.append(time.perf_counter() - t0)
                    ok = body.get("status") == "ok" if who == "ours" else body.get("routing_status") == "OK"
                    assert r.status == 200 and ok, (who, case, str(body)[:300])
            out[f"http_{case}_p50_ms"] = round(percentile(ours, 50) * 1000, 3)
            out[f"http_{case}_p99_ms"] = round(percentile(ours, 99) * 1000, 3)
            if theirs:
                out[f"ywsd_{case}_p50_ms"] = round(percentile(theirs, 50) * 1000, 3)
                out[f"ywsd_{case}_speedup"] = round(percentile(theirs, 50) / percentile(ours, 50), 2)
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
        asyncio.run(load_ours(cluster.dsn("ours"), cfg))
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
        result = asyncio.run(measure(cluster.dsn("ours"), ours_url, ywsd_url, rounds))
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        cluster.destroy()
    result["p50_ms"] = result["inproc_group_tree_p50_ms"]
    result["p99_ms"] = result["inproc_group_tree_p99_ms"]
    if "ywsd_group_tree_speedup" in result:
        result["ywsd_speedup_ratio"] = result["ywsd_group_tree_speedup"]
    for k, v in result.items():
        print(f"{k:32} {v}", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
