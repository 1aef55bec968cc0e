"""What to send a node for a batch of outbox rows: pure, no I/O.

Every outbox row names a realtime view, an Asterisk id and an operation. Whatever the operation, the
right move for a cached type is to drop that id from the node's memory cache: a changed or deleted
object is then re-read (or found missing) on next use, and a created one was never cached because
Sorcery caches no negative lookups; expiring it anyway covers a delete and re-create coalesced into
one batch. Rows for the same object coalesce into one action.

- endpoint, aor, auth: ``SorceryMemoryCacheExpireObject`` per object, or ``SorceryMemoryCacheExpire``
  of the whole cache when the changed objects are most of what the cache holds (see
  :func:`whole_cache_is_cheaper`).
- identify: a full-backend cache, which refuses per-object expiry; one ``SorceryMemoryCachePopulate``
  re-reads it in one query.
- registrations: not cached; res_pjsip_outbound_registration reads them only when it loads, so one
  reload of that module (not of res_pjsip) per batch applies them.
- an endpoint's outbound auth (``N@D~out``, the one its registration sends): besides the cache expiry,
  ``PJSIPRegister`` for registration ``N@D``. A module reload would not do: it keeps the state of a
  registration whose own row did not change, so the new password would only go out when the registrar
  next challenges a refresh.
- an AOR with static contacts: Asterisk qualifies the contacts of the AORs it knew at start or reload,
  and a cache expiry does not tell its qualifier (res_pjsip/pjsip_options.c learns of AORs only from
  Sorcery observers, which a realtime change never fires). So after the expiry, ``Command: pjsip
  reload qualify aor <id>`` (cli_reload_qualify_aor: re-reads the AOR and starts, re-times or stops
  its OPTIONS) for an AOR created with static contacts and ``qualify_frequency`` > 0, or changed to
  have either (a change may also have turned qualifying off). Not for other AORs: for an AOR the
  qualifier never saw, that command reads every endpoint (sip_options_aor_observer_modified_task).
  A deleted AOR cannot be named to it (the command needs the object): the node keeps qualifying its
  former contacts until its next ``module reload res_pjsip.so`` or restart, which is harmless as
  no endpoint routes to them; nor can an AOR that lost its static contacts and its
  ``qualify_frequency`` in the same change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

__all__ = [
    "CACHE_OF_VIEW",
    "AorQualify",
    "CacheAction",
    "PendingRow",
    "Plan",
    "plan_batch",
    "qualify_reload_needed",
    "whole_cache_is_cheaper",
]

CACHE_OF_VIEW: Mapping[str, str] = {
    "ps_endpoints": "res_pjsip/endpoint",
    "ps_aors": "res_pjsip/aor",
    "ps_auths": "res_pjsip/auth",
    "ps_endpoint_id_ips": "res_pjsip/identify",
}
PER_OBJECT_CACHES = ("res_pjsip/endpoint", "res_pjsip/aor", "res_pjsip/auth")
FULL_CACHES = ("res_pjsip/identify",)
REGISTRATION_MODULE = "res_pjsip_outbound_registration.so"
OUTBOUND_AUTH_SUFFIX = "~out"

# Measured on the dev stack (bench/push.py, expire_to_reread_cost 0.21-0.26): one pipelined ExpireObject
# costs about a quarter of re-reading one object from Postgres, so expiring the whole cache pays off
# once the changed objects are about four fifths of the cached ones.
EXPIRE_TO_REREAD_COST = 0.25


@dataclass(frozen=True)
class PendingRow:
    seq: int
    view: str
    object_id: str
    op: str


@dataclass(frozen=True)
class AorQualify:
    """What an AOR's qualifying depends on, as its row reads now."""

    qualify_frequency: int
    static_contacts: bool


def qualify_reload_needed(ops: set[str], now: AorQualify | None) -> bool:
    """Whether the node's qualifier must re-read an AOR that had the outbox ``ops`` (see module doc)."""
    if now is None:
        return False
    if now.static_contacts and now.qualify_frequency > 0:
        return True
    return "changed" in ops and (now.static_contacts or now.qualify_frequency > 0)


@dataclass(frozen=True)
class CacheAction:
    """One AMI action and the outbox rows it delivers."""

    fields: tuple[tuple[str, str], ...]
    seqs: tuple[int, ...]
    objects: int  # distinct objects this action makes effective

    @property
    def as_dict(self) -> dict[str, str]:
        return dict(self.fields)

    @property
    def name(self) -> str:
        return self.as_dict["Action"]


@dataclass
class Plan:
    actions: list[CacheAction] = field(default_factory=list)
    unknown_views: set[str] = field(default_factory=set)

    @property
    def seqs(self) -> list[int]:
        return [s for a in self.actions for s in a.seqs]


def whole_cache_is_cheaper(changed: int, cached: int, cost_ratio: float = EXPIRE_TO_REREAD_COST) -> bool:
    """Per-object expiry costs ``changed`` AMI actions; a whole expiry costs one action plus a
    re-read of every cached object that did NOT change. Both re-read the changed ones."""
    return cached - changed <= changed * cost_ratio


def plan_batch(
    rows: Iterable[PendingRow],
    cached_count: Callable[[str], int | None] | None = None,
    *,
    whole_cache_min: int = 200,
    aors: Mapping[str, AorQualify] | None = None,
) -> Plan:
    """Coalesce ``rows`` into actions. ``cached_count(cache)`` tells how many objects a cache holds
    (None: unknown); it is only asked when at least ``whole_cache_min`` objects of that cache changed,
    so small batches never cost an extra round trip. ``aors`` holds the current row of each changed
    AOR that still exists."""
    per_cache: dict[str, dict[str, list[int]]] = {}
    full: dict[str, list[int]] = {}
    registrations: list[int] = []
    reregister: dict[str, None] = {}  # ordered set of registration ids
    aor_ops: dict[str, set[str]] = {}
    plan = Plan()
    for row in rows:
        if row.view == "ps_aors":
            aor_ops.setdefault(row.object_id, set()).add(row.op)
        if row.view == "ps_registrations":
            registrations.append(row.seq)
            continue
        if row.view == "ps_auths" and row.object_id.endswith(OUTBOUND_AUTH_SUFFIX) and row.op != "deleted":
            reregister[row.object_id.removesuffix(OUTBOUND_AUTH_SUFFIX)] = None
        cache = CACHE_OF_VIEW.get(row.view)
        if cache is None:
            plan.unknown_views.add(row.view)
            continue
        if cache in FULL_CACHES:
            full.setdefault(cache, []).append(row.seq)
        else:
            per_cache.setdefault(cache, {}).setdefault(row.object_id, []).append(row.seq)

    for cache in PER_OBJECT_CACHES:
        objects = per_cache.get(cache)
        if not objects:
            continue
        cached = cached_count(cache) if cached_count is not None and len(objects) >= whole_cache_min else None
        if cached is not None and whole_cache_is_cheaper(len(objects), cached):
            every = tuple(s for ss in objects.values() for s in ss)
            plan.actions.append(
                CacheAction((("Action", "SorceryMemoryCacheExpire"), ("Cache", cache)), every, len(objects))
            )
            continue
        for object_id, seqs_of in objects.items():
            fields = (("Action", "SorceryMemoryCacheExpireObject"), ("Cache", cache), ("Object", object_id))
            plan.actions.append(CacheAction(fields, tuple(seqs_of), 1))
    for cache, of_cache in full.items():
        populate = (("Action", "SorceryMemoryCachePopulate"), ("Cache", cache))
        plan.actions.append(CacheAction(populate, tuple(of_cache), 1))
    if registrations:
        reload = (("Action", "Command"), ("Command", f"module reload {REGISTRATION_MODULE}"))
        plan.actions.append(CacheAction(reload, tuple(registrations), 1))
    # After the auth expiry above, so the REGISTER it sends reads the new credentials.
    for registration in reregister:
        plan.actions.append(CacheAction((("Action", "PJSIPRegister"), ("Registration", registration)), (), 1))
    # After the AOR expiry above, so the qualifier reads the new row.
    for aor, ops in aor_ops.items():
        if qualify_reload_needed(ops, (aors or {}).get(aor)):
            command = (("Action", "Command"), ("Command", f"pjsip reload qualify aor {aor}"))
            plan.actions.append(CacheAction(command, (), 1))
    return plan
