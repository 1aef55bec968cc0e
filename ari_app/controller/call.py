"""One live call: the routing engine's fork driven by real channels.

The fork decides; this class only translates. Engine commands become ARI requests (originate a leg
per device, hang up a stopped leg, bridge the answer into the call's :class:`Conference`); channel
events and asyncio timers become engine events. The controller feeds it and waits for it to finish
(:meth:`LiveCall.wait_finished`); it never calls the controller back. Commands that touch Asterisk
run in order on one task per call, so a leg is never hung up before its originate returned; timers
and bookkeeping happen at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field

from ari_app.ari import AriClient, AriError, AriNotFound, AriUnavailable, Channel
from ari_app.controller.causes import caller_cause, leg_failure
from ari_app.controller.conference import Conference
from ari_app.controller.ids import OurChannel, ringback_playback_id
from ari_app.controller.metrics import Metrics
from ari_app.controller.presence import Presence
from ari_app.controller.records import NO_RECORDS, CallRecorder
from routing.fork import (
    Bridge,
    CallerHangup,
    CancelTimer,
    Command,
    EndCall,
    Event,
    Fork,
    LegAnswered,
    LegFailed,
    Refused,
    RingDevice,
    Start,
    StartTimer,
    StopLeg,
    TimerFired,
)

__all__ = ["TRANSFER_HANDLING", "Leg", "LiveCall", "dial_string", "setup_summary"]

# chan_pjsip's per-channel switch (Asterisk 22.3+; there is no endpoint option for it in 22.10):
# written on a channel, it hands the channel's REFERs to ARI as ChannelTransfer events.
TRANSFER_HANDLING = "PJSIP_TRANSFER_HANDLING()"


@dataclass
class Leg:
    leg_id: int
    channel_id: str
    endpoint_id: str  # the Asterisk endpoint id, name@domain
    device: str  # the contact id
    answered: bool = False
    ended: bool = False
    stopped: bool = False  # hung up by us on the engine's StopLeg
    in_stasis: asyncio.Event = field(default_factory=asyncio.Event)


def dial_string(endpoint_id: str, contact_uri: str, dialed: str | None) -> str:
    """``PJSIP/<endpoint>/<contact URI>``: one device of the endpoint. A trunk leg carries the number
    dialed out in the request URI's user part."""
    uri = contact_uri.replace("^3B", ";")  # ps_contacts stores ';' as realtime's ^3B
    if dialed is not None:
        scheme, _, rest = uri.partition(":")
        host = rest.split("@", 1)[-1]
        uri = f"{scheme}:{dialed}@{host}"
    return f"PJSIP/{endpoint_id}/{uri}"


def _caller_id(name: str, number: str) -> str:
    safe = name.replace("\\", "").replace('"', "")
    return f'"{safe}" <{number}>' if safe else f"<{number}>"


def setup_summary(marks: dict[str, float]) -> str:
    """``routing 2.1 ms, originate 1.0 ms, device 5.2 ms, answer+bridge 2.3 ms``: where a call's
    setup went, from the marks a call collects (missing steps are left out)."""
    steps = [
        ("lookup", "stasis", "routed"),
        ("routing", "stasis", "ring"),
        ("originate", "ring", "originated"),
        ("device", "ring", "up"),
        ("answer", "up", "answered"),
        ("bridge", "up", "bridged"),
    ]
    parts = [f"{name} {(marks[b] - marks[a]) * 1000:.1f} ms" for name, a, b in steps if a in marks and b in marks]
    return ", ".join(parts)


class LiveCall:
    def __init__(
        self,
        *,
        call_id: str,
        ari: AriClient,
        caller: Channel,
        fork: Fork,
        domain: str,
        contact_uris: Mapping[str, str],
        presence: Presence,
        metrics: Metrics,
        log: logging.LoggerAdapter[logging.Logger],
        started: float | None = None,
        records: CallRecorder = NO_RECORDS,
    ) -> None:
        self.call_id = call_id
        self.ari = ari
        self.caller = caller
        self.fork = fork
        self.domain = domain
        self.contact_uris = contact_uris
        self.presence = presence
        self.metrics = metrics
        self.log = log
        self.records = records
        self.legs: dict[int, Leg] = {}
        self.by_channel: dict[str, Leg] = {}
        self.result: str | None = None
        self.ringback: str | None = None  # the playback id of a ringback tone, stopped on answer
        self.caller_gone = False
        # Made when a leg answers; the controller takes it over once the call is finished.
        self.conference: Conference | None = None
        self._finished = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time()
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._io: deque[Command] = deque()
        self._runner: asyncio.Task[None] | None = None
        self._first_ring_at: float | None = None
        self._caller_ringing = False  # the 180 went to the caller
        self._bridging = False
        # perf_counter marks of the call's setup, logged as one line when it is bridged.
        self.marks: dict[str, float] = {"stasis": started if started is not None else time.perf_counter()}
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._started = self.marks["stasis"]

    async def start(self, ringback: str | None = None) -> None:
        """Play the ringback tone (the tenant's setting for the number called), then ring."""
        if ringback:
            self.ringback = await self._start_ringback(ringback)
        self.feed(Start())

    async def wait_finished(self) -> None:
        """Until the call is over for the controller: ended, its commands sent, and an answered
        call's conference opened (or given up)."""
        await self._finished.wait()

    # -- engine side --------------------------------------------------------------------------
    def now_ms(self) -> int:
        return int((self._loop.time() - self._t0) * 1000)

    def feed(self, event: Event) -> None:
        for cmd in self.fork.handle(event, self.now_ms()):
            if isinstance(cmd, StartTimer):
                delay = max(0.0, self._t0 + cmd.at_ms / 1000 - self._loop.time())
                self._timers[cmd.timer_id] = self._loop.call_later(delay, self.feed, TimerFired(cmd.timer_id))
            elif isinstance(cmd, CancelTimer):
                handle = self._timers.pop(cmd.timer_id, None)
                if handle is not None:
                    handle.cancel()
            elif isinstance(cmd, Refused):
                self.log.info("extension %s refused: %s", cmd.number, cmd.error)
            elif isinstance(cmd, Bridge):
                # At once, not behind the other legs' hangups in the queue: this answers the caller.
                self._bridging = True
                self.records.call_answered(self.call_id, self.legs[cmd.leg_id].channel_id)
                self._spawn(self._run_bridge(self.legs[cmd.leg_id]))
            else:
                if isinstance(cmd, RingDevice):
                    self._register_leg(cmd)
                elif isinstance(cmd, EndCall):
                    self.result = cmd.result
                    self.records.call_result(self.call_id, cmd.result)
                self._io.append(cmd)
        if self._io and (self._runner is None or self._runner.done()):
            self._runner = asyncio.create_task(self._run_io(), name=f"call-{self.call_id}")
        if self._runner is None or self._runner.done():
            self._finish_if_over()

    def _register_leg(self, cmd: RingDevice) -> None:
        channel_id = OurChannel(self.call_id, "leg", cmd.leg_id).channel_id
        leg = Leg(cmd.leg_id, channel_id, f"{cmd.endpoint}@{self.domain}", cmd.device)
        self.legs[leg.leg_id] = leg
        self.by_channel[leg.channel_id] = leg
        self.presence.add_own(leg.endpoint_id, leg.channel_id)
        self.records.leg_dialed(
            self.call_id, channel_id, kind="leg", endpoint=leg.endpoint_id, device=cmd.device, extension=cmd.extension
        )

    # -- channel side -------------------------------------------------------------------------
    def leg_up(self, channel_id: str) -> None:
        """The device answered (its channel went Up). The caller is answered at once; the leg
        joins the bridge once it has entered Stasis too (:meth:`leg_in_stasis`)."""
        leg = self.by_channel.get(channel_id)
        if leg is None or leg.ended or leg.answered:
            return
        leg.answered = True
        self.marks["up"] = time.perf_counter()
        self.metrics.inc("pbx_legs_total", outcome="answered")
        if self.fork.ended:
            # Answered after the call was decided (two devices picking up at once): the engine
            # has already stopped this leg, so the extra answer is hung up.
            self._spawn(self._hangup(leg.channel_id, "answered_elsewhere"))
            return
        self.records.leg_answered(channel_id)
        self.feed(LegAnswered(leg.leg_id))

    def leg_ringing(self) -> None:
        """A device rings: the caller gets its 180 (its own phone plays the ringback), once, as
        Dial() forwards it. Sent together with the originate instead, it held the INVITE to the
        device back by ~0.8 ms (bench/RESULTS.md); nor should a caller hear ringing before
        anything rings (a busy first rank). A ringback tone (183) replaces it."""
        if self._caller_ringing or self.ringback is not None or self.fork.ended or self.caller_gone:
            return
        self._caller_ringing = True
        self._spawn(self._ring_caller())

    async def _ring_caller(self) -> None:
        try:
            await self.ari.channels.ring(self.caller.id)
        except AriNotFound:
            pass  # hung up already

    def leg_in_stasis(self, channel_id: str) -> bool:
        """The leg's StasisStart: it can be bridged now (and it is certainly answered). False for a
        channel this call does not follow (any more)."""
        leg = self.by_channel.get(channel_id)
        if leg is None:
            return False
        leg.in_stasis.set()
        self.leg_up(channel_id)
        return True

    def leg_ended(self, channel_id: str, cause: int) -> None:
        leg = self.by_channel.pop(channel_id, None)
        self.presence.gone(channel_id)
        if leg is None or leg.ended:
            return
        leg.ended = True
        if leg.answered:
            return  # the conference owns it now
        if leg.stopped:
            self.metrics.inc("pbx_legs_total", outcome="stopped")
            self.log.info("leg %s to %s stopped (cause %s)", leg.leg_id, leg.device, cause)
            return  # the engine stopped it: nothing to tell it
        reason = leg_failure(cause)
        self.metrics.inc("pbx_legs_total", outcome=reason)
        self.log.info("leg %s to %s ended: cause %s (%s)", leg.leg_id, leg.device, cause, reason)
        self.feed(LegFailed(leg.leg_id, reason))

    def caller_hung_up(self) -> None:
        if self.caller_gone:
            return
        self.caller_gone = True
        self.log.info("caller hung up")
        self.records.call_result(self.call_id, "cancelled")
        self.feed(CallerHangup())

    def abandon(self) -> None:
        """The controller is going away or lost track: stop timers, leave channels to reconcile."""
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        if self._runner is not None:
            self._runner.cancel()

    # -- executing commands -------------------------------------------------------------------
    async def _run_io(self) -> None:
        while self._io:
            batch: list[Command] = [self._io.popleft()]
            # Legs of one rank ring together: their originates go out concurrently.
            while isinstance(batch[0], RingDevice) and self._io and isinstance(self._io[0], RingDevice):
                batch.append(self._io.popleft())
            try:
                if len(batch) == 1:  # gather would wrap it in a task: one more loop turn before it is sent
                    await self._execute(batch[0])
                else:
                    await asyncio.gather(*(self._execute(cmd) for cmd in batch))
            except Exception:  # one failed request must not strand the call
                self.metrics.inc("pbx_failures_total", kind="command")
                self.log.exception("executing %s failed", batch)
        self._finish_if_over()

    async def _execute(self, cmd: Command) -> None:
        if isinstance(cmd, RingDevice):
            await self._ring(cmd)
        elif isinstance(cmd, StopLeg):
            leg = self.legs.get(cmd.leg_id)
            if leg is not None and not leg.ended and cmd.why != "rejected":
                reason = "answered_elsewhere" if cmd.why == "answered_elsewhere" else "normal"
                leg.stopped = True
                self.records.leg_stopped(leg.channel_id, cmd.why)
                await self._hangup(leg.channel_id, reason)
        elif isinstance(cmd, EndCall):
            self.metrics.inc("pbx_calls_total", result=cmd.result)
            self.log.info("call ended: %s", cmd.result)
            if cmd.result != "answered":
                await self._unanswered(cmd.result)

    async def _unanswered(self, result: str) -> None:
        """Nobody answered: the caller gets the result as its final response."""
        if not self.caller_gone:
            await self._hangup_code(self.caller.id, caller_cause(result))

    async def _ring(self, cmd: RingDevice) -> None:
        leg = self.legs[cmd.leg_id]
        uri = cmd.uri or self.contact_uris.get(cmd.device)  # a static contact carries its configured URI
        if uri is None:  # unregistered between lookup and ring
            self.feed(LegFailed(cmd.leg_id, "unavailable"))
            return
        if self._first_ring_at is None:
            self._first_ring_at = self.marks["ring"] = time.perf_counter()
            self.metrics.observe("pbx_routing_seconds", self._first_ring_at - self._started)
        self.log.info("ring %s (%s) as %r <%s>", cmd.device, cmd.extension, cmd.callername, cmd.caller)
        try:
            await self.ari.channels.originate(
                dial_string(leg.endpoint_id, uri, cmd.dialed),
                app_args=OurChannel(self.call_id, "leg", leg.leg_id).stasis_args,
                caller_id=_caller_id(cmd.callername, cmd.caller),
                timeout=-1,  # the engine's timers decide how long a device rings
                channel_id=leg.channel_id,
                originator=self.caller.id,
                variables={
                    "PBX_CALL_ID": self.call_id,
                    "PBX_CALLED_NAME": cmd.calledname,
                    "PBX_ORIGINALLY_CALLED": cmd.originally_called,
                    # The extension the device answers for: what a transfer it makes is routed as.
                    "PBX_EXTENSION": cmd.extension,
                    # A REFER from this device comes to the controller (see transfer.py).
                    TRANSFER_HANDLING: "ari-only",
                },
            )
            self.marks.setdefault("originated", time.perf_counter())
        except AriUnavailable as exc:
            # A request that timed out may still have been applied. The channel id is ours, so
            # Asterisk can say: a channel that exists is followed by its events like any leg.
            self.log.warning("originate to %s: %s; is %s there?", cmd.device, exc, leg.channel_id)
            if not await self._exists(leg.channel_id):
                self._not_started(leg)
        except AriError as exc:
            self.log.warning("originate to %s failed: %s", cmd.device, exc)
            self._not_started(leg)

    async def _exists(self, channel_id: str) -> bool:
        try:
            await self.ari.channels.get(channel_id)
        except AriNotFound:
            return False
        except AriError as exc:
            # Unknowable: the engine must move on all the same, and a channel that does turn up
            # later would ring with nobody following it, so it is hung up (if it ever exists).
            self.log.warning("cannot tell whether %s exists (%s): counted as failed", channel_id, exc)
            self._spawn(self._hangup(channel_id, "normal"))
            return False
        return True

    def _not_started(self, leg: Leg) -> None:
        """The leg's originate failed: the engine hears of it as a failed leg."""
        if leg.ended:  # its ChannelDestroyed came while we asked
            return
        self.by_channel.pop(leg.channel_id, None)
        self.presence.gone(leg.channel_id)
        leg.ended = True
        self.metrics.inc("pbx_legs_total", outcome="failed")
        self.feed(LegFailed(leg.leg_id, "failed"))

    async def _run_bridge(self, leg: Leg) -> None:
        try:
            await self._connect(leg)
        except Exception:  # the conference's own requests log theirs; this is anything else
            self.metrics.inc("pbx_failures_total", kind="command")
            self.log.exception("bridging %s failed", leg.channel_id)
        finally:
            self._bridging = False
            if self._runner is None or self._runner.done():
                self._finish_if_over()

    async def _connect(self, leg: Leg) -> None:
        """The answered leg and the caller in a new conference."""
        if self.ringback is not None:
            await self._stop_ringback(self.ringback)
        self.conference = Conference(self.ari, self.call_id, self.log, tenant_domain=self.domain)
        try:
            await self.conference.open(self.caller.id, leg.channel_id, leg.in_stasis.wait(), self.marks)
            self.log.info("setup: %s", setup_summary(self.marks))
        except AriError as exc:
            self.log.warning("bridging failed: %s", exc)
            await self.conference.close()

    async def _start_ringback(self, ringback: str) -> str | None:
        """``tone-<zone>`` (e.g. tone-de): the country's ring tone as early media (183) instead of the
        caller's own phone ringing. Other values are not known and leave the 180."""
        if not ringback.startswith("tone-"):
            self.log.warning("ringback %r not understood (tone-<country>); the caller's phone rings", ringback)
            return None
        playback_id = ringback_playback_id(self.call_id)
        try:
            await self.ari.channels.progress(self.caller.id)
            await self.ari.channels.play(self.caller.id, f"tone:ring;tonezone={ringback[5:]}", playback_id=playback_id)
        except AriError as exc:
            self.log.warning("ringback %s: %s", ringback, exc)
            return None
        return playback_id

    async def _stop_ringback(self, playback_id: str) -> None:
        try:
            await self.ari.playbacks.stop(playback_id)
        except AriError:
            pass  # over already

    def _finish_if_over(self) -> None:
        """The call is over for the controller once the engine has ended it, its commands are
        out, and the answered leg (whose StasisStart finds its call here) is in the bridge."""
        if self.fork.ended and not self._io and not self._bridging:
            self._finish()

    async def _hangup(self, channel_id: str, reason: str) -> None:
        try:
            await self.ari.channels.hangup(channel_id, reason=reason)
        except AriNotFound:
            pass  # already gone

    async def _hangup_code(self, channel_id: str, code: int) -> None:
        try:
            await self.ari.channels.hangup(channel_id, reason_code=code)
        except AriNotFound:
            pass

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await coro
            except AriError as exc:
                self.log.warning("%s", exc)

        task = asyncio.create_task(run())
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    def _finish(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self._finished.set()
