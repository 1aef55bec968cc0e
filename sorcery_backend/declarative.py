"""The declarative file (contract section 2): loading, typing and reference checks.

Everything here is pure: the database re-checks every rule, but catching the common mistakes here
gives one-line messages that name the object in the file's own terms.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sorcery_backend.yaml_input import ConfigError, decode_utf8, load_yaml, shorten

__all__ = [
    "OPTION_SECTIONS",
    "Config",
    "ConfigError",
    "DidRule",
    "Extension",
    "Forward",
    "Outbound",
    "PjsipObject",
    "Rank",
    "RankMember",
    "Tenant",
    "TenantSettings",
    "load_config",
    "load_yaml",
    "parse_config",
]

OPTION_SECTIONS = ("endpoint", "aor", "auth", "identify", "registration", "outbound_auth")

TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
OBJECT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,62}$")
EXTENSION_NUMBER = re.compile(r"^[0-9A-Za-z*#+]{1,40}$")


# ---------------------------------------------------------------------------------------------
# Models

OptionValue = list[str]

# The database keeps delays as integer milliseconds.
MAX_DELAY_MS = 2_147_483_647


def _option_values(raw: Any, where: str) -> OptionValue:
    """A YAML option value as the list of strings the database stores."""
    items = raw if isinstance(raw, list) else [raw]
    out = []
    for item in items:
        if isinstance(item, bool):
            out.append("yes" if item else "no")
        elif isinstance(item, (int, float, str)):
            out.append(str(item))
        else:
            # The value is not quoted: it may be a password.
            raise ConfigError(
                f"{where}: a value is a {type(item).__name__}, not a string or number "
                "(rule: option values are scalars or lists of scalars)"
            )
    return out


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PjsipObject(_Strict):
    """A template (``parents``) or an endpoint (``templates``); both carry option sections."""

    parents: list[str] = Field(default_factory=list)
    templates: list[str] = Field(default_factory=list)
    transport: str | None = None
    endpoint: dict[str, OptionValue] = Field(default_factory=dict)
    aor: dict[str, OptionValue] = Field(default_factory=dict)
    auth: dict[str, OptionValue] = Field(default_factory=dict)
    identify: dict[str, OptionValue] = Field(default_factory=dict)
    registration: dict[str, OptionValue] = Field(default_factory=dict)
    outbound_auth: dict[str, OptionValue] = Field(default_factory=dict)

    def sections(self) -> dict[str, dict[str, OptionValue]]:
        return {s: getattr(self, s) for s in OPTION_SECTIONS if getattr(self, s)}


class RankMember(_Strict):
    number: str
    active: bool = True


class Rank(_Strict):
    mode: Literal["default", "next", "drop"] = "default"
    delay_ms: int = Field(default=0, ge=0, le=MAX_DELAY_MS)
    members: list[RankMember] = Field(default_factory=list)

    @field_validator("members", mode="before")
    @classmethod
    def _members(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"number": str(m)} if isinstance(m, (str, int)) else m for m in v]
        return v


class Forward(_Strict):
    mode: Literal["always", "busy", "unavailable"]
    to: str
    delay_ms: int = Field(default=0, ge=0, le=MAX_DELAY_MS)


MAX_RING_TIMEOUT_MS = 86_400_000  # a day
RingTimeoutMs = Annotated[int, Field(gt=0, le=MAX_RING_TIMEOUT_MS)]
# What a SIP request-URI user part carries unescaped (RFC 3261: unreserved / user-unreserved).
URI_USER_UNESCAPED = re.compile(r"^[A-Za-z0-9_.!~*'()&=+$,;?/-]{0,40}$")
DID_REST = "{rest}"


class Outbound(_Strict):
    strip: int = Field(default=0, ge=0)
    prepend: str = ""

    @field_validator("prepend")
    @classmethod
    def _uri_user(cls, v: str) -> str:
        if not URI_USER_UNESCAPED.match(v):
            raise ValueError(
                f"{v!r} has characters a SIP request-URI user part cannot carry unescaped, or is longer than 40 "
                "(rule: prepend is at most 40 of A-Z a-z 0-9 _ . ! ~ * ' ( ) & = + $ , ; ? / -)"
            )
        return v


class DidRule(_Strict):
    number: str | None = None
    prefix: str | None = None
    to: str

    @model_validator(mode="after")
    def _one_match(self) -> DidRule:
        if (self.number is None) == (self.prefix is None):
            raise ValueError("a DID rule has exactly one of number and prefix")
        match = self.number if self.number is not None else self.prefix
        if not EXTENSION_NUMBER.match(match or ""):
            raise ValueError(f"DID {match!r} must match [0-9A-Za-z*#+]{{1,40}} (rule: DID numbers)")
        if self.to == DID_REST:
            if self.prefix is None:
                raise ValueError("'{rest}' needs a prefix rule (rule: {rest} is what follows a prefix)")
        elif not EXTENSION_NUMBER.match(self.to):
            raise ValueError(f"to {self.to!r} is neither an extension number nor '{{rest}}' (rule: DID targets)")
        return self

    @property
    def key(self) -> tuple[str, str]:
        return ("number", self.number) if self.number is not None else ("prefix", self.prefix or "")


class Extension(_Strict):
    type: Literal["simple", "multiring", "group", "external", "trunk"]
    name: str | None = None
    short_name: str | None = None
    endpoints: list[str] = Field(default_factory=list)
    call_waiting: bool = True
    dialout: bool = False
    outgoing_number: str | None = None
    outgoing_name: str | None = None
    ringback: str | None = None
    language: str | None = None
    forward: Forward | None = None
    ranks: list[Rank] = Field(default_factory=list)
    ring_timeout_ms: RingTimeoutMs | None = None
    outbound: Outbound | None = None
    fallback: list[str] = Field(default_factory=list)
    dids: list[DidRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _delay_only_always(self) -> Extension:
        if self.forward and self.forward.delay_ms and self.forward.mode != "always":
            raise ValueError("forward.delay_ms is only valid with mode always")
        return self

    @model_validator(mode="after")
    def _trunk_keys_only_on_trunks(self) -> Extension:
        if self.type != "trunk":
            for key in ("outbound", "fallback", "dids"):
                if getattr(self, key):
                    raise ValueError(f"{key} is only valid on a trunk extension (rule: trunk keys)")
        return self


class TenantSettings(_Strict):
    ring_timeout_ms: RingTimeoutMs | None = None


class Tenant(_Strict):
    domain: str
    templates: dict[str, PjsipObject] = Field(default_factory=dict)
    endpoints: dict[str, PjsipObject] = Field(default_factory=dict)
    extensions: dict[str, Extension] = Field(default_factory=dict)
    settings: TenantSettings | None = None


class Config(_Strict):
    tenants: dict[str, Tenant | None] = Field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Normalization (YAML scalars to strings) and checks that need the whole file


def _stringify_keys(d: Any, where: str) -> dict[str, Any]:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    return {str(k): v for k, v in d.items()}


def _scalar_strings(d: dict[str, Any], keys: tuple[str, ...]) -> None:
    for k in keys:
        if isinstance(d.get(k), (int, float)) and not isinstance(d.get(k), bool):
            d[k] = str(d[k])


def _normalize_object(raw: Any, where: str) -> dict[str, Any]:
    obj = _stringify_keys(raw, where)
    for section in OPTION_SECTIONS:
        if section in obj:
            opts = _stringify_keys(obj[section], f"{where}.{section}")
            obj[section] = {k: _option_values(v, f"{where}.{section}.{k}") for k, v in opts.items()}
    for key in ("parents", "templates"):
        if isinstance(obj.get(key), list):
            obj[key] = [str(x) for x in obj[key]]
    return obj


def _normalize_extension(raw: Any, where: str) -> dict[str, Any]:
    ext = _stringify_keys(raw, where)
    _scalar_strings(ext, ("name", "short_name", "outgoing_number", "outgoing_name", "ringback", "language"))
    if isinstance(ext.get("endpoints"), list):
        ext["endpoints"] = [str(x) for x in ext["endpoints"]]
    if isinstance(ext.get("forward"), dict):
        fwd = dict(ext["forward"])
        _scalar_strings(fwd, ("to",))
        ext["forward"] = fwd
    if isinstance(ext.get("outbound"), dict):
        out = dict(ext["outbound"])
        _scalar_strings(out, ("prepend",))
        ext["outbound"] = out
    if isinstance(ext.get("fallback"), list):
        ext["fallback"] = [
            str(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else x for x in ext["fallback"]
        ]
    if isinstance(ext.get("dids"), list):
        ext["dids"] = [_did_strings(d) if isinstance(d, dict) else d for d in ext["dids"]]
    if isinstance(ext.get("ranks"), list):
        ranks = []
        for rank in ext["ranks"]:
            if isinstance(rank, dict) and isinstance(rank.get("members"), list):
                rank = dict(rank)
                rank["members"] = [_scalar_number(m) if isinstance(m, dict) else str(m) for m in rank["members"]]
            ranks.append(rank)
        ext["ranks"] = ranks
    return ext


def _did_strings(d: dict[str, Any]) -> dict[str, Any]:
    d = dict(d)
    _scalar_strings(d, ("number", "prefix", "to"))
    return d


def _scalar_number(m: dict[str, Any]) -> dict[str, Any]:
    m = dict(m)
    _scalar_strings(m, ("number",))
    return m


def _normalize(doc: Any) -> dict[str, Any]:
    top = _stringify_keys(doc, "file")
    tenants = _stringify_keys(top.get("tenants"), "tenants")
    out_tenants: dict[str, Any] = {}
    for tname, traw in tenants.items():
        if traw is None:
            out_tenants[tname] = None
            continue
        t = _stringify_keys(traw, f"tenant {tname}")
        for group in ("templates", "endpoints"):
            if group in t:
                items = _stringify_keys(t[group], f"tenant {tname} {group}")
                t[group] = {n: _normalize_object(o, f"{group[:-1]} {tname}/{n}") for n, o in items.items()}
        if "extensions" in t:
            items = _stringify_keys(t["extensions"], f"tenant {tname} extensions")
            t["extensions"] = {n: _normalize_extension(e, f"extension {tname}/{n}") for n, e in items.items()}
        out_tenants[tname] = t
    top["tenants"] = out_tenants
    return top


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = [str(x) if len(str(x)) <= 64 else shorten(x) for x in first["loc"]]
    where = ".".join(loc) if loc else "file"
    if len(loc) >= 4 and loc[0] == "tenants" and loc[2] in ("templates", "endpoints", "extensions"):
        kind = {"templates": "template", "endpoints": "endpoint", "extensions": "extension"}[loc[2]]
        field = ".".join(loc[4:]) or "(itself)"
        where = f"{kind} {loc[1]}/{loc[3]}: {field}"
    elif len(loc) >= 2 and loc[0] == "tenants":
        where = f"tenant {loc[1]}: {'.'.join(loc[2:]) or '(itself)'}"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key (rule: only the keys of contract section 2 are accepted)"
    return f"{where}: {msg}"


def parse_config(doc: Any) -> Config:
    """Type the loaded YAML and check the rules that need the whole file."""
    if doc is None:
        doc = {}
    try:
        config = Config.model_validate(_normalize(doc))
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    _check_names_and_references(config)
    return config


def load_config(path: Path) -> Config:
    """A declarative file as the operator wrote it: every scalar stays the text written
    (``0123``, ``no``, ``1:30``); the models and the database type and check it."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    return parse_config(load_yaml(decode_utf8(data, str(path)), str(path), schema="text"))


def _check_names_and_references(config: Config) -> None:
    present = {n: t for n, t in config.tenants.items() if t is not None}
    domains: dict[str, str] = {}
    for tname, tenant in config.tenants.items():
        if not TENANT_NAME.match(tname):
            raise ConfigError(f"tenant {shorten(tname)!r}: name must match [a-z0-9][a-z0-9-]* (rule: tenant names)")
        if tenant is None:
            continue
        # SIP compares host names case-insensitively: PB.EXAMPLE is pb.example.
        domain = tenant.domain.lower()
        if domain in domains:
            raise ConfigError(
                f"tenant {tname}: domain {shorten(tenant.domain)} is also tenant {domains[domain]}'s "
                "(rule: SIP domains are unique, compared case-insensitively)"
            )
        domains[domain] = tname
        _check_tenant(tname, tenant, present)
        _check_trunks(tname, tenant)


def _elsewhere(name: str, group: str, tname: str, present: dict[str, Tenant]) -> str:
    owners = [o for o, t in present.items() if o != tname and name in getattr(t, group)]
    return f" (it exists in tenant {owners[0]}: references across tenants are refused)" if owners else ""


def _check_tenant(tname: str, tenant: Tenant, present: dict[str, Tenant]) -> None:
    for group, kind in (("templates", "template"), ("endpoints", "endpoint")):
        for name, obj in getattr(tenant, group).items():
            label = f"{kind} {tname}/{name}"
            if not OBJECT_NAME.match(name):
                raise ConfigError(
                    f"{kind} {tname}/{shorten(name)}: name must match [A-Za-z0-9_][A-Za-z0-9_.+-]* (rule: object names)"
                )
            refs = obj.parents if kind == "template" else obj.templates
            wrong = obj.templates if kind == "template" else obj.parents
            if wrong:
                key = "templates" if kind == "template" else "parents"
                raise ConfigError(
                    f"{label}: '{key}' is not a {kind} key (rule: templates have parents, endpoints have templates)"
                )
            if len(set(refs)) != len(refs):
                raise ConfigError(f"{label}: a parent template is listed twice (rule: parents are distinct)")
            for ref in refs:
                if ref not in tenant.templates:
                    raise ConfigError(
                        f"{label}: unknown template {shorten(ref)!r}"
                        f"{_elsewhere(ref, 'templates', tname, present)} (rule: parents must be "
                        "templates of the same tenant)"
                    )
    for number, ext in tenant.extensions.items():
        label = f"extension {tname}/{number}"
        if not EXTENSION_NUMBER.match(number):
            raise ConfigError(
                f"extension {tname}/{shorten(number)}: number must match [0-9A-Za-z*#+]{{1,40}} "
                "(rule: extension numbers)"
            )
        for ep in ext.endpoints:
            if ep not in tenant.endpoints:
                raise ConfigError(
                    f"{label}: unknown endpoint {shorten(ep)!r}{_elsewhere(ep, 'endpoints', tname, present)} "
                    "(rule: extensions use endpoints of the same tenant)"
                )
        if len(set(ext.endpoints)) != len(ext.endpoints):
            raise ConfigError(f"{label}: an endpoint is listed twice (rule: endpoints are distinct)")
        targets = [m.number for r in ext.ranks for m in r.members]
        if ext.forward:
            targets.append(ext.forward.to)
        for target in targets:
            if target not in tenant.extensions:
                raise ConfigError(
                    f"{label}: unknown extension {shorten(target)!r}"
                    f"{_elsewhere(target, 'extensions', tname, present)} (rule: members and "
                    "forward targets are extensions of the same tenant)"
                )
        for i, rank in enumerate(ext.ranks):
            numbers = [m.number for m in rank.members]
            if len(set(numbers)) != len(numbers):
                raise ConfigError(f"{label}: rank {i} lists a member twice (rule: members are distinct)")


def _check_trunks(tname: str, tenant: Tenant) -> None:
    """Fallbacks and DID rules (contract section 2, "Trunks and numbers")."""
    claimed: dict[tuple[str, str], str] = {}
    for number, ext in tenant.extensions.items():
        label = f"extension {tname}/{number}"
        if len(set(ext.fallback)) != len(ext.fallback):
            raise ConfigError(f"{label}: a fallback is listed twice (rule: fallbacks are distinct)")
        for fb in ext.fallback:
            target = tenant.extensions.get(fb)
            if target is None or target.type != "trunk":
                what = "unknown extension" if target is None else f"a {target.type} extension"
                raise ConfigError(f"{label}: fallback {fb!r} is {what} (rule: fallbacks are trunk extensions)")
        for rule in ext.dids:
            kind, match = rule.key
            if rule.key in claimed:
                raise ConfigError(
                    f"{label}: DID {kind} {match} is also claimed by extension {tname}/{claimed[rule.key]} "
                    "(rule: a DID rule is claimed once in a tenant)"
                )
            claimed[rule.key] = number
            if rule.to != DID_REST and rule.to not in tenant.extensions:
                raise ConfigError(
                    f"{label}: DID {kind} {match} maps to unknown extension {rule.to!r} "
                    "(rule: DID targets are extensions of the same tenant)"
                )
    for number in tenant.extensions:
        path = _fallback_cycle(tenant, number, [number])
        if path:
            raise ConfigError(
                f"extension {tname}/{number}: fallback cycle {' -> '.join(path)} "
                "(rule: fallback trunks cannot form a cycle)"
            )


def _fallback_cycle(tenant: Tenant, start: str, path: list[str]) -> list[str] | None:
    for fb in tenant.extensions[path[-1]].fallback:
        if fb == start:
            return [*path, fb]
        if fb not in path:
            found = _fallback_cycle(tenant, start, [*path, fb])
            if found:
                return found
    return None
