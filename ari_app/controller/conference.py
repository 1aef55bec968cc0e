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

from ari_app.ari import AriClient, AriError, AriNotFound
from ari_app.controller.ids import OurChannel, bridge_id_for, hold_playback_id
from pbx_base.settings import get_settings

__all__ = ["HOLD_TONE", "Conference"]

# What a party hears while everyone else in its conference holds: a tone, not music. Asterisk's
# music on hold needs sound files in the node's data directory, which neither the dev chroot nor
# the containers have (the Debian package ships none); a tone needs nothing but indications. Three
# rising notes every 3 s, played until the hold ends.
HOLD_TONE = "tone:523/250,659/250,784/250,0/2250"


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
        # Transfers under way into this conference: while one rings, the conference stays open
        # with a single party (the transferer may hang up as soon as its REFER is accepted).
        self.transfers = 0
        self.on_hold: set[str] = set()  # parties whose phone put the call on hold
        self._hold_music: set[str] = set()  # parties hearing the hold tone
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

    async def add_member(self, channel_id: str) -> None:
        """A channel already answered (a transfer's target) joins. When the bridge refuses it (the
        channel gone meanwhile), it is no party, and a conference left alone by that ends."""
        if self.closed:
            await self._hangup(channel_id)
            return
        self.members.add(channel_id)
        try:
            await self.ari.bridges.add_channel(self.bridge_id, channel_id)
        except AriError:
            self.members.discard(channel_id)
            await self._close_if_alone()
            raise
        self.log.info("%s joined %s (%d in)", channel_id, self.bridge_id, len(self.members))
        await self._sync_hold_music()

    async def remove_member(self, channel_id: str) -> None:
        """Out of the bridge, not hung up (a transferer, whose phone ends its own dialog)."""
        await self.release(channel_id)
        await self._close_if_alone()

    async def release(self, channel_id: str) -> None:
        """Out of the bridge, to join another one: the conference stays as it is otherwise."""
        if channel_id not in self.members:
            return
        self.members.discard(channel_id)
        self.on_hold.discard(channel_id)
        await self._stop_hold_music(channel_id)
        try:
            await self.ari.bridges.remove_channel(self.bridge_id, channel_id)
        except AriError as exc:  # gone meanwhile: nothing to remove
            self.log.info("removing %s from %s: %s", channel_id, self.bridge_id, exc)
        self.log.info("%s removed from %s (%d in)", channel_id, self.bridge_id, len(self.members))
        await self._sync_hold_music()

    async def hold(self, channel_id: str, held: bool) -> None:
        """A party's phone put the call on hold (or took it off). Hold in a mixing bridge does
        nothing by itself: a party left with nobody but held parties hears the hold tone."""
        if channel_id not in self.members:
            return
        if held:
            self.on_hold.add(channel_id)
        else:
            self.on_hold.discard(channel_id)
        self.log.info("%s %s", channel_id, "holds" if held else "resumes")
        await self._sync_hold_music()

    async def _sync_hold_music(self) -> None:
        if self.closed:
            return
        alone = {m for m in self.members - self.on_hold if (self.members - {m}) and self.members - {m} <= self.on_hold}
        for channel_id in sorted(self._hold_music - alone):
            await self._stop_hold_music(channel_id)
        for channel_id in sorted(alone - self._hold_music):
            self._hold_music.add(channel_id)
            try:
                await self.ari.channels.play(channel_id, HOLD_TONE, playback_id=hold_playback_id(channel_id))
            except AriError as exc:
                self._hold_music.discard(channel_id)
                self.log.warning("hold tone to %s: %s", channel_id, exc)

    async def _stop_hold_music(self, channel_id: str) -> None:
        if channel_id not in self._hold_music:
            return
        self._hold_music.discard(channel_id)
        try:
            await self.ari.playbacks.stop(hold_playback_id(channel_id))
        except AriError:
            pass  # over already (the channel left)

    async def transfer_ended(self) -> None:
        self.transfers -= 1
        await self._close_if_alone()

    async def left(self, channel_id: str) -> None:
        self.pending.discard(channel_id)
        self.on_hold.discard(channel_id)
        self._hold_music.discard(channel_id)  # its playback ended with it
        if channel_id not in self.members:
            return
        self.members.discard(channel_id)
        self.log.info("%s left %s (%d in)", channel_id, self.bridge_id, len(self.members))
        await self._close_if_alone()
        await self._sync_hold_music()

    async def _close_if_alone(self) -> None:
        if len(self.members) < 2 and self.transfers <= 0:
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
