"""Stage 2: which devices of a user leg ring, or why none does."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = ["DeviceState", "Ring", "Unreachable", "decide"]


class DeviceState(Protocol):
    """What the outside world knows about devices; the live controller and the simulator differ."""

    def contacts(self, endpoint: str) -> Sequence[str]:
        """Registered contacts of an endpoint, in a stable order."""
        ...

    def in_use(self, endpoint: str) -> bool:
        """Whether the endpoint already has a call up."""
        ...


@dataclass(frozen=True)
class Ring:
    devices: tuple[tuple[str, str], ...]  # (endpoint, contact)


@dataclass(frozen=True)
class Unreachable:
    error: Literal["busy", "offline"]


def decide(
    endpoints: Sequence[str], state: DeviceState, *, cw_off: bool, check_in_use: bool, already_rung: set[str]
) -> Ring | Unreachable:
    """Offline without a contact; busy when in use without call waiting, or when every device
    already rang in this call (a device rings once per call); otherwise ring every contact."""
    devices = [(ep, c) for ep in endpoints for c in state.contacts(ep)]
    if not devices:
        return Unreachable("offline")
    if check_in_use and cw_off and any(state.in_use(ep) for ep in endpoints):
        return Unreachable("busy")
    fresh = tuple((ep, c) for ep, c in devices if c not in already_rung)
    if not fresh:
        return Unreachable("busy")
    return Ring(fresh)
