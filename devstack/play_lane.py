"""`call play --lane N`: a scenario moved out of the way of plays running beside it on one stack.

Scenarios reuse one tenant (``t``, ``t.example``) and the same carrier addresses (127.0.0.2:5070
…), so two of them played at once would converge each other's tenant and fight over ports. In lane
N (1 to 254) the scenario's tenants become ``<name>-lN`` with domain ``lN.<domain>`` (everywhere the
domain appears in the config), and every 127.0.x.y address in the config becomes 127.N.x.y, so a
carrier's identify, its static contacts and the sipp devices listening there are the lane's own.
What a device sees and the timeline reports (device names, From users, display names, dialed
numbers) does not change, so a lane's play is checked against the same expectations.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_LANE", "in_lane"]

MAX_LANE = 254
_LOOPBACK = re.compile(r"(?<![\d.])127\.0\.(\d{1,3})\.(\d{1,3})(?![\d])")


def in_lane(scenario: Mapping[str, Any], lane: int) -> dict[str, Any]:
    """``scenario`` with its tenants, domains and 127.0.x.y addresses moved to ``lane``."""
    if not 1 <= lane <= MAX_LANE:
        raise ValueError(f"lane {lane}: not between 1 and {MAX_LANE}")
    out = dict(scenario)
    tenants = (scenario.get("config") or {}).get("tenants") or {}
    renamed = {str(name): f"{name}-l{lane}" for name in tenants}
    moved: dict[str, Any] = {}
    for name, body in tenants.items():
        if isinstance(body, Mapping) and isinstance(body.get("domain"), str):
            domain = body["domain"]
            body = _replace(body, lambda s, d=domain: s.replace(d, f"l{lane}.{d}"))
        moved[renamed[str(name)]] = _replace(body, lambda s: _LOOPBACK.sub(rf"127.{lane}.\1.\2", s))
    out["config"] = {**(scenario.get("config") or {}), "tenants": moved}
    call = scenario.get("call")
    if isinstance(call, Mapping) and str(call.get("tenant")) in renamed:
        out["call"] = {**call, "tenant": renamed[str(call["tenant"])]}
    return out


def _replace(value: Any, fix: Any) -> Any:
    """``value`` with ``fix`` applied to every string in it (keys too: an AOR contact can be one)."""
    if isinstance(value, str):
        return fix(value)
    if isinstance(value, Mapping):
        return {_replace(k, fix): _replace(v, fix) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v, fix) for v in value]
    return value
