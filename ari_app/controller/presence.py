"""Who is on the phone: every channel on every PJSIP endpoint, not only the controller's own.

Fed by ARI EndpointStateChange events (the app subscribes to ``endpoint:PJSIP``), seeded from
``GET /endpoints/PJSIP`` at each (re)connect, and told synchronously about the legs the controller
creates, so two calls routed in the same instant already see each other's legs. Nothing is
stored in the database: Asterisk is the only authority on which channels exist.
"""

from __future__ import annotations

from collections.abc import Iterable

from ari_app.controller.ids import call_of_channel

__all__ = ["Presence"]


class Presence:
    def __init__(self) -> None:
        self._reported: dict[str, frozenset[str]] = {}
        self._own: dict[str, str] = {}  # channel id -> endpoint id, until Asterisk reports it gone

    def reset(self, endpoints: Iterable[tuple[str, Iterable[str]]]) -> None:
        self._reported = {}
        for endpoint_id, channels in endpoints:
            self.report(endpoint_id, channels)

    def report(self, endpoint_id: str, channel_ids: Iterable[str]) -> None:
        ids = frozenset(channel_ids)
        if ids:
            self._reported[endpoint_id] = ids
        else:
            self._reported.pop(endpoint_id, None)

    def add_own(self, endpoint_id: str, channel_id: str) -> None:
        self._own[channel_id] = endpoint_id

    def gone(self, channel_id: str) -> None:
        self._own.pop(channel_id, None)

    def channels(self, endpoint_id: str) -> set[str]:
        own = {c for c, e in self._own.items() if e == endpoint_id}
        return own | set(self._reported.get(endpoint_id, ()))

    def in_use(self, endpoint_id: str, *, call_id: str | None = None) -> bool:
        """Any channel on the endpoint that is not ``call_id``'s own: its caller's channel and the
        legs it rang, which carry the call's id (ids.py)."""
        return any(call_of_channel(c) != call_id for c in self.channels(endpoint_id))
