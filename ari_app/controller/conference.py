"""An answered call: a mixing bridge (a conference of two, to begin with) that can take more parties.

A direct 1:1 bridge would have to be rebuilt to add a third party; a mixing bridge only gets one
more channel. The conference ends when fewer than two parties are left in it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable

from ari_app.ari import AriClient, AriNotFound
from ari_app.controller.ids import OurChannel, bridge_id_for
from pbx_base.settings import get_settings

__all__ = ["Conference"]


class Conference:
    def __init__(
        self,
        ari: AriClient,
        call_id: str,
        log: logging.LoggerAdapter[logging.Logger],
        *,
        members: set[str] | None = None,
        tenant_domain: str = "",
    ) -> None:
        self.ari = ari
        self.call_id = call_id
        self.bridge_id = bridge_id_for(call_id)
        self.members: set[str] = set(members or ())
        self.pending: set[str] = set()  # parties dialed, not answered yet
        self.domain = tenant_domain
        self.closed = False
        self.log = log
        self._closed = asyncio.Event()
        self._party_numbers = itertools.count(1)
        self._settings = get_settings()

    async def open(
        self,
        caller_id: str,
        answered_id: str,
        answered_ready: Awaitable[object] | None = None,
        marks: dict[str, float] | None = None,
    ) -> None:
        """Answer the caller first (its 200 OK is what the caller waits for: Asterisk gets the
        request alone), then make the bridge and add both once the answered leg is in Stasis
        (``answered_ready``): it goes Up a moment before, and only a Stasis channel joins."""
        self.members |= {caller_id, answered_id}
        marks = marks if marks is not None else {}
        await self.ari.channels.answer(caller_id)
        marks["answered"] = time.perf_counter()
        await asyncio.gather(
            self.ari.bridges.create("mixing", bridge_id=self.bridge_id, name=self.call_id),
            asyncio.wait_for(answered_ready, self._settings.answered_leg_wait_s)
            if answered_ready is not None
            else asyncio.sleep(0),
        )
        await self.ari.bridges.add_channel(self.bridge_id, [caller_id, answered_id])
        marks["bridged"] = time.perf_counter()
        self.log.info("bridged %s and %s in %s", caller_id, answered_id, self.bridge_id)

    async def dial_party(self, dial_string: str, caller_id: str | None = None) -> str:
        party = OurChannel(self.call_id, "party", next(self._party_numbers))
        channel_id = party.channel_id
        self.pending.add(channel_id)
        try:
            await self.ari.channels.originate(
                dial_string,
                app_args=party.stasis_args,
                channel_id=channel_id,
                caller_id=caller_id,
                timeout=self._settings.party_ring_s,
            )
        except Exception:
            self.pending.discard(channel_id)
            raise
        self.log.info("dialing party %s (%s)", channel_id, dial_string)
        return channel_id

    async def party_answered(self, channel_id: str) -> None:
        self.pending.discard(channel_id)
        if self.closed:
            await self._hangup(channel_id)
            return
        self.members.add(channel_id)
        await self.ari.bridges.add_channel(self.bridge_id, channel_id)
        self.log.info("party %s joined %s (%d in)", channel_id, self.bridge_id, len(self.members))

    async def left(self, channel_id: str) -> None:
        self.pending.discard(channel_id)
        if channel_id not in self.members:
            return
        self.members.discard(channel_id)
        self.log.info("%s left %s (%d in)", channel_id, self.bridge_id, len(self.members))
        if len(self.members) < 2:
            await self.close()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            for channel_id in list(self.members | self.pending):
                await self._hangup(channel_id)
            try:
                await self.ari.bridges.destroy(self.bridge_id)
            except AriNotFound:
                pass
            self.log.info("conference %s closed", self.bridge_id)
        finally:
            # Closed for the controller even when a request failed: it must not wait forever.
            self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def follows(self, channel_id: str) -> bool:
        """A party of the conference, in the bridge or dialed."""
        return channel_id in self.members or channel_id in self.pending

    async def _hangup(self, channel_id: str) -> None:
        try:
            await self.ari.channels.hangup(channel_id, reason="normal")
        except AriNotFound:
            pass
