#!/usr/bin/env python3
"""Cluster-wide in-use state (issue 18 item 3): an ARI event socket per peer node against state in
Postgres, on the real stack, in one run.

A channel appears on a PJSIP endpoint of "node B" (POST /channels/create: allocated on the endpoint,
not dialed) and goes again (DELETE). "Controller A" learns it two ways from the same event:

(a) ARI: its own read-only app on B's event socket, subscribed to ``endpoint:PJSIP`` and filtered to
    EndpointStateChange (what ari_app/controller/peers.py opens): t_ari = event received - request sent.
(b) Postgres: B's controller, on that same event, upserts the endpoint's channels and NOTIFYs in one
    autocommit statement; A LISTENs: t_pg = notification received - request sent (t_ari plus the
    write, the commit and the notification).

Per call-path costs: the write (B's controller, per channel change: a call makes at least four), the
read a call would do at routing without a LISTEN-fed cache, A's CPU per event received (parse), and
Asterisk's CPU per channel change with 4 extra watcher apps against none (what N-1 peers cost B).

All of it on one node over loopback: a peer's socket is the same socket to another address. Prints a
JSON object as its LAST line. --quick: 40 samples, 100 cycles per CPU block (under 3 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ari_app.ari import AriClient, Connected, EndpointStateChange, HttpAriTransport, parse_event
from bench._common import percentile
from bench._pjsip import apply_config
from devstack import sipp
from devstack.stack import Stack

DOMAIN = "bpres.example"
USER = "1001"
CONFIG = f"""
tenants:
  bpres:
    domain: {DOMAIN}
    templates:
      base:
        transport: transport-udp
        endpoint: {{allow: "!all,ulaw", direct_media: "no"}}
        aor: {{max_contacts: 1, remove_existing: "yes"}}
    endpoints:
      "{USER}": {{templates: [base], auth: {{password: pw-{USER}}}}}
"""
ENDPOINT = f"{USER}@{DOMAIN}"

SAMPLE_EVENT = {
    "type": "EndpointStateChange",
    "application": "pbx-peer",
    "timestamp": "2026-12-03T14:00:00.000+0000",
    "asterisk_id": "00:00:00:00:00:01",
    "endpoint": {"technology": "PJSIP", "resource": ENDPOINT, "state": "online", "channel_ids": ["n2-1733.12"]},
}


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Watcher:
    """One app on the node's event socket, as a peer feed: EndpointStateChange only."""

    def __init__(self, transport: HttpAriTransport, app: str) -> None:
        self.client = AriClient(transport, app)
        self.seen: asyncio.Queue[tuple[float, frozenset[str]]] = asyncio.Queue()
        self.ready = asyncio.Event()

    async def run(self) -> None:
        async with contextlib.aclosing(self.client.events()) as stream:
            async for item in stream:
                if isinstance(item, EndpointStateChange) and item.endpoint.resource == ENDPOINT:
                    self.seen.put_nowait((time.perf_counter(), frozenset(item.endpoint.channel_ids)))
                elif isinstance(item, Connected):
                    await self.client.applications.filter(allowed=["EndpointStateChange"])
                    await self.client.applications.subscribe("endpoint:PJSIP")
                    self.ready.set()

    async def until(self, want: bool, timeout: float = 5.0) -> tuple[float, frozenset[str]]:
        async with asyncio.timeout(timeout):
            while True:
                at, ids = await self.seen.get()
                if bool(ids) == want:
                    return at, ids


@contextlib.asynccontextmanager
async def watching(transport: HttpAriTransport, app: str) -> AsyncIterator[Watcher]:
    w = Watcher(transport, app)
    task = asyncio.create_task(w.run())
    try:
        async with asyncio.timeout(10):
            await w.ready.wait()
        yield w
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def measure(stack: Stack, samples: int, cycles: int) -> dict[str, float]:
    s = stack.settings
    dsn = s.database_url()
    writer = await asyncpg.connect(dsn)
    listener = await asyncpg.connect(dsn)
    await writer.execute(
        "CREATE TABLE IF NOT EXISTS public.bench_presence (node text, endpoint text, channels text[], "
        "PRIMARY KEY (node, endpoint))"
    )
    notified: asyncio.Queue[float] = asyncio.Queue()
    await listener.add_listener("bench_presence", lambda *_: notified.put_nowait(time.perf_counter()))
    upsert = (
        "WITH w AS (INSERT INTO public.bench_presence VALUES ('b', $1, $2) ON CONFLICT (node, endpoint) "
        "DO UPDATE SET channels = excluded.channels RETURNING 1) SELECT pg_notify('bench_presence', $1) FROM w"
    )
    ari, pg, writes, reads = [], [], [], []
    async with HttpAriTransport(s.ari_url, s.ari_user, s.ari_password) as transport:
        owner = AriClient(transport, "bench-peer")
        async with watching(transport, "bench-peer") as w:
            for i in range(samples):
                t0 = time.perf_counter()
                ch = await owner.channels.create(f"PJSIP/{ENDPOINT}", app="bench-peer", channel_id=f"bench-{i}")
                t1, ids = await w.until(True)
                ari.append(t1 - t0)
                tw = time.perf_counter()
                await writer.execute(upsert, ENDPOINT, sorted(ids))
                writes.append(time.perf_counter() - tw)
                t2 = await asyncio.wait_for(notified.get(), 5)
                pg.append(t2 - t0)
                tr = time.perf_counter()
                await writer.fetch(
                    "SELECT endpoint, channels FROM public.bench_presence WHERE endpoint = any($1)", [ENDPOINT]
                )
                reads.append(time.perf_counter() - tr)
                await owner.channels.hangup(ch.id)
                await w.until(False)
                tw = time.perf_counter()
                await writer.execute(upsert, ENDPOINT, [])
                writes.append(time.perf_counter() - tw)
                await asyncio.wait_for(notified.get(), 5)

            # Asterisk's CPU per create+hangup with only our watcher, then with 4 more.
            pid = stack.asterisk.pid()
            assert pid is not None

            async def cpu_per_cycle() -> float:
                c0 = cpu_s(pid)
                for _ in range(cycles):
                    ch = await owner.channels.create(f"PJSIP/{ENDPOINT}", app="bench-peer")
                    await w.until(True)
                    await owner.channels.hangup(ch.id)
                    await w.until(False)
                return (cpu_s(pid) - c0) / cycles

            base = [await cpu_per_cycle()]
            async with contextlib.AsyncExitStack() as more:
                for k in range(4):
                    await more.enter_async_context(watching(transport, f"bench-peer-{k}"))
                extra = [await cpu_per_cycle()]
            base.append(await cpu_per_cycle())
    await writer.close()
    await listener.close()

    n = 20_000
    c0 = time.process_time()
    for _ in range(n):
        parse_event(SAMPLE_EVENT)
    parse_us = (time.process_time() - c0) / n * 1e6

    def ms(xs: list[float], p: float) -> float:
        return round(percentile(xs, p) * 1000, 2)

    base_cpu = min(base)
    return {
        "samples": samples,
        "ari_event_p50_ms": ms(ari, 50),
        "ari_event_p95_ms": ms(ari, 95),
        "pg_notify_p50_ms": ms(pg, 50),
        "pg_notify_p95_ms": ms(pg, 95),
        "pg_write_p50_ms": ms(writes, 50),
        "pg_write_p95_ms": ms(writes, 95),
        "pg_read_p50_ms": ms(reads, 50),
        "event_parse_us": round(parse_us, 1),
        "asterisk_cpu_per_change_1_watcher_ms": round(base_cpu / 2 * 1000, 3),
        "asterisk_cpu_per_change_5_watchers_ms": round(extra[0] / 2 * 1000, 3),
        "asterisk_cpu_per_extra_watcher_per_change_ms": round((extra[0] - base_cpu) / 2 / 4 * 1000, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    samples, cycles = (40, 100) if args.quick else (200, 400)
    stack = Stack.named(f"bench-presence-{os.getpid()}")
    try:
        stack.up()
        apply_config(stack, CONFIG)
        port = sipp.free_udp_port()
        r = sipp.register(stack.settings.sip_addr, USER, DOMAIN, f"pw-{USER}", local_port=port)
        if r.final != 200:
            raise SystemExit(f"REGISTER {USER}: {r.responses} {r.stderr}")
        figures = asyncio.run(measure(stack, samples, cycles))
        print(json.dumps(figures))
    finally:
        stack.destroy()


if __name__ == "__main__":
    main()
