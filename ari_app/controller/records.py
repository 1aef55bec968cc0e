"""Call records: what happened to each call, built from the moments the controller reports.

The controller and its live calls call one :class:`CallRecorder` at the points a call starts, is
routed, dials a leg, rings, answers and ends. Each report is a dict update on the event loop, no
I/O, so a call never waits for its record. A call's record is complete once the controller is done
with it (the call ended unanswered, or its conference closed) and its caller's channel is gone (that
event carries the hangup cause); it is handed to the sink then, in practice the batch writer
(record_writer.py) and a list in the unit tests. Should the caller's end never be reported (events
lost across a reconnect), the record goes after ``grace_s`` without a cause.

A caller's channel id is its call's id; a leg's is looked up among the legs dialed (a dict, not
the id's parse: this runs on every event of a call). Reports about a call the recorder does not
know (an adopted conference of an earlier process, a disabled recorder) are ignored.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from ari_app.controller.causes import leg_failure
from routing.lookup import Routed

__all__ = ["NO_RECORDS", "CallRecord", "CallRecorder", "LegKind", "LegRecord", "Sink"]

LegKind = Literal["leg", "party", "transfer"]


@dataclass
class LegRecord:
    channel_id: str
    kind: LegKind
    endpoint: str
    device: str | None
    extension: str | None
    started_at: float  # time.time()
    ringing_at: float | None = None
    answered_at: float | None = None
    ended_at: float | None = None
    result: str | None = None
    hangup_cause: int | None = None
    transferred_from: str | None = None
    transferred_to: str | None = None


@dataclass
class CallRecord:
    node: str
    call_id: str
    caller: str
    caller_name: str
    endpoint: str | None
    called: str
    started_at: float
    domain: str | None = None
    tenant: str | None = None
    did: str | None = None
    routed_to: str | None = None
    route: str = ""
    ring_at: float | None = None
    answered_at: float | None = None
    ended_at: float | None = None
    result: str | None = None
    hangup_cause: int | None = None
    answered_by: str | None = None
    transferred_from: str | None = None
    transferred_to: str | None = None
    legs: dict[str, LegRecord] = field(default_factory=dict)
    # Not columns: when the record is complete.
    over: bool = False
    caller_gone: bool = False
    grace: asyncio.TimerHandle | None = field(default=None, repr=False)


Sink = Callable[[CallRecord], None]


def _route_of(routed: Routed) -> str:
    tree = routed.tree
    if routed.status != "ok" or tree is None or tree.root is None:
        return routed.status
    return f"{tree.root.kind} {tree.root.number}"


class CallRecorder:
    """Records calls into ``sink``; with no sink it records nothing (PBX_CALL_RECORDS=false)."""

    def __init__(self, sink: Sink | None, *, grace_s: float = 5.0, clock: Callable[[], float] = time.time) -> None:
        self._sink = sink
        self._grace_s = grace_s
        self._clock = clock
        self.open: dict[str, CallRecord] = {}
        self._calls_of_legs: dict[str, CallRecord] = {}  # leg channel id -> its open call

    # -- the call ------------------------------------------------------------------------------
    def call_started(
        self, call_id: str, *, node: str, caller: str, caller_name: str, endpoint: str | None, called: str
    ) -> None:
        if self._sink is None or call_id in self.open:
            return
        self.open[call_id] = CallRecord(node, call_id, caller, caller_name, endpoint, called, self._clock())

    def call_routed(self, call_id: str, routed: Routed | None) -> None:
        """The lookup's answer (None: it failed). A carrier's call keeps the number it sent as
        the DID and the extension the DID rules made of it as routed_to."""
        rec = self.open.get(call_id)
        if rec is None:
            return
        if routed is None:
            rec.route = "error:failure"
            return
        rec.domain = routed.domain or None
        rec.route = _route_of(routed)
        if routed.request is not None:
            rec.tenant = routed.request.tenant
        tree = routed.tree
        if tree is not None:
            rec.routed_to = tree.called or None
            if tree.caller is not None and tree.caller.trunk is not None:
                rec.did = rec.called

    def call_answered(self, call_id: str, channel_id: str) -> None:
        rec = self.open.get(call_id)
        if rec is not None and rec.answered_at is None:
            rec.answered_at = self._clock()
            rec.answered_by = channel_id

    def call_result(self, call_id: str, result: str) -> None:
        """The first result reported stands (a caller who hung up while ringing is ``cancelled``,
        not the ``noanswer`` the engine ends such a call with)."""
        rec = self.open.get(call_id)
        if rec is not None and rec.result is None:
            rec.result = result

    def call_refused(self, call_id: str, result: str) -> None:
        """Never rung (not routed, refused, or the caller left during the lookup): over now."""
        self.call_result(call_id, result)
        self.call_over(call_id)

    def call_over(self, call_id: str) -> None:
        """The controller is done with the call: it ended unanswered or its conference closed."""
        rec = self.open.get(call_id)
        if rec is None or rec.over:
            return
        rec.over = True
        rec.ended_at = self._clock()
        if rec.caller_gone:
            self._emit(rec)
        else:
            rec.grace = asyncio.get_running_loop().call_later(self._grace_s, self._emit, rec)

    def set_transfer(
        self,
        call_id: str,
        *,
        transferred_from: str | None = None,
        transferred_to: str | None = None,
        channel_id: str | None = None,
    ) -> None:
        """For the transfer code: on the call, or on one of its legs with ``channel_id``. Values
        given replace earlier ones; None leaves a column as it is."""
        rec = self.open.get(call_id)
        if rec is None:
            return
        target: CallRecord | LegRecord | None = rec if channel_id is None else rec.legs.get(channel_id)
        if target is None:
            return
        if transferred_from is not None:
            target.transferred_from = transferred_from
        if transferred_to is not None:
            target.transferred_to = transferred_to

    # -- its legs ------------------------------------------------------------------------------
    def leg_dialed(
        self,
        call_id: str,
        channel_id: str,
        *,
        kind: LegKind,
        endpoint: str,
        device: str | None = None,
        extension: str | None = None,
    ) -> None:
        rec = self.open.get(call_id)
        if rec is None or channel_id in rec.legs:
            return
        now = self._clock()
        rec.legs[channel_id] = LegRecord(channel_id, kind, endpoint, device, extension or None, now)
        self._calls_of_legs[channel_id] = rec
        if rec.ring_at is None:
            rec.ring_at = now

    def leg_ringing(self, channel_id: str) -> None:
        leg = self._leg(channel_id)
        if leg is not None and leg.ringing_at is None:
            leg.ringing_at = self._clock()

    def leg_answered(self, channel_id: str) -> None:
        leg = self._leg(channel_id)
        if leg is not None and leg.answered_at is None:
            leg.answered_at = self._clock()

    def leg_stopped(self, channel_id: str, why: str) -> None:
        """Hung up by the controller while ringing (the engine's stop)."""
        leg = self._leg(channel_id)
        if leg is not None and leg.result is None and leg.answered_at is None:
            leg.result = "answered_elsewhere" if why == "answered_elsewhere" else "cancelled"

    # -- channels ending -----------------------------------------------------------------------
    def channel_gone(self, channel_id: str, cause: int) -> None:
        """ChannelDestroyed of any channel (reported twice for some: the first counts)."""
        rec = self.open.get(channel_id) or self._calls_of_legs.get(channel_id)
        if rec is None:
            return
        if channel_id == rec.call_id:
            if not rec.caller_gone:
                rec.caller_gone = True
                rec.hangup_cause = cause
                if rec.over:
                    self._emit(rec)
            return
        leg = rec.legs.get(channel_id)
        if leg is None or leg.ended_at is not None:
            return
        leg.ended_at = self._clock()
        leg.hangup_cause = cause
        if leg.result is None:
            leg.result = "answered" if leg.answered_at is not None else leg_failure(cause)

    def close(self) -> None:
        """The controller stops: calls still going are written as far as they are known (a call
        that outlives its controller is recorded by the process that started it, without an end)."""
        for rec in list(self.open.values()):
            if rec.result is None:
                rec.result = "answered" if rec.answered_at is not None else "unknown"
            self._emit(rec, ended=rec.over)

    # -- helpers -------------------------------------------------------------------------------
    def _leg(self, channel_id: str) -> LegRecord | None:
        rec = self._calls_of_legs.get(channel_id)
        return rec.legs.get(channel_id) if rec is not None else None

    def _emit(self, rec: CallRecord, *, ended: bool = True) -> None:
        if self.open.pop(rec.call_id, None) is None or self._sink is None:
            return
        for channel_id in rec.legs:
            self._calls_of_legs.pop(channel_id, None)
        if rec.grace is not None:
            rec.grace.cancel()
        if not ended:
            rec.ended_at = None
        if rec.result is None:
            rec.result = "failed"
        for leg in rec.legs.values():
            if leg.result is None:
                leg.result = "answered" if leg.answered_at is not None else "cancelled"
        self._sink(rec)


NO_RECORDS = CallRecorder(None)
