"""The routing model: a tenant's extensions (contract section 2), immutable and I/O free."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "Directory",
    "Extension",
    "ExtensionType",
    "Forward",
    "Member",
    "Rank",
    "RankMode",
    "directory_from_config",
]

ExtensionType = Literal["simple", "multiring", "group", "external", "trunk"]
RankMode = Literal["default", "next", "drop"]
ForwardMode = Literal["always", "busy", "unavailable"]


@dataclass(frozen=True)
class Member:
    number: str
    active: bool = True


@dataclass(frozen=True)
class Rank:
    mode: RankMode
    delay_ms: int
    members: tuple[Member, ...]


@dataclass(frozen=True)
class Forward:
    mode: ForwardMode
    to: str
    delay_ms: int = 0

    @property
    def immediate(self) -> bool:
        return self.mode == "always" and not self.delay_ms


@dataclass(frozen=True)
class Extension:
    number: str
    type: ExtensionType
    name: str = ""
    short_name: str | None = None
    endpoints: tuple[str, ...] = ()
    call_waiting: bool = True
    dialout: bool = False
    outgoing_number: str | None = None
    outgoing_name: str | None = None
    ringback: str | None = None
    language: str | None = None
    forward: Forward | None = None
    ranks: tuple[Rank, ...] = ()

    @property
    def is_user(self) -> bool:
        return self.type in ("simple", "multiring")


@dataclass(frozen=True)
class Directory:
    """One tenant's routing data, indexed for the lookups a call needs."""

    tenant: str
    extensions: Mapping[str, Extension]
    endpoint_owner: Mapping[str, str] = field(default_factory=dict)  # endpoint name -> extension number
    trunks: tuple[str, ...] = ()  # trunk numbers, longest first

    @classmethod
    def build(cls, tenant: str, extensions: Mapping[str, Extension]) -> Directory:
        owner: dict[str, str] = {}
        for ext in extensions.values():
            for ep in ext.endpoints:
                owner.setdefault(ep, ext.number)
        trunks = tuple(sorted((e.number for e in extensions.values() if e.type == "trunk"), key=len, reverse=True))
        return cls(tenant, dict(extensions), owner, trunks)

    def trunk_for(self, number: str) -> Extension | None:
        """The trunk whose number is the longest prefix of ``number``."""
        for t in self.trunks:
            if number.startswith(t):
                return self.extensions[t]
        return None


def _member(raw: Any) -> Member:
    if isinstance(raw, Mapping):
        return Member(str(raw["number"]), bool(raw.get("active", True)))
    return Member(str(raw))


def _extension(number: str, raw: Mapping[str, Any]) -> Extension:
    fwd = raw.get("forward")
    return Extension(
        number=number,
        type=raw["type"],
        name=str(raw.get("name") or ""),
        short_name=raw.get("short_name"),
        endpoints=tuple(str(e) for e in raw.get("endpoints") or ()),
        call_waiting=bool(raw.get("call_waiting", True)),
        dialout=bool(raw.get("dialout", False)),
        outgoing_number=None if raw.get("outgoing_number") is None else str(raw["outgoing_number"]),
        outgoing_name=raw.get("outgoing_name"),
        ringback=raw.get("ringback"),
        language=raw.get("language"),
        forward=Forward(fwd["mode"], str(fwd["to"]), int(fwd.get("delay_ms") or 0)) if fwd else None,
        ranks=tuple(
            Rank(
                r.get("mode", "default"), int(r.get("delay_ms") or 0), tuple(_member(m) for m in r.get("members") or ())
            )
            for r in raw.get("ranks") or ()
        ),
    )


def directory_from_config(tenant: str, config: Mapping[str, Any]) -> Directory:
    """Build a tenant's directory from its section-2 mapping (the `extensions` part is read)."""
    exts = config.get("extensions") or {}
    return Directory.build(tenant, {str(n): _extension(str(n), e) for n, e in exts.items()})
