"""Read-only event feeds on the other nodes' ARI: which devices are on a call there (issue 18).

In a cluster a phone's calls run on its own node, but whether it is busy matters to every node's
controller. So each controller keeps one feed per peer node: an ARI events WebSocket under an app
name of its own (``<app>-peer-<host>-<port>`` of this controller's node), which no dialplan names,
so it never receives a call, subscribed to ``endpoint:PJSIP`` and filtered to EndpointStateChange.
A feed makes no request but those and ``GET /endpoints/PJSIP``, which seeds the node's state at each
(re)connect. What a peer reports goes to :class:`Presence` under the node's name and is forgotten
when its feed drops or the node leaves the list. Measured against a Postgres table of channels (a
write and a NOTIFY per channel change) by bench/presence.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from ari_app.ari import (
    AriClient,
    AriError,
    AriTransport,
    Connected,
    Disconnected,
    Endpoint,
    EndpointStateChange,
    StreamItem,
)
from ari_app.controller.metrics import Metrics
from ari_app.controller.presence import Presence
from pbx_base.retry import Backoff

__all__ = ["PeerFeeds", "PeerTransport", "peer_app"]

logger = logging.getLogger("ari_app.controller.peers")

# Every event type a feed needs; Asterisk drops the others before serializing them.
_EVENTS = ["EndpointStateChange"]


class PeerTransport(AriTransport, Protocol):
    async def close(self) -> None: ...


def peer_app(app: str, own_addr: str) -> str:
    """The app name this controller's feeds register on every peer: one per watching node, so two
    nodes watching a third never replace each other's feed, and a restarted controller takes
    back its own instead of leaving one more behind."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"{app}-peer-{own_addr}")


class _Feed:
    """One peer node's events into :class:`Presence`, until cancelled."""

    def __init__(
        self,
        node: str,
        client: AriClient,
        presence: Presence,
        metrics: Metrics,
        retry_s: float,
        sleep: Callable[[float], Awaitable[object]],
    ) -> None:
        self.node = node
        self.client = client
        self._presence = presence
        self._metrics = metrics
        self._retry_s = retry_s
        self._sleep = sleep
        self._watch: asyncio.Task[None] | None = None
        # Events that came while the seed was on its way: applied after it, so the newest wins.
        self._pending: list[Endpoint] | None = None

    async def run(self) -> None:
        try:
            await self.client.run_events(self._handle)
            logger.error("peer %s: another connection took app %s; not watching it", self.node, self.client.app)
        except AriError as exc:  # refused for good (credentials): retrying would only repeat it
            logger.error("peer %s: not watching it: %s", self.node, exc)
        finally:
            self._down()

    async def _handle(self, item: StreamItem) -> None:
        if isinstance(item, Connected):
            self._down()
            self._pending = []
            self._watch = asyncio.create_task(self._seed(), name=f"peer-seed-{self.node}")
        elif isinstance(item, Disconnected):
            logger.warning("peer %s: events down (%s); its devices count as free", self.node, item.error)
            self._down()
        elif isinstance(item, EndpointStateChange) and item.endpoint.technology == "PJSIP":
            if self._pending is not None:
                self._pending.append(item.endpoint)
            else:
                self._presence.report(item.endpoint.resource, item.endpoint.channel_ids, node=self.node)

    async def _seed(self) -> None:
        """Subscribe and read every endpoint's channels. Asterisk refuses the subscription (422)
        while the node has no PJSIP endpoint yet (nothing registered or called there since it
        started): then no device of it is busy, and the feed asks again after a while."""
        while True:
            try:
                await self.client.applications.filter(allowed=_EVENTS)
                await self.client.applications.subscribe("endpoint:PJSIP")
                endpoints = await self.client.endpoints.list("PJSIP")
                break
            except AriError as exc:
                logger.info("peer %s: not watching its endpoints yet: %s", self.node, exc)
                await self._sleep(self._retry_s)
        self._presence.reset(((e.resource, e.channel_ids) for e in endpoints), node=self.node)
        for e in self._pending or ():
            self._presence.report(e.resource, e.channel_ids, node=self.node)
        self._pending = None
        self._metrics.set("pbx_ari_peer_connected", 1, node=self.node)
        logger.info("peer %s: watching %d PJSIP endpoints", self.node, len(endpoints))

    def _down(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self._pending = None
        self._presence.forget(self.node)
        self._metrics.set("pbx_ari_peer_connected", 0, node=self.node)


class PeerFeeds:
    """The feeds of the peers named in the last :meth:`update` (node name -> ``host:port``). A feed
    refused for good (bad credentials, its app name taken by another connection) stays stopped, its
    node's devices free, until the node's address changes or this controller restarts: retrying
    would only repeat the refusal, or steal the app back and forth."""

    def __init__(
        self,
        presence: Presence,
        *,
        app: str,
        connect: Callable[[str], PeerTransport],
        metrics: Metrics | None = None,
        backoff: Backoff = Backoff(),
        retry_s: float = 5.0,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self._presence = presence
        self._app = app
        self._connect = connect
        self._metrics = metrics or Metrics()
        self._backoff = backoff
        self._retry_s = retry_s
        self._sleep = sleep
        self._feeds: dict[str, tuple[str, PeerTransport, asyncio.Task[None]]] = {}

    @property
    def peers(self) -> dict[str, str]:
        return {node: addr for node, (addr, _, _) in self._feeds.items()}

    async def update(self, peers: Mapping[str, str]) -> None:
        """Start a feed per new peer, stop the feed of a peer gone or moved (then started anew)."""
        for node, (addr, _, _) in list(self._feeds.items()):
            if peers.get(node) != addr:
                await self._stop(node)
        for node, addr in peers.items():
            if node not in self._feeds:
                transport = self._connect(addr)
                client = AriClient(transport, self._app, backoff=self._backoff, sleep=self._sleep)
                feed = _Feed(node, client, self._presence, self._metrics, self._retry_s, self._sleep)
                self._feeds[node] = (addr, transport, asyncio.create_task(feed.run(), name=f"peer-{node}"))
                logger.info("peer %s: watching its ARI at %s as app %s", node, addr, self._app)

    async def close(self) -> None:
        for node in list(self._feeds):
            await self._stop(node)

    async def _stop(self, node: str) -> None:
        _, transport, task = self._feeds.pop(node)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await transport.close()
        self._presence.forget(node)
