#!/usr/bin/env python3
"""The change push against `module reload`, on the real stack, in one run.

(a) One object: a callerid change on one cached endpoint (plain SQL, autocommit), from the moment
    its commit returns until Asterisk itself reports the new value (AMI PJSIPShowEndpoint, polled
    back to back, ~5 ms a poll). p50/p95; the commit's own duration (the flush) is printed apart.
(b) A template edit reaching N endpoints (all cached): from the commit until the pusher has made
    every one effective on the node (its pending deliveries are zero; after that every lookup reads
    the new row), then checked on a sample through AMI. Against, in the same run and alternating:
    `module reload res_pjsip.so` of a second Asterisk holding the same N endpoints in a static
    pjsip.conf whose template was edited. reload_speedup_ratio = reload time / our time. The time
    the database spends flushing the edit itself (before the commit returns) is printed apart.
(c) The cost model of the pusher's per-object / whole-cache choice: one pipelined ExpireObject
    against one re-read of an expired endpoint, measured here (push_plan.EXPIRE_TO_REREAD_COST).

Prints a JSON object as its LAST line. --quick: 10k endpoints, 30 samples, 2 rounds (under 5 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import percentile
from bench._pjsip import StaticNode, apply_config, config_yaml, endpoint_ids
from devstack.stack import Stack
from sorcery_backend.ami import AmiSession

TENANT = "bpush"


async def ami(stack: Stack) -> AmiSession:
    s = stack.settings
    session = AmiSession("127.0.0.1", s.ami_port, s.ami_user, s.ami_password)
    await session.connect()
    return session


async def callerid(session: AmiSession, eid: str) -> str:
    msgs = await session.send_list({"Action": "PJSIPShowEndpoint", "Endpoint": eid}, timeout=60)
    return str(next(m for m in msgs if m.get("Event") == "EndpointDetail")["Callerid"])


async def read_all(session: AmiSession, ids: list[str]) -> tuple[dict[str, str], float]:
    window = asyncio.Semaphore(32)

    async def one(eid: str) -> tuple[str, str]:
        async with window:
            return eid, await callerid(session, eid)

    t0 = time.perf_counter()
    seen = dict(await asyncio.gather(*(one(e) for e in ids)))
    return seen, time.perf_counter() - t0


async def pending(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM pbx.push_pending"))


async def one_object(
    conn: asyncpg.Connection, session: AmiSession, ids: list[str], k: int
) -> tuple[list[float], list[float]]:
    """(commit returned -> effective, commit statement itself) per sample."""
    rng = random.Random(5)
    out: list[float] = []
    commits: list[float] = []
    for i in range(k):
        eid = rng.choice(ids)
        await callerid(session, eid)  # cached now
        want = f'"One{i}" <{i}>'
        t0 = time.perf_counter()
        await conn.execute(
            "INSERT INTO pbx.object_options (object_id, section, option, value) "
            "SELECT e.id, 'endpoint', 'callerid', ARRAY[$2] FROM pbx.objects e JOIN pbx.tenants t "
            "ON t.id = e.tenant_id WHERE t.name = $3 AND e.name = $1 "
            "ON CONFLICT (object_id, section, option) DO UPDATE SET value = excluded.value",
            eid.split("@")[0],
            want,
            TENANT,
        )
        t1 = time.perf_counter()
        while await callerid(session, eid) != want:
            if time.perf_counter() - t1 > 30:
                raise RuntimeError(f"{eid}: change not effective after 30 s")
        out.append(time.perf_counter() - t1)
        commits.append(t1 - t0)
    return out, commits


async def template_edit(conn: asyncpg.Connection, session: AmiSession, ids: list[str], value: str) -> dict[str, float]:
    await read_all(session, ids)  # every endpoint cached: the worst case for staleness
    while await pending(conn):
        await asyncio.sleep(0.01)
    t_issue = time.perf_counter()
    await conn.execute(
        "UPDATE pbx.object_options o SET value = ARRAY[$1] FROM pbx.objects e JOIN pbx.tenants t "
        "ON t.id = e.tenant_id WHERE o.object_id = e.id AND t.name = $2 AND e.name = 'base' AND o.option = 'callerid'",
        value,
        TENANT,
    )
    t_commit = time.perf_counter()
    while await pending(conn):
        if time.perf_counter() - t_commit > 120:
            raise RuntimeError("template edit not delivered after 120 s")
        await asyncio.sleep(0.002)
    t_done = time.perf_counter()
    sample = random.Random(len(value)).sample(ids, min(500, len(ids)))
    seen, _ = await read_all(session, sample)
    wrong = [e for e, v in seen.items() if v != _shown(value)]
    if wrong:
        raise RuntimeError(f"{len(wrong)} endpoints not effective after the push, e.g. {wrong[:3]}")
    return {"push_s": t_done - t_commit, "flush_s": t_commit - t_issue}


def _shown(value: str) -> str:
    """How Asterisk prints a callerid given as 'Name <num>'."""
    name, num = value.rsplit(" <", 1)
    return f'"{name}" <{num}'


async def cost_model(session: AmiSession, ids: list[str]) -> dict[str, float]:
    sample = ids[:2000]
    await read_all(session, sample)
    _, warm = await read_all(session, sample)
    window = asyncio.Semaphore(64)

    async def expire(eid: str) -> None:
        async with window:
            await session.send(
                {"Action": "SorceryMemoryCacheExpireObject", "Cache": "res_pjsip/endpoint", "Object": eid}
            )

    t0 = time.perf_counter()
    await asyncio.gather(*(expire(e) for e in sample))
    expire_s = time.perf_counter() - t0
    _, cold = await read_all(session, sample)
    per_expire = expire_s / len(sample)
    per_reread = max(cold - warm, 1e-9) / len(sample)
    return {
        "expire_object_us": round(per_expire * 1e6, 1),
        "reread_us": round(per_reread * 1e6, 1),
        "expire_to_reread_cost": round(per_expire / per_reread, 3),
    }


async def measure(stack: Stack, static: StaticNode, n: int, k: int, rounds: int) -> dict[str, object]:
    ids = endpoint_ids(TENANT, n)
    conn = await asyncpg.connect(stack.settings.database_url())
    session = await ami(stack)
    try:
        one, commits = await one_object(conn, session, ids, k)
        # (a) gave some endpoints a callerid of their own, which a template edit does not reach.
        await conn.execute(
            "DELETE FROM pbx.object_options o USING pbx.objects e WHERE o.object_id = e.id AND e.kind = 'endpoint' "
            "AND o.option = 'callerid'"
        )
        ours: list[dict[str, float]] = []
        reloads: list[float] = []
        for r in range(rounds):
            ours.append(await template_edit(conn, session, ids, f"Round{r} <{r}>"))
            reloads.append(await asyncio.to_thread(static.reload_seconds, f"Round{r} <{r}>"))
            print(
                f"round {r + 1}: push {ours[-1]['push_s'] * 1000:.0f} ms (flush before commit "
                f"{ours[-1]['flush_s']:.2f} s), static reload {reloads[-1]:.2f} s",
                file=sys.stderr,
            )
        costs = await cost_model(session, ids)
    finally:
        session.close()
        await conn.close()
    push_s = statistics.median(o["push_s"] for o in ours)
    reload_s = statistics.median(reloads)
    return {
        "endpoints": n,
        "one_object_samples": k,
        "one_object_p50_ms": round(percentile(one, 50) * 1000, 1),
        "one_object_p95_ms": round(percentile(one, 95) * 1000, 1),
        "one_object_commit_p50_ms": round(percentile(commits, 50) * 1000, 1),
        "template_edit_push_s": round(push_s, 3),
        "template_edit_flush_s": round(statistics.median(o["flush_s"] for o in ours), 3),
        "static_reload_s": round(reload_s, 3),
        "reload_speedup_ratio": round(reload_s / push_s, 1),
        "reload_vs_flush_and_push_ratio": round(
            reload_s / statistics.median(o["push_s"] + o["flush_s"] for o in ours), 2
        ),
        **costs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--endpoints", type=int, default=10_000)
    args = ap.parse_args()
    k, rounds = (30, 2) if args.quick else (100, 3)
    stack = Stack.named(f"bench-push-{os.getpid()}")
    static: StaticNode | None = None
    try:
        stack.up()
        apply_config(stack, config_yaml(TENANT, args.endpoints))
        static = StaticNode(stack, TENANT, args.endpoints)
        static.start()
        figures = asyncio.run(measure(stack, static, args.endpoints, k, rounds))
        print(json.dumps(figures))
    finally:
        if static is not None:
            static.destroy()
        stack.destroy()


if __name__ == "__main__":
    main()
