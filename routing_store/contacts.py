"""The registered contacts (ps_contacts: endpoint id, contact id, URI) kept in memory, at a known
version of sql/022_contacts_notify.sql's counter.

The set is exact at one `(epoch, version)`: it holds what was committed up to that version. The
routing cache reads the current counter in its per-call statement and uses the set only when the
two are equal, so a late or missed notification can make a call probe ps_contacts, never route on a
stale contact. Notifications carry the change itself and are applied in version order; a gap (a
missed one, another epoch after a crash or a TRUNCATE) marks the set unusable until `load` reads it
whole again. Notifications that arrive during a load are queued and applied after it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import asyncpg

__all__ = ["CHANNEL", "ContactSet"]

CHANNEL = "pbx_contacts"
_log = logging.getLogger(__name__)

_LOAD = "SELECT endpoint, id, uri FROM public.ps_contacts WHERE endpoint IS NOT NULL"
_VERSION = "SELECT epoch, version FROM pbx.contacts_version"


class ContactSet:
    def __init__(self) -> None:
        self._by_endpoint: dict[str, dict[str, str]] = {}  # endpoint id -> contact id -> URI
        self.epoch: int | None = None
        self.version: int | None = None  # None: not usable (never loaded, or a gap since)
        self._loading = False
        self._queued: list[dict[str, object]] = []
        self.loads = 0
        self.applied = 0

    @property
    def current(self) -> tuple[int, int] | None:
        """The counter this set is exact at, or None when it must not be used."""
        if self.version is None or self.epoch is None:
            return None
        return self.epoch, self.version

    def rows(self, endpoint_ids: list[str]) -> Iterator[tuple[str, str, str]]:
        """(endpoint id, contact id, URI) of these endpoints, as the probe statement returns them."""
        by_endpoint = self._by_endpoint
        for ep in endpoint_ids:
            contacts = by_endpoint.get(ep)
            if contacts:
                for cid, uri in contacts.items():
                    yield ep, cid, uri

    # --- keeping it current ------------------------------------------------------------------------
    def invalidate(self) -> None:
        self.version = None

    async def load(self, conn: asyncpg.Connection) -> None:
        """Read the whole set and its counter in one snapshot, then the notifications queued meanwhile."""
        self._loading = True
        self.version = None
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                counter = await conn.fetchrow(_VERSION)
                rows = await conn.fetch(_LOAD)
        finally:
            self._loading = False
        queued, self._queued = self._queued, []
        if counter is None:
            # No counter row: the table was emptied by a crash (both are unlogged) and nothing was
            # registered since. The next change creates the row with a new epoch.
            return
        by_endpoint: dict[str, dict[str, str]] = {}
        for endpoint, cid, uri in rows:
            by_endpoint.setdefault(endpoint, {})[cid] = uri
        self._by_endpoint = by_endpoint
        self.epoch, self.version = counter["epoch"], counter["version"]
        self.loads += 1
        for change in queued:
            self._apply(change)

    def on_notification(self, payload: str) -> bool:
        """Apply one change; False when the set became unusable (the caller schedules a load)."""
        try:
            change = json.loads(payload)
        except ValueError:
            _log.warning("contact set: ignoring notification %r", payload)
            self.version = None
            return False
        if self._loading:
            self._queued.append(change)
            return True
        return self._apply(change)

    def _apply(self, change: dict[str, object]) -> bool:
        epoch, version = change.get("e"), change.get("v")
        if self.version is None or epoch != self.epoch or not isinstance(version, int) or change.get("reset"):
            self.version = None
            return False
        if version <= self.version:
            return True  # already in the loaded snapshot
        if version != self.version + 1:
            self.version = None  # a change was missed
            return False
        deleted, added = change.get("del"), change.get("add")
        if isinstance(deleted, list) and len(deleted) == 2:
            contacts = self._by_endpoint.get(deleted[0])
            if contacts is not None:
                contacts.pop(deleted[1], None)
                if not contacts:
                    del self._by_endpoint[deleted[0]]
        if isinstance(added, list) and len(added) == 3 and added[0] is not None:
            self._by_endpoint.setdefault(added[0], {})[added[1]] = added[2]
        self.version = version
        self.applied += 1
        return True
