"""Stage 2: which devices of a user leg ring, or why none does.

An endpoint's devices are its registered contacts and the `contact` URIs configured on its AOR
(static contacts, named ``<endpoint>/<position>``, 1-based). A static contact needs no
registration; one that Asterisk qualifies (qualify_frequency > 0) and reports unreachable is
offline. Reachability is an input: the live controller fills it from Asterisk's contact status,
the simulator has no such report and treats every static contact as reachable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from routing.model import StaticContact

__all__ = [
    "ALL_REACHABLE",
    "Device",
    "DeviceState",
    "Reachability",
    "Ring",
    "Unreachable",
    "decide",
    "devices_of",
    "static_device_name",
]


class DeviceState(Protocol):
    """What the outside world knows about devices; the live controller and the simulator differ."""

    def contacts(self, endpoint: str) -> Sequence[str]:
        """Registered contacts of an endpoint, in a stable order."""
        ...

    def in_use(self, endpoint: str) -> bool:
        """Whether the endpoint already has a call up."""
        ...


class Reachability(Protocol):
    """Asterisk's qualify verdict on static contacts (only asked for qualified ones)."""

    def reachable(self, endpoint: str, uri: str) -> bool: ...


class _AllReachable:
    def reachable(self, endpoint: str, uri: str) -> bool:
        return True


ALL_REACHABLE: Reachability = _AllReachable()


def static_device_name(endpoint: str, position: int) -> str:
    return f"{endpoint}/{position}"


@dataclass(frozen=True)
class Device:
    endpoint: str
    name: str  # a registered contact's id, or <endpoint>/<position> for a static contact
    uri: str | None = None  # a static contact's configured URI (registered ones: the controller's contact_uris)


@dataclass(frozen=True)
class Ring:
    devices: tuple[Device, ...]


@dataclass(frozen=True)
class Unreachable:
    error: Literal["busy", "offline"]


def devices_of(
    endpoint: str, state: DeviceState, static: Mapping[str, Sequence[StaticContact]], reachability: Reachability
) -> list[Device]:
    out = [
        Device(endpoint, static_device_name(endpoint, i), c.uri)
        for i, c in enumerate(static.get(endpoint, ()), start=1)
        if not c.qualified or reachability.reachable(endpoint, c.uri)
    ]
    out += [Device(endpoint, c) for c in state.contacts(endpoint)]
    return out


def decide(
    endpoints: Sequence[str],
    state: DeviceState,
    *,
    cw_off: bool,
    check_in_use: bool,
    already_rung: set[str],
    static: Mapping[str, Sequence[StaticContact]] | None = None,
    reachability: Reachability = ALL_REACHABLE,
) -> Ring | Unreachable:
    """Offline without a device; busy when in use without call waiting, or when every device
    already rang in this call (a device rings once per call); otherwise ring every device."""
    devices = [d for ep in endpoints for d in devices_of(ep, state, static or {}, reachability)]
    if not devices:
        return Unreachable("offline")
    if check_in_use and cw_off and any(state.in_use(ep) for ep in endpoints):
        return Unreachable("busy")
    fresh = tuple(d for d in devices if d.name not in already_rung)
    if not fresh:
        return Unreachable("busy")
    return Ring(fresh)
