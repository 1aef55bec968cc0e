"""The routing model: a tenant's extensions (contract section 2), immutable and I/O free."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

__all__ = [
    "DEFAULT_RING_TIMEOUT_MS",
    "DidRule",
    "Directory",
    "Extension",
    "ExtensionType",
    "Forward",
    "Member",
    "Outbound",
    "Rank",
    "RankMode",
    "StaticContact",
    "directory_from_config",
    "static_contacts_from_config",
    "trunk_keys",
]

ExtensionType = Literal["simple", "multiring", "group", "external", "trunk"]
RankMode = Literal["default", "next", "drop"]
ForwardMode = Literal["always", "busy", "unavailable"]

DEFAULT_RING_TIMEOUT_MS = 180_000
REST = "{rest}"  # a DID rule's `to`: the called number's characters after the rule's prefix


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
class Outbound:
    """A trunk's number rules: number sent = prepend + the number as dialed, first `strip` removed."""

    strip: int = 0
    prepend: str = ""

    def apply(self, number: str) -> str:
        return self.prepend + number[self.strip :]


@dataclass(frozen=True)
class DidRule:
    """An inbound rule of a trunk: exact (`number`) or `prefix`; `to` is an extension or REST."""

    to: str
    number: str | None = None
    prefix: str | None = None

    def target(self, called: str) -> str | None:
        """The extension number this rule maps ``called`` to, or None when it does not match."""
        if self.number is not None:
            if called != self.number:
                return None
            return self.to  # `{rest}` after an exact number is the empty string: routes nowhere
        assert self.prefix is not None
        if not called.startswith(self.prefix):
            return None
        return called[len(self.prefix) :] if self.to == REST else self.to

    @property
    def rank(self) -> tuple[int, int]:
        """Longest first; an exact rule before a prefix of the same length."""
        return (len(self.number), 1) if self.number is not None else (len(self.prefix or ""), 0)


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
    ring_timeout_ms: int | None = None  # when this extension is the one dialed; None = the tenant's
    outbound: Outbound | None = None  # trunks only
    fallback: tuple[str, ...] = ()  # trunks only: trunk numbers tried in order when this one is unavailable
    dids: tuple[DidRule, ...] = ()  # trunks only: inbound rules; none = the called number as it is

    @property
    def is_user(self) -> bool:
        return self.type in ("simple", "multiring")

    def dialed(self, number: str) -> str:
        """The number sent out through this trunk for ``number`` as the caller dialed it."""
        return self.outbound.apply(number) if self.outbound is not None else number

    def did_target(self, called: str) -> str | None:
        """The extension an inbound call to ``called`` is for: the longest matching rule's."""
        if not self.dids:
            return called
        for rule in sorted(self.dids, key=lambda r: r.rank, reverse=True):
            target = rule.target(called)
            if target is not None:
                return target
        return None


@dataclass(frozen=True)
class StaticContact:
    """A `contact` URI configured on an endpoint's AOR: a device that needs no registration."""

    uri: str
    # qualify_frequency > 0: Asterisk checks it, and a contact it reports unreachable is offline.
    qualified: bool = False


@dataclass(frozen=True)
class Directory:
    """One tenant's routing data, indexed for the lookups a call needs."""

    tenant: str
    extensions: Mapping[str, Extension]
    endpoint_owner: Mapping[str, str] = field(default_factory=dict)  # endpoint name -> extension number
    trunks: tuple[str, ...] = ()  # trunk numbers, longest first
    static_contacts: Mapping[str, tuple[StaticContact, ...]] = field(default_factory=dict)  # per endpoint
    ring_timeout_ms: int = DEFAULT_RING_TIMEOUT_MS  # the tenant's
    empty: frozenset[str] = frozenset()  # extensions with nothing to ring in the configuration

    @classmethod
    def build(
        cls,
        tenant: str,
        extensions: Mapping[str, Extension],
        *,
        static_contacts: Mapping[str, tuple[StaticContact, ...]] | None = None,
        ring_timeout_ms: int | None = None,
    ) -> Directory:
        owner: dict[str, str] = {}
        for ext in extensions.values():
            for ep in ext.endpoints:
                owner.setdefault(ep, ext.number)
        trunks = tuple(sorted((e.number for e in extensions.values() if e.type == "trunk"), key=len, reverse=True))
        d = cls(
            tenant,
            dict(extensions),
            owner,
            trunks,
            dict(static_contacts or {}),
            ring_timeout_ms if ring_timeout_ms is not None else DEFAULT_RING_TIMEOUT_MS,
        )
        return replace(d, empty=_empty_extensions(d))

    def trunk_for(self, number: str) -> Extension | None:
        """The trunk whose number is the longest prefix of ``number``."""
        for t in self.trunks:
            if number.startswith(t):
                return self.extensions[t]
        return None

    def fallback_chain(self, trunk: Extension) -> list[Extension]:
        """The trunks tried after ``trunk``, in order: each fallback, then its own fallbacks, depth
        first; a trunk is tried once per call (the configuration refuses cycles, this cuts them
        anyway for data that bypassed it), and a fallback that is not a trunk is skipped."""
        seen = {trunk.number}
        out: list[Extension] = []

        def walk(t: Extension) -> None:
            for number in t.fallback:
                nxt = self.extensions.get(number)
                if nxt is None or nxt.type != "trunk" or number in seen:
                    continue
                seen.add(number)
                out.append(nxt)
                walk(nxt)

        walk(trunk)
        return out


def _empty_extensions(d: Directory) -> frozenset[str]:
    """Extensions with nothing to ring (contract section 2, *empty*): the complement of the least
    set that contains every extension with an endpoint of its own and everything that leads to a
    member of the set (an active rank member, a forward target, an external's trunk, a trunk's
    fallback). A number missing from a partial directory counts as not empty."""
    exts = d.extensions

    def leads_to(e: Extension) -> Iterable[str]:
        yield from (m.number for r in e.ranks for m in r.members if m.active)
        if e.forward is not None:
            yield e.forward.to
        if e.type == "external":
            trunk = d.trunk_for(e.number)
            if trunk is not None:
                yield trunk.number
        if e.type == "trunk":
            yield from e.fallback

    # Walked backwards from what rings (linear in the references: the cache builds whole tenants).
    led_by: dict[str, list[str]] = {}
    ringing: set[str] = set()
    for n, e in exts.items():
        for target in leads_to(e):
            if target in exts:
                led_by.setdefault(target, []).append(n)
            else:
                ringing.add(n)
        if e.endpoints and e.type != "group":
            ringing.add(n)
    todo = list(ringing)
    while todo:
        for source in led_by.get(todo.pop(), ()):
            if source not in ringing:
                ringing.add(source)
                todo.append(source)
    return frozenset(exts) - ringing


def _member(raw: Any) -> Member:
    if isinstance(raw, Mapping):
        return Member(str(raw["number"]), bool(raw.get("active", True)))
    return Member(str(raw))


def _optional_int(raw: Any) -> int | None:
    return None if raw is None else int(raw)


def _did(raw: Mapping[str, Any]) -> DidRule:
    number, prefix = raw.get("number"), raw.get("prefix")
    return DidRule(str(raw["to"]), None if number is None else str(number), None if prefix is None else str(prefix))


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
        **trunk_keys(raw),
    )


def trunk_keys(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The `Extension` fields of an extension's trunk keys and ring timeout (contract section 2),
    from its section-2 mapping or from pbx.routing_trunk_keys (the same shape)."""
    out = raw.get("outbound")
    return {
        "ring_timeout_ms": _optional_int(raw.get("ring_timeout_ms")),
        "outbound": Outbound(int(out.get("strip") or 0), str(out.get("prepend") or "")) if out else None,
        "fallback": tuple(str(n) for n in raw.get("fallback") or ()),
        "dids": tuple(_did(r) for r in raw.get("dids") or ()),
    }


def _as_list(raw: Any) -> list[str]:
    if raw is None:
        return []
    return [str(x) for x in raw] if isinstance(raw, list) else [str(raw)]


def static_contacts_from_config(config: Mapping[str, Any]) -> dict[str, tuple[StaticContact, ...]]:
    """Each endpoint's configured AOR contacts, after inheritance rule R.

    Only the two options routing needs are merged, and both merge alike (the last level in lin
    order that defines the key wins: `contact` is a per-level list, `qualify_frequency` a scalar).
    The database implements rule R for Asterisk (sql/004_resolve.sql); this copy of its
    linearization exists because the simulator runs on a scenario's file without a database. A
    loader that already has merged sections passes them as the endpoints' own, with no templates.
    Each value may itself be a comma-separated list, as Asterisk reads it.
    """
    templates: Mapping[str, Any] = config.get("templates") or {}
    endpoints: Mapping[str, Any] = config.get("endpoints") or {}

    def lin(obj: Mapping[str, Any], key: str, visiting: frozenset[str]) -> list[Mapping[str, Any]]:
        out: list[Mapping[str, Any]] = []
        for parent in _as_list(obj.get(key)):
            if parent in visiting or not isinstance(templates.get(parent), Mapping):
                continue  # a cycle or a missing parent: refused by apply, ignored here
            for level in lin(templates[parent], "parents", visiting | {parent}):
                if not any(level is seen for seen in out):
                    out.append(level)
        out.append(obj)
        return out

    result: dict[str, tuple[StaticContact, ...]] = {}
    for name, raw in endpoints.items():
        if not isinstance(raw, Mapping):
            continue
        contacts: list[str] = []
        qualify = 0.0
        for level in lin(raw, "templates", frozenset()):
            aor = level.get("aor") or {}
            if "contact" in aor:
                contacts = [u.strip() for item in _as_list(aor["contact"]) for u in item.split(",") if u.strip()]
            if "qualify_frequency" in aor:
                values = _as_list(aor["qualify_frequency"])
                try:
                    qualify = float(values[-1]) if values else 0.0
                except ValueError:
                    qualify = 0.0
        if contacts:
            result[str(name)] = tuple(StaticContact(uri, qualify > 0) for uri in contacts)
    return result


def directory_from_config(tenant: str, config: Mapping[str, Any]) -> Directory:
    """Build a tenant's directory from its section-2 mapping: `extensions`, `settings`
    (`ring_timeout_ms`), and the `templates`/`endpoints` whose AOR `contact`s are static devices."""
    exts = config.get("extensions") or {}
    settings = config.get("settings") or {}
    return Directory.build(
        tenant,
        {str(n): _extension(str(n), e) for n, e in exts.items()},
        static_contacts=static_contacts_from_config(config),
        ring_timeout_ms=_optional_int(settings.get("ring_timeout_ms")),
    )
