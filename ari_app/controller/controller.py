"""The Stasis controller: ARI events in, live calls and conferences out.

Handlers are small and keyed by event type (the wazo-calld layout): a channel entering Stasis is a
new call, a leg answering, or a party joining a conference, told apart by the channel id the
controller gave it (ids.py). Every other channel event is routed by the call id in the channel's id
to the live call or the conference of that call. The flow goes one way: the controller feeds calls
and conferences and awaits their end; they never call it back. An answered call's conference becomes
the controller's once the call is finished. Events arrive twice for some channels (once for the app,
once for the endpoint subscription), so every handler is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ari_app.ari import (
    AriClient,
    AriError,
    AriNotFound,
    Channel,
    ChannelDestroyed,
    ChannelHangupRequest,
    ChannelHold,
    ChannelStateChange,
    ChannelTransfer,
    ChannelUnhold,
    Connected,
    ContactStatusChange,
    Disconnected,
    EndpointStateChange,
    Event,
    StasisEnd,
    StasisStart,
    StreamItem,
)
from ari_app.controller.call import LiveCall
from ari_app.controller.causes import TEMPORARY_FAILURE, caller_cause
from ari_app.controller.conference import Conference
from ari_app.controller.ids import call_of_bridge, call_of_channel, parse_channel_id
from ari_app.controller.metrics import Metrics
from ari_app.controller.party import dial_string, party_endpoint
from ari_app.controller.presence import Presence
from ari_app.controller.reachability import ContactReachability
from ari_app.controller.records import NO_RECORDS, CallRecorder
from ari_app.controller.transfer import TransferCall, TransferOutcome, hang_up_later, report_progress
from pbx_base.errors import NotFound
from routing.fork import Fork
from routing.lookup import CallLookup, split_endpoint_id

__all__ = ["ORPHAN_GRACE_S", "CallLog", "Controller", "NoConference", "endpoint_of"]

logger = logging.getLogger("ari_app.controller")

# A caller found in our app at (re)connect that no event claims within this time was left behind
# by an earlier controller process (its call state is lost): it is hung up. The grace is for callers
# whose StasisStart is still on its way: the dialplan retries Stasis() while no controller is
# connected (asterisk_conf/extensions.conf), so callers enter the moment the app registers, while
# this process is still listing channels. Legs, parties and half-empty conferences need no grace
# (see _connected).
ORPHAN_GRACE_S = 2.0


class NoConference(NotFound):
    """The call named has no conference to add a party to: not answered yet, or over."""


class CallLog(logging.LoggerAdapter[logging.Logger]):
    """Every line of one call carries its call id."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[call {self.extra['call_id'] if self.extra else '?'}] {msg}", kwargs


def endpoint_of(channel: Channel) -> str | None:
    """``PJSIP/1001@acme.example-0000002a`` → ``1001@acme.example``."""
    tech, _, rest = channel.name.partition("/")
    if tech != "PJSIP" or "-" not in rest:
        return None
    return rest.rsplit("-", 1)[0]


class _Devices:
    """Stage-2 view of one call: contacts from the lookup, in-use state from live channels. The
    call's own channels (its caller and every leg it has rung so far) never make it busy: the
    engine already knows which devices it rang. Their ids name the call, so this view needs
    nothing from the call itself."""

    def __init__(self, contacts: dict[str, list[str]], domain: str, presence: Presence, call_id: str) -> None:
        self._contacts = contacts
        self._domain = domain
        self._presence = presence
        self._call_id = call_id

    def contacts(self, endpoint: str) -> Sequence[str]:
        return self._contacts.get(endpoint, [])

    def in_use(self, endpoint: str) -> bool:
        return self._presence.in_use(f"{endpoint}@{self._domain}", call_id=self._call_id)


class Controller:
    def __init__(
        self,
        ari: AriClient,
        lookup: CallLookup,
        *,
        metrics: Metrics | None = None,
        records: CallRecorder = NO_RECORDS,
    ) -> None:
        self.ari = ari
        self.lookup = lookup
        self.metrics = metrics or Metrics()
        self.records = records
        self.presence = Presence()
        self.reachability = ContactReachability()
        self.calls: dict[str, LiveCall] = {}
        self.conferences: dict[str, Conference] = {}
        self._arriving: dict[str, bool] = {}  # caller channel id -> hung up during lookup
        self._tasks: set[asyncio.Task[None]] = set()
        self._orphan_candidates: set[str] = set()
        # Channels a transfer moved into the conference of another call than the one their id
        # names: channel id -> that call (rebuilt from bridge membership at reconnect).
        self._moved: dict[str, str] = {}
        # The last REFERs seen: a ChannelTransfer comes once for the app and once for the endpoint
        # subscription, and must start one transfer.
        self._refers: deque[tuple[str, str]] = deque(maxlen=64)
        self._subscribed = False
        # One handler per stream item type. Event types without one are not even sent: the app's
        # event filter is made from this table (see _connected).
        self._handlers: dict[type[StreamItem], Callable[[Any], Awaitable[None]]] = {
            Connected: self._on_connected,
            Disconnected: self._on_disconnected,
            StasisStart: self._on_stasis_start,
            StasisEnd: self._on_hangup_request,
            ChannelHangupRequest: self._on_hangup_request,
            ChannelStateChange: self._on_state_change,
            ChannelDestroyed: self._on_destroyed,
            EndpointStateChange: self._on_endpoint_state,
            ContactStatusChange: self._on_contact_status,
            ChannelTransfer: self._on_transfer,
            ChannelHold: self._on_hold,
            ChannelUnhold: self._on_unhold,
        }

    # -- running ------------------------------------------------------------------------------
    async def run(self) -> None:
        """Until another process takes the app (ApplicationReplaced) or the task is cancelled."""
        try:
            await self.ari.run_events(self.handle)
        finally:
            for call in list(self.calls.values()):
                call.abandon()
            for task in list(self._tasks):
                task.cancel()
            self.records.close()

    async def handle(self, item: StreamItem) -> None:
        handler = self._handlers.get(type(item))
        if handler is None:
            return  # ApplicationReplaced ends the stream in the client; the rest is not ours
        try:
            await handler(item)
        except Exception:  # one bad event must not stop every other call
            self.metrics.inc("pbx_failures_total", kind="event")
            logger.exception("handling %s failed", type(item).__name__)

    def _events_used(self) -> list[str]:
        # ARI's event type names are the class names (events.py); ApplicationReplaced is the
        # client's, which stops the stream on it.
        names = [t.__name__ for t in self._handlers if issubclass(t, Event)]
        return [*names, "ApplicationReplaced"]

    async def _on_connected(self, item: Connected) -> None:
        self.metrics.set("pbx_ari_connected", 1)
        await self._connected(item.reconnected)

    async def _on_disconnected(self, item: Disconnected) -> None:
        self.metrics.set("pbx_ari_connected", 0)
        logger.warning("ARI down: %s (retry in %.1f s)", item.error, item.retry_in)

    async def _on_state_change(self, item: ChannelStateChange) -> None:
        call = self._call_of_leg(item.channel.id)
        if call is None:
            return
        if item.channel.state == "Up":
            call.leg_up(item.channel.id)
        elif item.channel.state == "Ringing":
            self.records.leg_ringing(item.channel.id)
            call.leg_ringing()

    async def _on_hangup_request(self, item: ChannelHangupRequest | StasisEnd) -> None:
        self._hangup_request(item.channel.id)

    async def _on_destroyed(self, item: ChannelDestroyed) -> None:
        self._channel_gone(item.channel.id, item.cause)

    async def _on_endpoint_state(self, item: EndpointStateChange) -> None:
        ep = item.endpoint
        if ep.technology == "PJSIP":
            self.presence.report(ep.resource, ep.channel_ids)
            self.reachability.endpoint_state(ep.resource, ep.state)

    async def _on_contact_status(self, item: ContactStatusChange) -> None:
        if item.endpoint.technology == "PJSIP":
            info = item.contact_info
            self.reachability.contact_status(item.endpoint.resource, info.uri, info.contact_status)

    # -- new calls, legs and parties ---------------------------------------------------------
    async def _on_stasis_start(self, event: StasisStart) -> None:
        ch = event.channel
        self._orphan_candidates.discard(ch.id)
        ours = parse_channel_id(ch.id)
        if ours is None and ch.dialplan is not None and ch.dialplan.exten == "h":
            # A hangup handler that reached Stasis (a dialplan whose pattern also matches "h"): the
            # caller is gone and its call, if any, was decided; a lookup for "h" would only rewrite it.
            logger.warning("channel %s entered Stasis from its h extension: ignored", ch.id)
            return
        if ours is None:
            if ch.id not in self._arriving and ch.id not in self.calls and self._conference(ch.id) is None:
                called = event.args[0] if event.args else (ch.dialplan.exten if ch.dialplan else "")
                self._arriving[ch.id] = False
                self.records.call_started(
                    ch.id,
                    node=event.asterisk_id or "",
                    caller=ch.caller.number,
                    caller_name=ch.caller.name,
                    endpoint=endpoint_of(ch),
                    called=called,
                )
                self._spawn(self._new_call(ch, called))
        elif ours.kind == "leg":
            call = self.calls.get(ours.call_id)
            # A leg of a call already decided, or one its call stopped following (an originate
            # that timed out and could not be checked): nobody would bridge it.
            if call is None or not call.leg_in_stasis(ch.id):
                self._spawn(self._hangup(ch.id, reason="normal"))
        else:
            conf = self._conference(ours.call_id)
            if conf is None:
                self._spawn(self._hangup(ch.id, reason="normal"))
            else:
                self.records.leg_answered(ch.id)
                self._spawn(conf.party_answered(ch.id))

    async def _new_call(self, ch: Channel, called: str) -> None:
        started = time.perf_counter()
        log = CallLog(logger, {"call_id": ch.id})
        endpoint_id = endpoint_of(ch)
        log.info("%s <%s> via %s calls %s", ch.caller.name, ch.caller.number, endpoint_id, called)
        try:
            if not self._subscribed:
                await self._watch_endpoints()
            if endpoint_id is None:
                routed_status, routed = "error:failure", None
            else:
                routed = await self.lookup.route(endpoint_id, ch.caller.number, ch.caller.name, called)
                routed_status = routed.status
        except Exception:
            log.exception("lookup failed")
            self.metrics.inc("pbx_failures_total", kind="lookup")
            routed_status, routed = "error:failure", None
        routed_at = time.perf_counter()
        self.records.call_routed(ch.id, routed)
        gone = self._arriving.pop(ch.id, False)
        if gone:
            log.info("caller hung up during lookup")
            self.records.call_refused(ch.id, "cancelled")
            return
        if routed_status != "ok" or routed is None or routed.tree is None or routed.data is None:
            log.info("not routed: %s", routed_status)
            self.metrics.inc("pbx_calls_total", result="noroute" if routed_status == "noroute" else "refused")
            self.records.call_refused(ch.id, "noroute" if routed_status == "noroute" else "refused")
            await self._hangup(ch.id, code=caller_cause(routed_status))
            return
        assert routed.request is not None
        devices = _Devices(routed.data.contacts, routed.domain, self.presence, ch.id)
        call = LiveCall(
            call_id=ch.id,
            ari=self.ari,
            caller=ch,
            fork=Fork(
                routed.tree, routed.request.called, devices, reachability=self.reachability.of_domain(routed.domain)
            ),
            domain=routed.domain,
            contact_uris=routed.contact_uris,
            presence=self.presence,
            metrics=self.metrics,
            log=log,
            started=started,
            records=self.records,
        )
        self.calls[call.call_id] = call
        self._spawn(self._follow_call(call))
        self._count_active()
        log.info("routed in %.1f ms", (time.perf_counter() - started) * 1000)
        call.marks["routed"] = routed_at
        dialed = routed.data.directory.extensions.get(called)
        await call.start(dialed.ringback if dialed is not None else None)

    async def _follow_call(self, call: LiveCall) -> None:
        await call.wait_finished()
        if self.calls.get(call.call_id) is call:
            del self.calls[call.call_id]
        # Legs still ringing when the call ended are hung up by the engine's stop commands; their
        # late events find no call and only update presence.
        conf = call.conference
        if conf is not None and not conf.closed:
            if conf.call_id == call.call_id:
                self._adopt(conf)
            else:  # a transfer's answer, now in another call's conference
                self._moved.update({c: conf.call_id for c in conf.members if call_of_channel(c) == call.call_id})
        else:
            self.records.call_over(call.call_id)
        if isinstance(call, TransferCall):
            result = "answered" if call.answered_by else (call.refused or call.result or "failed")
            self.on_transfer(
                TransferOutcome(call.target.call_id, "blind", call.transferer.id, call.number, result, call.answered_by)
            )
        self._count_active()

    def _adopt(self, conf: Conference) -> None:
        self.conferences[conf.call_id] = conf
        self._spawn(self._follow_conference(conf))

    async def _follow_conference(self, conf: Conference) -> None:
        await conf.wait_closed()
        self.records.call_over(conf.call_id)
        if self.conferences.get(conf.call_id) is conf:
            del self.conferences[conf.call_id]
        self._count_active()

    def _count_active(self) -> None:
        self.metrics.set("pbx_calls_active", len(self.calls) + len(self.conferences))

    def _conference(self, call_id: str) -> Conference | None:
        """The call's conference: the controller's, or the one a call is opening right now."""
        conf = self.conferences.get(call_id)
        if conf is None and (call := self.calls.get(call_id)) is not None:
            conf = call.conference
        return conf

    def _call_id_of(self, channel_id: str) -> str:
        """The call whose conference a channel is in: the one its id names, unless a transfer moved it."""
        return self._moved.get(channel_id) or call_of_channel(channel_id)

    def _follows(self, channel_id: str) -> bool:
        """A channel of a call or conference of ours (an orphan is one that is not)."""
        call_id = self._call_id_of(channel_id)
        conf = self._conference(call_id)
        if conf is not None and conf.follows(channel_id):
            return True
        call = self.calls.get(call_id)
        return call is not None and (channel_id == call.caller.id or channel_id in call.by_channel)

    # -- channels going away -----------------------------------------------------------------
    def _hangup_request(self, channel_id: str) -> None:
        if channel_id in self._arriving:
            self._arriving[channel_id] = True
            return
        call_id = self._call_id_of(channel_id)
        conf = self._conference(call_id)
        if conf is not None:
            self._spawn(conf.left(channel_id))
            return
        call = self.calls.get(call_id)
        if call is not None and channel_id == call.caller.id:
            call.caller_hung_up()

    def _channel_gone(self, channel_id: str, cause: int) -> None:
        self.records.channel_gone(channel_id, cause)
        self.presence.gone(channel_id)
        if channel_id in self._moved:
            self._hangup_request(channel_id)
            del self._moved[channel_id]
            return
        self._orphan_candidates.discard(channel_id)
        if channel_id in self._arriving:
            self._arriving[channel_id] = True
            return
        call = self._call_of_leg(channel_id)
        if call is not None:
            call.leg_ended(channel_id, cause)
            return
        self._hangup_request(channel_id)

    def _call_of_leg(self, channel_id: str) -> LiveCall | None:
        ours = parse_channel_id(channel_id)
        call = self.calls.get(ours.call_id) if ours is not None and ours.kind == "leg" else None
        return call if call is not None and channel_id in call.by_channel else None

    # -- (re)connecting ----------------------------------------------------------------------
    async def _connected(self, reconnected: bool) -> None:
        """Catch up with what happened while no events reached us (or before this process)."""
        self._subscribed = False
        # Every channel event of every endpoint would reach us (twice for our own channels):
        # only what the handlers use is sent, which saves Asterisk and us most of the work.
        await self.ari.applications.filter(allowed=self._events_used())
        await self._watch_endpoints()
        channels = {c.id: c for c in await self.ari.channels.list()}
        bridges = await self.ari.bridges.list()
        how = "again" if reconnected else "first"
        logger.info("ARI connected (%s): %d channels, %d bridges", how, len(channels), len(bridges))

        for call in list(self.calls.values()):
            for leg_channel in list(call.by_channel):
                if leg_channel not in channels:
                    call.leg_ended(leg_channel, 0)
            if call.caller.id not in channels:
                call.caller_hung_up()
        self._moved = {
            c: call_id
            for b in bridges
            if (call_id := call_of_bridge(b.id)) is not None
            for c in b.channels
            if call_of_channel(c) != call_id
        }
        for b in bridges:
            call_id = call_of_bridge(b.id)
            if call_id is None or call_id in self.calls:
                continue  # not ours, or its call is opening it right now
            conf = self.conferences.get(call_id)
            if conf is None:
                log = CallLog(logger, {"call_id": call_id})
                domains = [
                    split_endpoint_id(e)[1] for c in b.channels if c in channels and (e := endpoint_of(channels[c]))
                ]
                conf = Conference(
                    self.ari,
                    call_id,
                    log,
                    members=set(b.channels),
                    tenant_domain=domains[0] if domains else "",
                )
                self._adopt(conf)
                log.info("adopted conference %s with %d parties", b.id, len(b.channels))
            else:
                conf.members &= set(b.channels)
            if len(conf.members) < 2:
                await conf.close()
        for conf in list(self.conferences.values()):
            if not any(b.id == conf.bridge_id for b in bridges):
                await conf.close()

        # Channels of ours that nothing owns. A leg or party carries its call in its id, and every
        # call and conference this process follows was just checked above: one that none of them
        # follows was dialed by an earlier process (a ringing leg whose caller may be long gone)
        # and no event can give it a call any more, so it is hung up at once. A caller in Stasis
        # outside any call is different: it may have entered Stasis after the WebSocket opened,
        # its StasisStart queued behind this handler; only the grace tells the two apart.
        for ch in channels.values():
            if self._follows(ch.id) or ch.id in self._arriving:
                continue
            if parse_channel_id(ch.id) is not None:
                self._spawn(self._reap([ch.id]))
            elif (
                ch.dialplan is not None
                and ch.dialplan.app_name == "Stasis"
                and (ch.dialplan.app_data.split(",")[0] == self.ari.app)
            ):
                self._orphan_candidates.add(ch.id)
        if self._orphan_candidates:
            asyncio.get_running_loop().call_later(ORPHAN_GRACE_S, lambda: self._spawn(self._reap_orphans()))
        self._count_active()

    async def _watch_endpoints(self) -> bool:
        """Subscribe to every PJSIP endpoint's channels and seed presence. Asterisk refuses (422)
        while no PJSIP endpoint exists yet (a fresh node): then the next call tries again, and
        the channel it arrived on proves one exists."""
        if self._subscribed:
            return True
        try:
            await self.ari.applications.subscribe("endpoint:PJSIP")
        except AriError as exc:
            logger.info("not watching PJSIP endpoints yet: %s", exc)
            return False
        self._subscribed = True
        endpoints = await self.ari.endpoints.list("PJSIP")
        self.presence.reset((e.resource, e.channel_ids) for e in endpoints)
        self.reachability.reset([(e.resource, e.state) for e in endpoints])
        return True

    async def _reap_orphans(self) -> None:
        orphans = [c for c in self._orphan_candidates if not self._follows(c) and c not in self._arriving]
        self._orphan_candidates.clear()
        await self._reap(orphans)

    async def _reap(self, orphans: list[str]) -> None:
        """A caller gets 503 (try again: the next call finds a controller); a leg or party only
        ends."""
        for channel_id in orphans:
            logger.warning("hanging up %s: left behind by an earlier controller", channel_id)
            code = None if parse_channel_id(channel_id) is not None else TEMPORARY_FAILURE
            await self._hangup(channel_id, code=code, reason="normal" if code is None else None)
            self.metrics.inc("pbx_failures_total", kind="orphan")

    # -- transfers and hold (transfer.py) -----------------------------------------------------
    def on_transfer(self, outcome: TransferOutcome) -> None:
        """Every transfer's outcome, once: where call records learn "transferred from/to"."""
        logger.info(
            "[call %s] %s transfer by %s to %s: %s",
            outcome.call_id,
            outcome.kind,
            outcome.transferer,
            outcome.target,
            outcome.result,
        )
        self.metrics.inc("pbx_transfers_total", kind=outcome.kind, result=outcome.result)
        if outcome.result == "answered":  # a failed transfer leaves the call as it was
            self.records.set_transfer(
                outcome.call_id, transferred_from=outcome.transferer, transferred_to=outcome.target
            )

    async def _on_transfer(self, event: ChannelTransfer) -> None:
        if event.state is not None:
            return  # the echo of a progress the controller reported itself
        source = event.referred_by.source_channel
        key = (source.id, str(event.timestamp))
        if key in self._refers:
            return
        self._refers.append(key)
        log = CallLog(logger, {"call_id": self._call_id_of(source.id)})
        conf = self._conference(self._call_id_of(source.id))
        if conf is None or conf.closed or source.id not in conf.members:
            log.info("REFER on %s, which is in no conference: declined", source.id)
            await report_progress(self.ari, source.id, "channel_declined", log)
            return
        wanted = event.refer_to.requested_destination
        if wanted.protocol_id:
            replaced = event.refer_to.destination_channel
            await self._attended_transfer(conf, source, replaced.id if replaced else None, log)
        else:
            self._spawn(self._blind_transfer(conf, source, wanted.destination, log))

    async def _blind_transfer(self, conf: Conference, source: Channel, number: str, log: CallLog) -> None:
        await report_progress(self.ari, source.id, "channel_progress", log)
        endpoint_id = endpoint_of(source)
        try:
            extension = await self._extension_of(source)
            routed = None if endpoint_id is None else await self.lookup.route(endpoint_id, extension, "", number)
        except Exception:
            log.exception("transfer lookup failed")
            self.metrics.inc("pbx_failures_total", kind="lookup")
            routed = None
        if routed is None or routed.status != "ok" or routed.tree is None or routed.data is None:
            status = "failed" if routed is None else routed.status
            log.info("transfer by %s to %s not routed: %s", source.id, number, status)
            await report_progress(self.ari, source.id, "channel_declined", log)
            result = "noroute" if status == "noroute" else "refused"
            self.on_transfer(TransferOutcome(conf.call_id, "blind", source.id, number, result))
            return
        assert routed.request is not None
        # Unique for Asterisk's life (channel ids may not repeat), not only this process's.
        call_id = f"{conf.call_id}-t{time.time_ns() // 1_000_000}"
        call = TransferCall(
            conference=conf,
            number=number,
            call_id=call_id,
            ari=self.ari,
            caller=source,
            fork=Fork(
                routed.tree,
                routed.request.called,
                _Devices(routed.data.contacts, routed.domain, self.presence, call_id),
                reachability=self.reachability.of_domain(routed.domain),
            ),
            domain=routed.domain,
            contact_uris=routed.contact_uris,
            presence=self.presence,
            metrics=self.metrics,
            log=log,
        )
        log.info("transfer by %s to %s rings as call %s", source.id, number, call_id)
        self.calls[call_id] = call
        self._spawn(self._follow_call(call))
        await call.start()

    async def _extension_of(self, channel: Channel) -> str:
        """The number the channel's phone calls as: a caller's own (the routing tree checked it when
        it called), a leg's the extension it was rung for."""
        if parse_channel_id(channel.id) is None:
            return channel.caller.number
        try:
            return await self.ari.channels.get_variable(channel.id, "PBX_EXTENSION") or channel.caller.number
        except AriError:
            return channel.caller.number

    async def _attended_transfer(self, conf: Conference, source: Channel, replaced: str | None, log: CallLog) -> None:
        """The parties of the replaced channel's conference join ``conf``; both of the transferer's
        channels leave."""
        other = self._conference(self._call_id_of(replaced)) if replaced else None
        if other is None or other.closed or other is conf or replaced not in other.members:
            log.info("attended transfer by %s: no conference of ours for %s: declined", source.id, replaced)
            await report_progress(self.ari, source.id, "channel_declined", log)
            self.on_transfer(TransferOutcome(conf.call_id, "attended", source.id, str(replaced), "refused"))
            return
        assert replaced is not None
        moving = sorted(other.members - {replaced})
        taken: list[str] = []
        try:
            for channel_id in moving:
                taken.append(channel_id)
                await other.release(channel_id)
                await conf.add_member(channel_id)
                self._moved[channel_id] = conf.call_id
        except AriError as exc:
            log.warning("attended transfer by %s failed: %s", source.id, exc)
            await self._move_back(taken, conf, other, log)
            await report_progress(self.ari, source.id, "channel_declined", log)
            self.on_transfer(TransferOutcome(conf.call_id, "attended", source.id, other.call_id, "failed"))
            return
        await report_progress(self.ari, source.id, "channel_answered", log)
        await conf.remove_member(source.id)
        await other.close()  # hangs up the transferer's second channel, the only one left in it
        self._spawn(hang_up_later(self.ari, source.id))
        answered_by = moving[0] if moving else None
        self.on_transfer(TransferOutcome(conf.call_id, "attended", source.id, other.call_id, "answered", answered_by))

    async def _move_back(self, channels: list[str], conf: Conference, other: Conference, log: CallLog) -> None:
        """A failed attended transfer: the parties taken from ``other`` go back to it, so both
        calls are as they were (a party that cannot go back has hung up)."""
        for channel_id in channels:
            self._moved.pop(channel_id, None)
            await conf.release(channel_id)
            try:
                await other.add_member(channel_id)
            except AriError as exc:
                log.info("%s not back in %s: %s", channel_id, other.bridge_id, exc)

    async def _on_hold(self, event: ChannelHold) -> None:
        conf = self._conference(self._call_id_of(event.channel.id))
        if conf is not None and not conf.closed:
            await conf.hold(event.channel.id, True)

    async def _on_unhold(self, event: ChannelUnhold) -> None:
        conf = self._conference(self._call_id_of(event.channel.id))
        if conf is not None and not conf.closed:
            await conf.hold(event.channel.id, False)

    # -- third parties -----------------------------------------------------------------------
    def _open_conference(self, call_id: str) -> Conference:
        conf = self._conference(call_id)
        if conf is None or conf.closed:
            raise NoConference(f"call {call_id}: no conference (not answered, or over)")
        if not conf.domain:
            # Adopted without a device channel to tell its tenant: no endpoint can be checked.
            raise NoConference(f"call {call_id}: no conference of a known tenant")
        return conf

    def call_domain(self, call_id: str) -> str:
        """The domain of the tenant of the call's conference (NoConference when there is none)."""
        return self._open_conference(call_id).domain

    async def add_party(self, call_id: str, endpoint: str) -> str:
        """Dial `endpoint` (NAME or NAME@DOMAIN of the call's tenant, see party.py) into the call's
        conference; the new party's channel id."""
        conf = self._open_conference(call_id)
        name = party_endpoint(endpoint, conf.domain)
        channel_id = await conf.dial_party(dial_string(name, conf.domain))
        self.records.leg_dialed(call_id, channel_id, kind="party", endpoint=f"{name}@{conf.domain}")
        return channel_id

    def snapshot(self, domain: str | None = None) -> dict[str, Any]:
        """Calls ringing and conferences up; with `domain`, only that tenant's."""
        opening = [c.conference for c in self.calls.values() if c.conference is not None]
        return {
            "ringing": [
                {"call_id": c.call_id, "caller": c.caller.caller.number, "legs": len(c.by_channel)}
                for c in self.calls.values()
                if domain is None or c.domain == domain
            ],
            "conferences": [
                {"call_id": c.call_id, "bridge_id": c.bridge_id, "parties": sorted(c.members)}
                for c in [*self.conferences.values(), *opening]
                if not c.closed and (domain is None or c.domain == domain)
            ],
        }

    # -- helpers -----------------------------------------------------------------------------
    async def _hangup(self, channel_id: str, *, code: int | None = None, reason: str | None = None) -> None:
        try:
            await self.ari.channels.hangup(channel_id, reason=reason, reason_code=code)
        except AriNotFound:
            pass

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.metrics.inc("pbx_failures_total", kind="task")
            logger.error("controller task failed", exc_info=task.exception())
