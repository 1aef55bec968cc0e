"""Who is on the phone: every channel on every PJSIP endpoint, of every node of the cluster.

Fed by ARI EndpointStateChange events (the app subscribes to ``endpoint:PJSIP``), seeded from
``GET /endpoints/PJSIP`` at each (re)connect, and told synchronously about the legs the controller
creates, so two calls routed in the same instant already see each other's legs. The other nodes'
channels come the same way from their own ARI (peers.py), kept per node: a node whose feed is
lost is forgotten whole (were it dead, its channels are gone; were only the feed down, the next
connect reseeds it). Nothing is stored in the database: Asterisk is the only authority on which
channels exist.
"""

from __future__ import annotations

from collections.abc import Iterable

from ari_app.controller.ids import call_of_channel

__all__ = ["OWN_NODE", "Presence"]

# The node this controller runs on; a peer is named as in pbx.nodes.
OWN_NODE = ""


class Presence:
    def __init__(self) -> None:
        self._reported: dict[str, dict[str, frozenset[str]]] = {}  # node -> endpoint id -> channel ids
        self._own: dict[str, str] = {}  # channel id -> endpoint id, until Asterisk reports it gone

    def reset(self, endpoints: Iterable[tuple[str, Iterable[str]]], *, node: str = OWN_NODE) -> None:
        self._reported.pop(node, None)
        for endpoint_id, channels in endpoints:
            self.report(endpoint_id, channels, node=node)

    def report(self, endpoint_id: str, channel_ids: Iterable[str], *, node: str = OWN_NODE) -> None:
        ids = frozenset(channel_ids)
        if ids:
            self._reported.setdefault(node, {})[endpoint_id] = ids
        elif node in self._reported:
            self._reported[node].pop(endpoint_id, None)

    def forget(self, node: str) -> None:
        """Every channel a node reported: its feed is gone."""
        self._reported.pop(node, None)

    def add_own(self, endpoint_id: str, channel_id: str) -> None:
        self._own[channel_id] = endpoint_id

    def gone(self, channel_id: str) -> None:
        self._own.pop(channel_id, None)

    def channels(self, endpoint_id: str) -> set[str]:
        out = {c for c, e in self._own.items() if e == endpoint_id}
        for endpoints in self._reported.values():
            out |= endpoints.get(endpoint_id, frozenset())
        return out

    def in_use(self, endpoint_id: str, *, call_id: str | None = None) -> bool:
        """Any channel on the endpoint that is not ``call_id``'s own: its caller's channel and the
        legs it rang, which carry the call's id (ids.py)."""
        return any(call_of_channel(c) != call_id for c in self.channels(endpoint_id))
