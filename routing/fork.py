"""The fork state machine: sans-I/O. Events in (with the current time), commands out.

One `Fork` per call. The engine owns no clock and no channel: the caller of `handle` feeds it
device outcomes and fired timers, and executes the commands it returns (ring a device, stop a leg,
start a timer, bridge the answering leg, end the call). The simulator drives it on a virtual clock;
the ARI controller drives it with real channels and asyncio timers.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Literal

from routing.stage1 import Node, Tree
from routing.stage2 import ALL_REACHABLE, DeviceState, Reachability, Ring, decide

__all__ = [
    "Bridge",
    "CallerHangup",
    "CancelTimer",
    "Command",
    "EndCall",
    "Event",
    "Fork",
    "LegAnswered",
    "LegFailed",
    "Refused",
    "RingDevice",
    "Start",
    "StartTimer",
    "StopLeg",
    "TimerFired",
]

StopWhy = Literal["drop", "answered_elsewhere", "rejected", "caller_hangup", "timeout"]
FailReason = Literal["busy", "rejected", "unavailable", "failed"]
Result = Literal["answered", "busy", "unavailable", "noanswer"]


# --- events ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Start:
    pass


@dataclass(frozen=True)
class LegAnswered:
    leg_id: int


@dataclass(frozen=True)
class LegFailed:
    leg_id: int
    reason: FailReason


@dataclass(frozen=True)
class TimerFired:
    timer_id: int


@dataclass(frozen=True)
class CallerHangup:
    pass


Event = Start | LegAnswered | LegFailed | TimerFired | CallerHangup


# --- commands ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RingDevice:
    leg_id: int
    endpoint: str
    device: str
    caller: str
    callername: str
    calledname: str
    originally_called: str
    dialed: str | None = None
    extension: str = ""
    uri: str | None = None  # a static contact's configured URI; registered contacts: by device id


@dataclass(frozen=True)
class StopLeg:
    leg_id: int
    device: str
    why: StopWhy


@dataclass(frozen=True)
class StartTimer:
    timer_id: int
    at_ms: int


@dataclass(frozen=True)
class CancelTimer:
    timer_id: int


@dataclass(frozen=True)
class Refused:
    number: str
    error: Literal["busy", "offline"]


@dataclass(frozen=True)
class Bridge:
    leg_id: int
    device: str


@dataclass(frozen=True)
class EndCall:
    result: Result


Command = RingDevice | StopLeg | StartTimer | CancelTimer | Refused | Bridge | EndCall


# --- internal state ----------------------------------------------------------------------------
@dataclass(eq=False)
class _Leg:
    id: int
    owner: _Run
    device: str | None = None  # a ringing device, or
    child: _Run | None = None  # a nested extension
    alive: bool = True
    failure: Literal["busy", "offline"] | None = None


@dataclass(eq=False)
class _Run:
    """One started extension node."""

    node: Node
    parent_leg: _Leg | None
    legs: list[_Leg] = field(default_factory=list)
    cursor: int = 0
    prev_rank_start: int = 0
    skip_delay: bool = False
    rank_timer: int | None = None
    fwd_timer: int | None = None
    fwd_due: int | None = None
    forwarded: bool = False
    extra_forward_used: bool = False
    fallback_cursor: int = 0  # trunk runs: the next fallback trunk to try
    done: bool = False
    starting: bool = False  # while a rank's members start; a member failing at once must wait for the rest

    def failures(self) -> set[str]:
        return {leg.failure for leg in self.legs if leg.failure}

    def any_alive(self) -> bool:
        return any(leg.alive for leg in self.legs)


class Fork:
    def __init__(
        self,
        tree: Tree,
        originally_called: str,
        devices: DeviceState,
        reachability: Reachability = ALL_REACHABLE,
    ) -> None:
        self.tree = tree
        self.called = originally_called
        self.devices = devices
        self.reachability = reachability
        self.rung: set[str] = set()
        self.ended = False
        self._ids = itertools.count(1)
        self._legs: dict[int, _Leg] = {}
        self._timers: dict[int, tuple[_Run, str]] = {}
        self._out: list[Command] = []
        self.root: _Run | None = None

    # -- entry point ----------------------------------------------------------------------------
    def handle(self, event: Event, now_ms: int) -> list[Command]:
        self._out = []
        if self.ended:
            return []
        if isinstance(event, Start):
            self._start(now_ms)
        elif isinstance(event, LegAnswered):
            self._answered(event.leg_id)
        elif isinstance(event, LegFailed):
            self._failed(event.leg_id, event.reason, now_ms)
        elif isinstance(event, TimerFired):
            self._timer(event.timer_id, now_ms)
        elif isinstance(event, CallerHangup):
            self._stop_everything("caller_hangup")
            self._end("noanswer")
        return self._out

    def _start(self, now: int) -> None:
        if self.tree.root is None or self.tree.self_call:
            self._end("busy")
            return
        self.root = _Run(self.tree.root, None)
        # The ring timeout counts from the start of the call, whatever the tree does meanwhile.
        self._timer_at(self.root, "timeout", now + self.tree.ring_timeout_ms)
        self._start_run(self.root, now)

    # -- runs -----------------------------------------------------------------------------------
    def _start_run(self, run: _Run, now: int) -> None:
        node = run.node
        run.prev_rank_start = now
        if node.kind != "group":
            self._start_own_devices(run)
        if node.timed_forward is not None:
            run.fwd_due = now + node.timed_forward[0]
            run.fwd_timer = self._timer_at(run, "forward", run.fwd_due)
        self._advance(run, now)

    def _start_own_devices(self, run: _Run) -> None:
        node = run.node
        decision = decide(
            node.endpoints,
            self.devices,
            cw_off=node.cw_off,
            check_in_use=node.kind != "trunk",
            already_rung=self.rung,
            static=self.tree.static_contacts,
            reachability=self.reachability,
        )
        if not isinstance(decision, Ring):
            self._out.append(Refused(node.refused_as or node.number, decision.error))
            run.legs.append(_Leg(next(self._ids), run, alive=False, failure=decision.error))
            return
        caller = self.tree.caller
        assert caller is not None
        name = f"[{self.tree.prefix}] {caller.name}" if self.tree.prefix else caller.name
        for device in decision.devices:
            leg = _Leg(next(self._ids), run, device=device.name)
            run.legs.append(leg)
            self._legs[leg.id] = leg
            self.rung.add(device.name)
            self._out.append(
                RingDevice(
                    leg.id,
                    device.endpoint,
                    device.name,
                    caller.number,
                    name,
                    self.tree.calledname,
                    self.called,
                    node.dialed,
                    node.number,
                    device.uri,
                )
            )

    def _start_child(self, run: _Run, node: Node, now: int) -> _Leg:
        leg = _Leg(next(self._ids), run)
        child = _Run(node, leg)
        leg.child = child
        run.legs.append(leg)
        self._legs[leg.id] = leg
        self._start_run(child, now)
        return leg

    def _advance(self, run: _Run, now: int) -> None:
        """Move a run on as far as it can go now: start due ranks, forwards, or fail."""
        node = run.node
        while not run.done and not self.ended:
            if run.forwarded:
                if not run.any_alive():
                    self._fail_run(run, now)
                return
            all_failed = bool(run.legs) and not run.any_alive()
            if run.cursor < len(node.ranks):
                rank = node.ranks[run.cursor]
                if rank.mode == "default":
                    # A multiring's rank 0 rings together with the extension's own devices.
                    joins_own = node.kind == "multiring" and run.cursor == 0
                    if run.legs and not all_failed and not joins_own:
                        return
                else:
                    due = now if run.skip_delay else run.prev_rank_start + rank.delay_ms
                    if not all_failed and now < due:
                        if run.fwd_due is not None and run.fwd_due <= due:
                            self._cancel_rank_timer(run)  # the timed forward comes first
                        elif run.rank_timer is None:
                            run.rank_timer = self._timer_at(run, "rank", due)
                        return
                    if run.fwd_due is not None and run.fwd_due <= now:
                        self._fire_forward(run, now)
                        continue
                self._start_rank(run, now)
                continue
            if run.any_alive():
                return
            if node.fallbacks and run.fallback_cursor < len(node.fallbacks) and run.failures() == {"offline"}:
                # Every leg of this trunk failed unavailable: the next fallback trunk, at once.
                run.fallback_cursor += 1
                self._start_child(run, node.fallbacks[run.fallback_cursor - 1], now)
                continue
            # Nothing left to ring in this extension: its forwards, in the order the contract gives.
            if node.timed_forward is not None:
                self._fire_forward(run, now)
                continue
            failures = run.failures()
            extra = None
            if not run.extra_forward_used:
                if node.busy_forward is not None and "busy" in failures:
                    extra = node.busy_forward
                elif node.unavailable_forward is not None and "offline" in failures:
                    extra = node.unavailable_forward
            if extra is not None:
                run.extra_forward_used = True
                self._start_child(run, extra, now)
                continue
            self._fail_run(run, now)
            return

    def _start_rank(self, run: _Run, now: int) -> None:
        rank = run.node.ranks[run.cursor]
        self._cancel_rank_timer(run)
        run.cursor += 1
        run.prev_rank_start = now
        run.skip_delay = False
        earlier = [leg for leg in run.legs if leg.alive]
        run.starting = True
        try:
            new = [self._start_child(run, member, now) for member in rank.members]
        finally:
            run.starting = False
        if any(leg.alive for leg in new):
            if rank.mode == "drop":
                for leg in earlier:
                    self._stop_leg(leg, "drop")
        else:
            run.skip_delay = True  # a rank that started no leg is skipped: the next one is due now

    def _fire_forward(self, run: _Run, now: int) -> None:
        assert run.node.timed_forward is not None
        run.forwarded = True
        self._cancel_rank_timer(run)
        if run.fwd_timer is not None:
            self._cancel(run.fwd_timer)
            run.fwd_timer = None
        for leg in [leg for leg in run.legs if leg.alive]:
            self._stop_leg(leg, "drop")
        self._start_child(run, run.node.timed_forward[1], now)

    def _fail_run(self, run: _Run, now: int) -> None:
        run.done = True
        self._cancel_run_timers(run)
        reason: Literal["busy", "offline"] = "busy" if "busy" in run.failures() else "offline"
        if run.parent_leg is None:
            self._end("busy" if reason == "busy" else "unavailable")
            return
        leg = run.parent_leg
        leg.alive = False
        leg.failure = reason
        if not leg.owner.starting:
            self._advance(leg.owner, now)

    # -- events ---------------------------------------------------------------------------------
    def _answered(self, leg_id: int) -> None:
        leg = self._legs.get(leg_id)
        if leg is None or not leg.alive or leg.device is None:
            return
        for other in self._alive_device_legs():
            if other is not leg:
                other.alive = False
                self._out.append(StopLeg(other.id, other.device or "", "answered_elsewhere"))
        self._out.append(Bridge(leg.id, leg.device))
        self._end("answered")

    def _failed(self, leg_id: int, reason: FailReason, now: int) -> None:
        leg = self._legs.get(leg_id)
        if leg is None or not leg.alive:
            return
        leg.alive = False
        leg.failure = "offline" if reason in ("unavailable", "failed") else "busy"
        if reason == "rejected" and leg.device is not None:
            self._out.append(StopLeg(leg.id, leg.device, "rejected"))
        self._advance(leg.owner, now)

    def _timer(self, timer_id: int, now: int) -> None:
        entry = self._timers.pop(timer_id, None)
        if entry is None:
            return
        run, kind = entry
        if kind == "timeout":
            self._stop_everything("timeout")
            self._end("noanswer")
            return
        if run.done or run.forwarded:
            return
        if kind == "rank":
            run.rank_timer = None
        if run.fwd_due is not None and run.fwd_due <= now:
            self._fire_forward(run, now)  # a timed forward due now beats a rank due now
        self._advance(run, now)

    # -- helpers --------------------------------------------------------------------------------
    def _alive_device_legs(self) -> list[_Leg]:
        return [leg for leg in self._legs.values() if leg.alive and leg.device is not None]

    def _stop_leg(self, leg: _Leg, why: StopWhy) -> None:
        leg.alive = False
        if leg.device is not None:
            self._out.append(StopLeg(leg.id, leg.device, why))
        elif leg.child is not None:
            child = leg.child
            child.done = True
            self._cancel_run_timers(child)
            for sub in child.legs:
                if sub.alive:
                    self._stop_leg(sub, why)

    def _stop_everything(self, why: StopWhy) -> None:
        for leg in self._alive_device_legs():
            leg.alive = False
            self._out.append(StopLeg(leg.id, leg.device or "", why))

    def _timer_at(self, run: _Run, kind: str, at: int) -> int:
        tid = next(self._ids)
        self._timers[tid] = (run, kind)
        self._out.append(StartTimer(tid, at))
        return tid

    def _cancel(self, tid: int) -> None:
        if self._timers.pop(tid, None) is not None:
            self._out.append(CancelTimer(tid))

    def _cancel_rank_timer(self, run: _Run) -> None:
        if run.rank_timer is not None:
            self._cancel(run.rank_timer)
            run.rank_timer = None

    def _cancel_run_timers(self, run: _Run) -> None:
        self._cancel_rank_timer(run)
        if run.fwd_timer is not None:
            self._cancel(run.fwd_timer)
            run.fwd_timer = None

    def _end(self, result: Result) -> None:
        for tid in list(self._timers):
            self._cancel(tid)
        self.ended = True
        self._out.append(EndCall(result))
