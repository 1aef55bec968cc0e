"""Run a routing scenario (contract section 5) on a virtual clock: no database, no Asterisk.

The scenario's own `config` builds the directory; `registrations` and `in_use` stand in for
ps_contacts and live channels; `behaviour` says when a device answers or rejects (`answer_at`,
`reject_at`, in seconds from the call's start) or that it is busy (`busy: true`: 486 the moment it
rings).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from routing.fork import (
    Bridge,
    CallerHangup,
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
from routing.model import directory_from_config
from routing.stage1 import CallRequest, build_tree

__all__ = ["ScenarioDevices", "call_request", "simulate"]

# Same-instant order: what a device does, then timers, then the caller giving up at the horizon.
_DEVICE, _TIMER, _HANGUP = 0, 1, 2


@dataclass
class ScenarioDevices:
    registrations: Mapping[str, Sequence[str]]
    in_use_counts: Mapping[str, int]

    def contacts(self, endpoint: str) -> Sequence[str]:
        return [str(d) for d in self.registrations.get(endpoint) or ()]

    def in_use(self, endpoint: str) -> bool:
        return int(self.in_use_counts.get(endpoint) or 0) > 0


def call_request(call: Mapping[str, Any]) -> CallRequest:
    kwargs: dict[str, Any] = {}
    if "endpoint" in call:
        kwargs["endpoint"] = None if call["endpoint"] is None else str(call["endpoint"])
    return CallRequest(
        str(call["tenant"]), str(call["caller"]), str(call["called"]), callername=call.get("callername"), **kwargs
    )


def _seconds(ms: int) -> int | float:
    return ms // 1000 if ms % 1000 == 0 else ms / 1000


def simulate(scenario: Mapping[str, Any], horizon_s: float | None = None) -> dict[str, Any]:
    call = scenario["call"]
    tenant = str(call["tenant"])
    tenants = (scenario.get("config") or {}).get("tenants") or {}
    directory = directory_from_config(tenant, tenants.get(tenant) or {})
    request = call_request(call)
    tree = build_tree(directory, request)
    if tree.status != "ok":
        return {"status": tree.status, "result": "noroute", "timeline": []}

    devices = ScenarioDevices(
        {str(k): v for k, v in (scenario.get("registrations") or {}).items()},
        {str(k): v for k, v in (scenario.get("in_use") or {}).items()},
    )
    behaviour = {str(k): v or {} for k, v in (scenario.get("behaviour") or {}).items()}
    horizon_ms = int(1000 * float(horizon_s if horizon_s is not None else scenario.get("horizon_s") or 120))
    fork = Fork(tree, request.called, devices)

    queue: list[tuple[int, int, int, Event]] = []
    seq = itertools.count()
    timeline: list[dict[str, Any]] = []
    result = "noanswer"

    def push(at: int, prio: int, event: Event) -> None:
        heapq.heappush(queue, (at, prio, next(seq), event))

    def run(event: Event, now: int) -> None:
        nonlocal result
        for cmd in fork.handle(event, now):
            result = _apply(cmd, now, timeline, behaviour, push) or result

    run(Start(), 0)
    push(horizon_ms, _HANGUP, CallerHangup())
    while queue and not fork.ended:
        at, _prio, _n, event = heapq.heappop(queue)
        run(event, at)
    return {"status": "ok", "result": result, "timeline": timeline}


def _apply(
    cmd: Command, now: int, timeline: list[dict[str, Any]], behaviour: Mapping[str, Mapping[str, Any]], push: Any
) -> str | None:
    t = _seconds(now)
    if isinstance(cmd, RingDevice):
        ev: dict[str, Any] = {
            "t": t,
            "ring": cmd.device,
            "caller": cmd.caller,
            "callername": cmd.callername,
            "calledname": cmd.calledname,
            "originally_called": cmd.originally_called,
        }
        if cmd.dialed is not None:
            ev["dialed"] = cmd.dialed
        timeline.append(ev)
        b = behaviour.get(cmd.device) or {}
        if "answer_at" in b:
            push(max(now, int(1000 * float(b["answer_at"]))), _DEVICE, LegAnswered(cmd.leg_id))
        elif "reject_at" in b:
            push(max(now, int(1000 * float(b["reject_at"]))), _DEVICE, LegFailed(cmd.leg_id, "rejected"))
        elif b.get("busy"):
            push(now, _DEVICE, LegFailed(cmd.leg_id, "rejected"))  # 486 as soon as it rings
    elif isinstance(cmd, StopLeg):
        timeline.append({"t": t, "stop": cmd.device, "why": cmd.why})
    elif isinstance(cmd, Refused):
        timeline.append({"t": t, "refused": cmd.number, "error": cmd.error})
    elif isinstance(cmd, Bridge):
        timeline.append({"t": t, "answer": cmd.device})
    elif isinstance(cmd, StartTimer):
        push(cmd.at_ms, _TIMER, TimerFired(cmd.timer_id))
    elif isinstance(cmd, EndCall):
        return cmd.result
    return None
