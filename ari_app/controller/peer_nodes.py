"""The peer nodes a controller watches: pbx.nodes rows with an ARI address (sql/025), but its own.

Read at start, again on each ``pbx_nodes`` notification (`pbxctl nodes add|remove`, `dev up`) and
every ``recheck_s`` as well (a notification sent while the LISTEN connection was down is lost). A
controller knows its own node by address: the row whose ARI host:port is the one of its
``PBX_ARI_URL``. While the database is away the feeds keep running as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import urlsplit

import asyncpg

from pbx_base.retry import Backoff

__all__ = ["NODES_CHANNEL", "follow_peers", "own_ari_addr", "read_peers"]

logger = logging.getLogger("ari_app.controller.peers")

NODES_CHANNEL = "pbx_nodes"


def own_ari_addr(ari_url: str) -> str:
    """``http://127.0.0.11:8088/ari`` -> ``127.0.0.11:8088``, as `pbxctl nodes add --ari` writes it."""
    parts = urlsplit(ari_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or ""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def read_peers(conn: asyncpg.Connection, own_addr: str) -> dict[str, str]:
    """Node name -> ARI ``host:port`` of every node with an ARI address but this one."""
    rows = await conn.fetch("SELECT name, ari_host, ari_port FROM pbx.nodes WHERE ari_host IS NOT NULL ORDER BY name")
    addrs = {r["name"]: f"{r['ari_host']}:{r['ari_port']}" for r in rows}
    return {name: addr for name, addr in addrs.items() if addr.lower() != own_addr.lower()}


async def follow_peers(
    dsn: str,
    own_addr: str,
    update: Callable[[Mapping[str, str]], Awaitable[None]],
    *,
    backoff: Backoff = Backoff(maximum=10.0),
    recheck_s: float = 30.0,
) -> None:
    """``update`` with the peer list at start and after every change, until cancelled."""
    attempt = 0
    while True:
        began = time.monotonic()
        try:
            await _follow_once(dsn, own_addr, update, recheck_s)
        except Exception as exc:  # the follower outlives any failure; cancellation still ends it
            logger.warning("peer list: database away (%s); retrying", exc)
        if time.monotonic() - began >= backoff.reset_after:
            attempt = 0
        await asyncio.sleep(backoff.delay(attempt))
        attempt += 1


async def _follow_once(
    dsn: str, own_addr: str, update: Callable[[Mapping[str, str]], Awaitable[None]], recheck_s: float
) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    changed = asyncio.Event()
    try:
        await conn.add_listener(NODES_CHANNEL, lambda *_: changed.set())
        while True:
            changed.clear()
            await update(await read_peers(conn, own_addr))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), recheck_s)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), 5)
