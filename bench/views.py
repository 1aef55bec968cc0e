#!/usr/bin/env python3
"""Realtime view cost and bulk apply.

(1) Endpoint lookup by id through the realtime views (what res_config_pgsql sends:
    SELECT * FROM ps_endpoints WHERE id = $1 LIMIT 1) against an identical plain table holding the
    same flattened rows, interleaved in one loop so both see the same machine noise; N endpoints
    inheriting through 4 template levels.
(2) `apply` of 10k endpoints (one transaction, from an empty tenant).
(3) A template edit affecting 10k endpoints: size of the change set and time of the apply.

Prints a JSON object as its LAST line. --quick: fewer endpoints and lookups (well under 5 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
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


async def run(dsn: str, n_lookup: int, n_apply: int, rounds: int) -> dict[str, float]:
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
    finally:
        await conn.close()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dsn", help="use this database instead of a throwaway cluster")
    args = ap.parse_args()
    n_lookup, n_apply, rounds = (20000, 10000, 3000) if args.quick else (100000, 10000, 20000)
    with private_postgres(args.dsn) as dsn:
        result = asyncio.run(run(dsn, n_lookup, n_apply, rounds))
    for k, v in result.items():
        print(f"{k:34} {v}", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
