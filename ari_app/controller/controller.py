"""The Stasis controller: ARI events in, live calls and conferences out.

Handlers are small and keyed by event type (the wazo-calld layout): a channel entering Stasis is a
new call, a leg answering, or a party joining a conference, told apart by the Stasis arguments
the controller gave it. Every other channel event is routed by the channel id to the call or
conference that owns the channel. Events arrive twice for some channels (once for the app, once
for the endpoint subscription), so every handler is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

from ari_app.ari import (
    AriClient,
    AriError,
    AriNotFound,
    Channel,
    ChannelDestroyed,
    ChannelHangupRequest,
    ChannelStateChange,
    Connected,
    Disconnected,
    EndpointStateChange,
    StasisEnd,
    StasisStart,
    StreamItem,
)
from ari_app.controller.call import LiveCall, setup_summary
from ari_app.controller.causes import TEMPORARY_FAILURE, caller_cause
from ari_app.controller.conference import Conference
from ari_app.controller.metrics import Metrics
from ari_app.controller.presence import Presence
from routing.fork import Fork, Start
from routing.lookup import CallLookup, split_endpoint_id

__all__ = ["ORPHAN_GRACE_S", "CallLog", "Controller", "endpoint_of"]

logger = logging.getLogger("ari_app.controller")

# A channel found in our app at (re)connect that no event claims within this time was left behind
# by an earlier controller process (its call state is lost): it is hung up.
ORPHAN_GRACE_S = 2.0
_OUR_CHANNEL = re.compile(r"-[lp]\d+$")
_EVENTS_USED = (
    "StasisStart",
    "StasisEnd",
    "ChannelStateChange",
    "ChannelHangupRequest",
    "ChannelDestroyed",
    "EndpointStateChange",
    "ApplicationReplaced",
)


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
    engine already knows which devices it rang."""

    def __init__(self, contacts: dict[str, list[str]], domain: str, presence: Presence, caller_id: str) -> None:
        self._contacts = contacts
        self._domain = domain
        self._presence = presence
        self._caller_id = caller_id
        self.call: LiveCall | None = None  # set once the call exists (it needs the fork first)

    def contacts(self, endpoint: str) -> Sequence[str]:
        return self._contacts.get(endpoint, [])

    def in_use(self, endpoint: str) -> bool:
        mine = {self._caller_id, *(self.call.by_channel if self.call is not None else ())}
        return self._presence.in_use(f"{endpoint}@{self._domain}", besides=mine)


class Controller:
    def __init__(self, ari: AriClient, lookup: CallLookup, *, metrics: Metrics | None = None) -> None:
        self.ari = ari
        self.lookup = lookup
        self.metrics = metrics or Metrics()
        self.presence = Presence()
        self.calls: dict[str, LiveCall] = {}
        self.conferences: dict[str, Conference] = {}
        self._owner: dict[str, LiveCall | Conference] = {}
        self._arriving: dict[str, bool] = {}  # caller channel id -> hung up during lookup
        self._tasks: set[asyncio.Task[None]] = set()
        self._orphan_candidates: set[str] = set()
        self._subscribed = False

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

    async def handle(self, item: StreamItem) -> None:
        try:
            await self._dispatch(item)
        except Exception:  # one bad event must not stop every other call
            self.metrics.inc("pbx_failures_total", kind="event")
            logger.exception("handling %s failed", type(item).__name__)

    async def _dispatch(self, item: StreamItem) -> None:
        if isinstance(item, Connected):
            self.metrics.set("pbx_ari_connected", 1)
            await self._connected(item.reconnected)
        elif isinstance(item, Disconnected):
            self.metrics.set("pbx_ari_connected", 0)
            logger.warning("ARI down: %s (retry in %.1f s)", item.error, item.retry_in)
        elif isinstance(item, StasisStart):
            self._stasis_start(item)
        elif isinstance(item, ChannelDestroyed):
            self._channel_gone(item.channel.id, item.cause)
        elif isinstance(item, ChannelStateChange):
            call = self._call_of_leg(item.channel.id)
            if call is not None and item.channel.state == "Up":
                call.leg_up(item.channel.id)
            elif call is not None and item.channel.state == "Ringing":
                call.leg_ringing()
        elif isinstance(item, ChannelHangupRequest | StasisEnd):
            self._hangup_request(item.channel.id)
        elif isinstance(item, EndpointStateChange):
            ep = item.endpoint
            if ep.technology == "PJSIP":
                self.presence.report(ep.resource, ep.channel_ids)

    # -- new calls, legs and parties ---------------------------------------------------------
    def _stasis_start(self, event: StasisStart) -> None:
        ch = event.channel
        args = event.args
        self._orphan_candidates.discard(ch.id)
        if args and args[0] == "leg":
            call = self.calls.get(args[1]) if len(args) > 1 else None
            if call is None:
                self._spawn(self._hangup(ch.id, reason="normal"))  # a leg of a call already decided
            else:
                call.leg_in_stasis(ch.id)
        elif args and args[0] == "party":
            conf = self.conferences.get(args[1]) if len(args) > 1 else None
            if conf is None:
                self._spawn(self._hangup(ch.id, reason="normal"))
            else:
                self._owner[ch.id] = conf
                self._spawn(conf.party_answered(ch.id))
        elif ch.id not in self._arriving and ch.id not in self._owner:
            called = args[0] if args else (ch.dialplan.exten if ch.dialplan else "")
            self._arriving[ch.id] = False
            self._spawn(self._new_call(ch, called))

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
        gone = self._arriving.pop(ch.id, False)
        if gone:
            log.info("caller hung up during lookup")
            return
        if routed_status != "ok" or routed is None or routed.tree is None or routed.data is None:
            log.info("not routed: %s", routed_status)
            self.metrics.inc("pbx_calls_total", result="noroute" if routed_status == "noroute" else "refused")
            await self._hangup(ch.id, code=caller_cause(routed_status))
            return
        assert routed.request is not None
        devices = _Devices(routed.data.contacts, routed.domain, self.presence, ch.id)
        fork = Fork(routed.tree, routed.request.called, devices)
        call = LiveCall(
            call_id=ch.id,
            ari=self.ari,
            caller=ch,
            fork=fork,
            domain=routed.domain,
            contact_uris=routed.contact_uris,
            presence=self.presence,
            metrics=self.metrics,
            bridge=self._bridge,
            on_finished=self._call_finished,
            log=log,
            started=started,
        )
        devices.call = call
        self.calls[call.call_id] = call
        self._owner[ch.id] = call
        self.metrics.set("pbx_calls_active", len(self.calls) + len(self.conferences))
        log.info("routed in %.1f ms", (time.perf_counter() - started) * 1000)
        dialed = routed.data.directory.extensions.get(called)
        if dialed is not None and dialed.ringback:
            call.ringback = await self._start_ringback(ch.id, dialed.ringback, log)
        call.marks["routed"] = routed_at
        call.feed(Start())

    async def _start_ringback(self, channel_id: str, ringback: str, log: CallLog) -> str | None:
        """``tone-<zone>`` (e.g. tone-de): the country's ring tone as early media (183) instead of the
        caller's own phone ringing. Other values are not known and leave the 180."""
        if not ringback.startswith("tone-"):
            log.warning("ringback %r not understood (tone-<country>); the caller's phone rings", ringback)
            return None
        playback_id = f"{channel_id}-ringback"
        try:
            await self.ari.channels.progress(channel_id)
            await self.ari.channels.play(channel_id, f"tone:ring;tonezone={ringback[5:]}", playback_id=playback_id)
        except AriError as exc:
            log.warning("ringback %s: %s", ringback, exc)
            return None
        return playback_id

    async def _bridge(self, call: LiveCall, leg: Any) -> None:
        if call.ringback is not None:
            await self._stop_playback(call.ringback)
        conf = Conference(self.ari, call.call_id, call.log, self._conference_closed, tenant_domain=call.domain)
        self.conferences[call.call_id] = conf
        self._owner[call.caller.id] = conf
        self._owner[leg.channel_id] = conf
        try:
            await conf.open(call.caller.id, leg.channel_id, leg.in_stasis.wait(), call.marks)
            call.log.info("setup: %s", setup_summary(call.marks))
        except AriError as exc:
            call.log.warning("bridging failed: %s", exc)
            await conf.close()

    def _call_finished(self, call: LiveCall) -> None:
        if self.calls.pop(call.call_id, None) is None:
            return
        for channel_id in [call.caller.id, *call.by_channel]:
            if self._owner.get(channel_id) is call:
                del self._owner[channel_id]
        # Legs still ringing when the call ended are hung up by the engine's stop commands; their
        # late events find no owner and only update presence.
        self.metrics.set("pbx_calls_active", len(self.calls) + len(self.conferences))

    def _conference_closed(self, conf: Conference) -> None:
        self.conferences.pop(conf.call_id, None)
        for channel_id, owner in list(self._owner.items()):
            if owner is conf:
                del self._owner[channel_id]
        self.metrics.set("pbx_calls_active", len(self.calls) + len(self.conferences))

    # -- channels going away -----------------------------------------------------------------
    def _hangup_request(self, channel_id: str) -> None:
        if channel_id in self._arriving:
            self._arriving[channel_id] = True
            return
        owner = self._owner.get(channel_id)
        if isinstance(owner, LiveCall) and channel_id == owner.caller.id:
            owner.caller_hung_up()
        elif isinstance(owner, Conference):
            self._spawn(owner.left(channel_id))

    def _channel_gone(self, channel_id: str, cause: int) -> None:
        self.presence.gone(channel_id)
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
        call = self.calls.get(channel_id.rsplit("-l", 1)[0]) if "-l" in channel_id else None
        return call if call is not None and channel_id in call.by_channel else None

    # -- (re)connecting ----------------------------------------------------------------------
    async def _connected(self, reconnected: bool) -> None:
        """Catch up with what happened while no events reached us (or before this process)."""
        self._subscribed = False
        # Every channel event of every endpoint would reach us (twice for our own channels):
        # only what the handlers use is sent, which saves Asterisk and us most of the work.
        await self.ari.applications.filter(allowed=_EVENTS_USED)
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
        for b in bridges:
            if not b.id.startswith("conf-"):
                continue
            call_id = b.id.removeprefix("conf-")
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
                    self._conference_closed,
                    members=set(b.channels),
                    tenant_domain=domains[0] if domains else "",
                )
                self.conferences[call_id] = conf
                log.info("adopted conference %s with %d parties", b.id, len(b.channels))
            else:
                conf.members &= set(b.channels)
            for channel_id in conf.members:
                self._owner[channel_id] = conf
            if len(conf.members) < 2:
                await conf.close()
        for conf in list(self.conferences.values()):
            if not any(b.id == conf.bridge_id for b in bridges):
                await conf.close()

        # Channels of ours that nothing owns: callers left in Stasis and legs dialed by an earlier
        # process. Wait a moment for events already on their way before deciding.
        for ch in channels.values():
            if ch.id in self._owner or ch.id in self._arriving:
                continue
            in_app = (
                ch.dialplan is not None
                and ch.dialplan.app_name == "Stasis"
                and (ch.dialplan.app_data.split(",")[0] == self.ari.app)
            )
            if in_app or _OUR_CHANNEL.search(ch.id):
                self._orphan_candidates.add(ch.id)
        if self._orphan_candidates:
            asyncio.get_running_loop().call_later(ORPHAN_GRACE_S, lambda: self._spawn(self._reap_orphans()))
        self.metrics.set("pbx_calls_active", len(self.calls) + len(self.conferences))

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
        return True

    async def _reap_orphans(self) -> None:
        orphans = [c for c in self._orphan_candidates if c not in self._owner and c not in self._arriving]
        self._orphan_candidates.clear()
        for channel_id in orphans:
            logger.warning("hanging up %s: left behind by an earlier controller", channel_id)
            code = None if _OUR_CHANNEL.search(channel_id) else TEMPORARY_FAILURE
            await self._hangup(channel_id, code=code, reason="normal" if code is None else None)
            self.metrics.inc("pbx_failures_total", kind="orphan")

    # -- third parties -----------------------------------------------------------------------
    async def add_party(self, call_id: str, endpoint_name: str) -> str:
        conf = self.conferences.get(call_id)
        if conf is None or conf.closed:
            raise LookupError(f"call {call_id}: no conference (not answered, or over)")
        # user@endpoint: PJSIP splits a dial string at the first '@', and our endpoint ids have one.
        channel_id = await conf.dial_party(f"PJSIP/{endpoint_name}@{endpoint_name}@{conf.domain}")
        self._owner[channel_id] = conf
        return channel_id

    def snapshot(self) -> dict[str, Any]:
        return {
            "ringing": [
                {"call_id": c.call_id, "caller": c.caller.caller.number, "legs": len(c.by_channel)}
                for c in self.calls.values()
            ],
            "conferences": [
                {"call_id": c.call_id, "bridge_id": c.bridge_id, "parties": sorted(c.members)}
                for c in self.conferences.values()
            ],
        }

    # -- helpers -----------------------------------------------------------------------------
    async def _stop_playback(self, playback_id: str) -> None:
        try:
            await self.ari.transport.request("DELETE", f"/playbacks/{playback_id}", params=None, json=None, timeout=5)
        except AriError:
            pass  # already over

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
