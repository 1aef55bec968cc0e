#!/usr/bin/env python3
"""Sizing past one machine, on paper, from the per-object costs measured here (issue 18).

    python bench/sizing.py                       the tables (markdown), then their JSON as the last line
    python bench/sizing.py --write               rewrite the tables in docs/sizing.md between their markers
    python bench/sizing.py --check               exit 1 when docs/sizing.md is not what the inputs give
    python bench/sizing.py --measure-storage     bytes per object on a private cluster (inputs' storage figures)

The inputs, each with where it was measured or why it is assumed, are bench/sizing_inputs.yaml. The
model is deliberately plain arithmetic: load per second times cost per event, against what one
instance of each part offers, so a reader can check every cell by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

INPUTS = ROOT / "bench" / "sizing_inputs.yaml"
DOC = ROOT / "docs" / "sizing.md"
BEGIN, END = "<!-- sizing-table -->", "<!-- /sizing-table -->"

ENDPOINTS = (1_000, 100_000, 1_000_000)
TENANTS = (10, 1_000, 100_000)
MIN_NODES = 2  # one node is not a cluster: a second takes the calls when one dies
IDENTIFY_BUDGET_MS = 1.0  # an out-of-dialog request may spend this much matching identify rows


def load_inputs(path: Path = INPUTS) -> dict[str, float]:
    """Every figure of the inputs file by name (the groups are for the reader only)."""
    doc = yaml.safe_load(path.read_text())
    return {name: float(item["value"]) for group in doc.values() for name, item in group.items()}


@dataclass(frozen=True)
class Sizing:
    endpoints: int
    tenants: int
    registers_per_s: float
    busy_hour_cps: float
    concurrent_calls: float
    nodes: int
    node_load: float  # of the nodes' cores, at the node count chosen, without the spare
    kamailio_cores: float
    postgres_writes_per_s: float
    postgres_cores: float
    postgres_gb: float
    controller_load: float  # of one core: each node's controller is one Python process
    identify_rows: int
    identify_ms_per_request: float
    first_limit: str


def size(endpoints: int, tenants: int, x: dict[str, float]) -> Sizing:
    registers = endpoints / x["register_interval_s"]
    cps = endpoints * x["busy_hour_calls_per_endpoint"] / 3600
    concurrent = cps * x["mean_call_s"]

    node_ms_per_s = (
        registers * x["register_refresh_asterisk_ms"]
        + cps * x["call_setup_asterisk_ms"]
        + concurrent * x["media_per_call_ms_per_s"]
    )
    node_capacity_ms_per_s = 1000 * x["node_cores"] * x["target_utilisation"]
    working = max(1, math.ceil(node_ms_per_s / node_capacity_ms_per_s))
    nodes = max(MIN_NODES, working + 1)  # N+1: the spare carries a dead node's load

    kamailio_cores = (registers * x["kamailio_per_register_ms"] + cps * x["kamailio_per_call_ms"]) / 1000

    record_rows = cps * (1 + x["legs_per_call"])
    postgres_writes = registers + record_rows
    postgres_ms_per_s = registers * x["register_refresh_postgres_ms"] + cps * x["routing_statement_postgres_ms"]
    postgres_cores = postgres_ms_per_s / 1000 / x["target_utilisation"]
    records = endpoints * x["calls_per_endpoint_per_day"] * x["call_record_retention_days"]
    postgres_bytes = (
        endpoints * (x["bytes_per_endpoint"] + x["bytes_per_contact"]) + records * x["bytes_per_call_record"]
    )

    controller_load = cps / working * x["controller_per_call_ms"] / 1000
    identify_rows = int(tenants * x["trunks_per_tenant"])
    identify_ms = identify_rows * x["identify_match_per_row_us"] / 1000

    # Nodes scale out; these do not: one primary, one controller process per node, one identify
    # table every node scans whole, one edge (Kamailio also scales out, but behind one address).
    limits = {
        "Postgres primary": postgres_cores / x["postgres_cores"],
        "controller process": controller_load / x["target_utilisation"],
        "identify scan": identify_ms / IDENTIFY_BUDGET_MS,
        "Kamailio edge": kamailio_cores / (x["node_cores"] * x["target_utilisation"]),
    }
    name, load = max(limits.items(), key=lambda kv: kv[1])
    return Sizing(
        endpoints=endpoints,
        tenants=tenants,
        registers_per_s=registers,
        busy_hour_cps=cps,
        concurrent_calls=concurrent,
        nodes=nodes,
        node_load=node_ms_per_s / (1000 * x["node_cores"] * working),
        kamailio_cores=kamailio_cores,
        postgres_writes_per_s=postgres_writes,
        postgres_cores=postgres_cores,
        postgres_gb=postgres_bytes / 1e9,
        controller_load=controller_load,
        identify_rows=identify_rows,
        identify_ms_per_request=identify_ms,
        first_limit=f"{name} {load:.0%}",
    )


def table(x: dict[str, float]) -> list[Sizing]:
    return [size(e, t, x) for e in ENDPOINTS for t in TENANTS if t <= e]  # a tenant has an endpoint


def _n(v: float) -> str:
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.2g}" if v < 10 else f"{v:.0f}"


def markdown(rows: list[Sizing]) -> str:
    head = (
        "| endpoints | tenants | REGISTER/s | busy-hour calls/s | calls up | Asterisk nodes (N+1) | node CPU used "
        "| Kamailio cores | Postgres writes/s | Postgres cores | Postgres GB | controller, of one core "
        "| identify rows / ms per request | busiest single part |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r.endpoints:,} | {r.tenants:,} | {_n(r.registers_per_s)} | {_n(r.busy_hour_cps)} "
        f"| {_n(r.concurrent_calls)} | {r.nodes} | {r.node_load:.0%} | {_n(r.kamailio_cores)} "
        f"| {_n(r.postgres_writes_per_s)} | {_n(r.postgres_cores)} | {_n(r.postgres_gb)} "
        f"| {r.controller_load:.0%} | {r.identify_rows:,} / {_n(r.identify_ms_per_request)} | {r.first_limit} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def rewrite(doc: str, tables: str) -> str:
    before, rest = doc.split(BEGIN, 1)
    _old, after = rest.split(END, 1)
    return f"{before}{BEGIN}\n{tables}{END}{after}"


def measure_storage(n: int) -> dict[str, float]:
    """Bytes per endpoint and per contact, from a real migrated database."""
    from bench._common import private_postgres

    with private_postgres() as dsn:
        return asyncio.run(_measure_storage(dsn, n))


async def _measure_storage(dsn: str, n: int) -> dict[str, float]:
    import asyncpg

    from bench.views import config
    from sorcery_backend.apply import apply_config
    from sorcery_backend.declarative import parse_config
    from sorcery_backend.nodes import add_node

    history = ("outbox", "push_pending", "audit", "audit_pending")
    sizes = """
        SELECT c.relname, pg_total_relation_size(c.oid) AS bytes
        FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace
        WHERE c.relkind = 'r' AND s.nspname IN ('pbx', 'public')"""

    async def snapshot(conn: asyncpg.Connection) -> dict[str, int]:
        await conn.execute("VACUUM")
        return {r["relname"]: r["bytes"] for r in await conn.fetch(sizes)}

    conn = await asyncpg.connect(dsn)
    try:
        for i in (1, 2):
            await add_node(conn, f"node{i}", f"127.0.0.{10 + i}:5038", "pbx", "not-a-secret")
        empty = await snapshot(conn)
        await apply_config(conn, parse_config(config(n, "size")))
        await conn.execute("DELETE FROM pbx.push_pending; DELETE FROM pbx.outbox")
        applied = await snapshot(conn)
        contacts = [
            (f"{100000 + i}@size.example^3B@{i:032x}", f"sip:{100000 + i}@127.0.0.1:{5060 + i % 50000}")
            for i in range(n)
        ]
        await conn.executemany(
            "INSERT INTO ps_contacts (id, uri, expiration_time, qualify_frequency, outbound_proxy, path, "
            "user_agent, qualify_timeout, reg_server, authenticate_qualify, via_addr, via_port, call_id, "
            "endpoint, prune_on_boot, qualify_2xx_only) VALUES ($1::text, $2, 1796286995, 0, '', '', "
            "'Yealink SIP-T46U 108.86.0.20', 3.0, 'node1', 'no', '127.0.0.1', 5060, $1::text, "
            "split_part($1::text, '^', 1), 'no', 'false')",
            contacts,
        )
        with_contacts = await snapshot(conn)
    finally:
        await conn.close()

    def total(snap: dict[str, int], only: tuple[str, ...] = (), skip: tuple[str, ...] = ()) -> int:
        return sum(b for name, b in snap.items() if (not only or name in only) and name not in skip)

    return {
        "endpoints": n,
        "bytes_per_endpoint": round((total(applied, skip=history) - total(empty, skip=history)) / n),
        "bytes_per_contact": round(
            (total(with_contacts, only=("ps_contacts",)) - total(applied, only=("ps_contacts",))) / n
        ),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite docs/sizing.md's tables")
    mode.add_argument("--check", action="store_true", help="exit 1 if docs/sizing.md is stale")
    mode.add_argument("--measure-storage", action="store_true", help="measure bytes per object")
    ap.add_argument("--quick", action="store_true", help="with --measure-storage: 500 endpoints instead of 2,000")
    args = ap.parse_args()

    if args.measure_storage:
        print(json.dumps(measure_storage(500 if args.quick else 2000)))
        return 0

    rows = table(load_inputs())
    tables = markdown(rows)
    if args.write or args.check:
        doc = DOC.read_text()
        fresh = rewrite(doc, tables)
        if args.check:
            if fresh != doc:
                print(f"{DOC.relative_to(ROOT)}: stale sizing table: run python bench/sizing.py --write")
                return 1
            return 0
        DOC.write_text(fresh)
        return 0
    out: dict[str, Any] = {"rows": [asdict(r) for r in rows]}
    print(tables, end="")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
