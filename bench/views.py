#!/usr/bin/env python3
"""Realtime view cost and bulk apply.

(1) Endpoint lookup by id through the realtime views (what res_config_pgsql sends:
    SELECT * FROM ps_endpoints WHERE id = $1 LIMIT 1) against an identical plain table holding the
    same flattened rows, interleaved in one loop so both see the same machine noise; N endpoints
    inheriting through 4 template levels.
(2) `apply` of 10k endpoints (one transaction, from an empty tenant).
(3) A template edit affecting 10k endpoints: size of the change set and time of the apply.
(4) With --variants: what might make the view cheaper, each measured side by side with the plain
    table in one interleaved loop: other forms of the same view (SELECT *, security_invoker,
    security_barrier), planner settings a role could carry (jit, geqo), how the cost grows with
    the column count (a 2-column view against a 2-column table), and the same lookups from four
    more backends (each view against the table on its own backend). Besides the wall
    time it reads the server backend's own CPU time (/proc/<pid>/schedstat, private cluster only),
    which the client's share and much of the machine's noise do not blur.

Prints a JSON object as its LAST line. --quick: fewer endpoints and lookups (well under 5 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import percentile, private_postgres
from sorcery_backend.apply import apply_config
from sorcery_backend.declarative import parse_config


def config(n: int, tenant: str = "bench", context: str = "bench-internal") -> dict[str, object]:
    templates = {
        "l0": {
            "transport": "transport-udp",
            "endpoint": {"allow": "!all,ulaw", "context": context},
            "aor": {"max_contacts": 1},
        },
        "l1": {"parents": ["l0"], "endpoint": {"dtmf_mode": "rfc4733", "set_var": ["A=1"]}},
        "l2": {"parents": ["l1"], "endpoint": {"language": "en", "set_var": ["B=2"]}},
        "l3": {"parents": ["l2"], "endpoint": {"allow": "g722"}, "aor": {"qualify_frequency": 60}},
    }
    endpoints = {f"{100000 + i}": {"templates": ["l3"], "auth": {"password": f"pw{i}"}} for i in range(n)}
    return {"tenants": {tenant: {"domain": f"{tenant}.example", "templates": templates, "endpoints": endpoints}}}


async def lookup_bench(conn: asyncpg.Connection, ids: list[str], rounds: int) -> dict[str, float]:
    await conn.execute("DROP TABLE IF EXISTS plain_ps_endpoints")
    await conn.execute("CREATE TABLE plain_ps_endpoints AS SELECT * FROM ps_endpoints")
    await conn.execute("CREATE UNIQUE INDEX ON plain_ps_endpoints (id)")
    await conn.execute("ANALYZE plain_ps_endpoints; ANALYZE pbx.rt_ps_endpoints")
    view_q = "SELECT * FROM ps_endpoints WHERE id = $1 LIMIT 1"
    table_q = "SELECT * FROM plain_ps_endpoints WHERE id = $1 LIMIT 1"
    # Unprepared text queries, as the realtime driver sends them (PQexec, no prepared statements).
    view_t: list[float] = []
    table_t: list[float] = []
    rng = random.Random(7)
    for _ in range(rounds):
        i = rng.choice(ids)
        order = [(view_q, view_t), (table_q, table_t)]
        rng.shuffle(order)
        for q, sink in order:
            t0 = time.perf_counter()
            await conn.execute(q.replace("$1", f"'{i}'"))
            sink.append(time.perf_counter() - t0)
    out = {}
    for p in (50, 99):
        v, t = percentile(view_t, p), percentile(table_t, p)
        out[f"view_p{p}_ms"] = round(v * 1000, 4)
        out[f"table_p{p}_ms"] = round(t * 1000, 4)
        out[f"view_vs_table_p{p}_ratio"] = round(v / t, 3)
    return out


def _backend_cpu_ns(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0])
    except OSError:
        return None  # the server is not on this machine


_VARIANT_VIEWS = {
    "view_select_star": "CREATE VIEW bench_v_star AS SELECT * FROM pbx.rt_ps_endpoints",
    "view_security_invoker": "CREATE VIEW bench_v_invoker WITH (security_invoker) AS SELECT * FROM pbx.rt_ps_endpoints",
    "view_security_barrier": "CREATE VIEW bench_v_barrier WITH (security_barrier) AS SELECT * FROM pbx.rt_ps_endpoints",
    "view_2_columns": "CREATE VIEW bench_v_two AS SELECT id, transport FROM pbx.rt_ps_endpoints",
}
# glibc malloc settings for the server processes: keep freed memory instead of returning it to the
# kernel, and serve large blocks from the heap instead of fresh mmaps (64 MB each).
MALLOC_TUNABLES = ":".join(f"glibc.malloc.{k}=67108864" for k in ("trim_threshold", "top_pad", "mmap_threshold"))
_SETTINGS = "SET jit = off; SET geqo = off"


async def variants_bench(dsn: str, ids: list[str], blocks: int, block: int) -> dict[str, float]:
    """Server CPU and wall time per unprepared lookup of each variant, relative to the plain table,
    in blocks of `block` lookups, the order of the variants shuffled per round."""
    conn = await asyncpg.connect(dsn)
    tuned = await asyncpg.connect(dsn)
    # More backends doing the same: the cost of the view differs from one backend to another.
    others = [await asyncpg.connect(dsn) for _ in range(3)]
    try:
        for name in ("bench_v_star", "bench_v_invoker", "bench_v_barrier", "bench_v_two"):
            await conn.execute(f"DROP VIEW IF EXISTS {name}")
        for ddl in _VARIANT_VIEWS.values():
            await conn.execute(ddl)
        await conn.execute("DROP TABLE IF EXISTS plain_two")
        await conn.execute("CREATE TABLE plain_two AS SELECT id, transport FROM ps_endpoints")
        await conn.execute("CREATE UNIQUE INDEX ON plain_two (id); ANALYZE plain_two")
        await tuned.execute(_SETTINGS)
        cases: dict[str, tuple[asyncpg.Connection, str]] = {
            "table": (conn, "plain_ps_endpoints"),
            "view": (conn, "ps_endpoints"),
            "view_select_star": (conn, "bench_v_star"),
            "view_security_invoker": (conn, "bench_v_invoker"),
            "view_security_barrier": (conn, "bench_v_barrier"),
            "view_role_settings": (tuned, "ps_endpoints"),
            "table_role_settings": (tuned, "plain_ps_endpoints"),
            "view_2_columns": (conn, "bench_v_two"),
            "table_2_columns": (conn, "plain_two"),
        }
        for n, other in enumerate(others, 2):
            cases[f"view_backend_{n}"] = (other, "ps_endpoints")
            cases[f"table_backend_{n}"] = (other, "plain_ps_endpoints")
        cpu: dict[str, list[float]] = {k: [] for k in cases}
        wall: dict[str, list[float]] = {k: [] for k in cases}
        rng = random.Random(11)
        names = list(cases)
        for _ in range(blocks):
            rng.shuffle(names)
            for name in names:
                c, rel = cases[name]
                pid = c.get_server_pid()
                picks = [rng.choice(ids) for _ in range(block)]
                c0, t0 = _backend_cpu_ns(pid), time.perf_counter()
                for i in picks:
                    await c.execute(f"SELECT * FROM {rel} WHERE id = '{i}' LIMIT 1")
                wall[name].append((time.perf_counter() - t0) / block)
                c1 = _backend_cpu_ns(pid)
                if c0 is not None and c1 is not None:
                    cpu[name].append((c1 - c0) / 1e9 / block)
    finally:
        for c in (conn, tuned, *others):
            await c.close()
    out: dict[str, float] = {}
    for name in cases:
        ref = "table_2_columns" if name.endswith("2_columns") else "table"
        ref = "table_role_settings" if name == "view_role_settings" else ref
        ref = name.replace("view_", "table_") if name.startswith("view_backend_") else ref
        out[f"variant_{name}_wall_us"] = round(percentile(wall[name], 50) * 1e6, 1)
        out[f"variant_{name}_wall_ratio"] = round(percentile(wall[name], 50) / percentile(wall[ref], 50), 3)
        if cpu[name]:
            out[f"variant_{name}_server_cpu_us"] = round(percentile(cpu[name], 50) * 1e6, 1)
            out[f"variant_{name}_server_cpu_ratio"] = round(percentile(cpu[name], 50) / percentile(cpu[ref], 50), 3)
    return out


async def run(dsn: str, n_lookup: int, n_apply: int, rounds: int, variants: bool = False) -> dict[str, float]:
    conn = await asyncpg.connect(dsn)
    result: dict[str, float] = {"endpoints_for_lookup": n_lookup, "endpoints_for_apply": n_apply}
    try:
        t0 = time.perf_counter()
        await apply_config(conn, parse_config(config(n_apply, "bulk")))
        result["apply_10k_s" if n_apply == 10000 else f"apply_{n_apply}_s"] = round(time.perf_counter() - t0, 2)

        t0 = time.perf_counter()
        changes = await apply_config(conn, parse_config(config(n_apply, "bulk", "bulk-other")))
        result["template_edit_apply_s"] = round(time.perf_counter() - t0, 2)
        result["template_edit_change_set_size"] = len(changes)

        if n_lookup > n_apply:
            await apply_config(conn, parse_config(config(n_lookup, "look")))
            ids = [f"{100000 + i}@look.example" for i in range(n_lookup)]
        else:
            ids = [f"{100000 + i}@bulk.example" for i in range(n_apply)]
        result.update(await lookup_bench(conn, ids, rounds))
        if variants:
            result.update(await variants_bench(dsn, ids, 20 if rounds < 10000 else 60, 500))
    finally:
        await conn.close()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dsn", help="use this database instead of a throwaway cluster")
    ap.add_argument("--variants", action="store_true", help="also measure view forms and role settings (4)")
    ap.add_argument(
        "--malloc-tunables",
        action="store_true",
        help=f"start the throwaway cluster with GLIBC_TUNABLES={MALLOC_TUNABLES} (see bench/RESULTS.md)",
    )
    args = ap.parse_args()
    n_lookup, n_apply, rounds = (20000, 10000, 3000) if args.quick else (100000, 10000, 20000)
    if args.malloc_tunables:
        # Inherited by pg_ctl and every backend; glibc reads it at process start.
        os.environ["GLIBC_TUNABLES"] = MALLOC_TUNABLES
    with private_postgres(args.dsn) as dsn:
        result = asyncio.run(run(dsn, n_lookup, n_apply, rounds, args.variants))
    for k, v in result.items():
        print(f"{k:34} {v}", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
