"""The one decoder from routing rows to `routing.model`, and the columns every reader selects.

Both readers (routing_store.loader: a whole tenant, or one call's part of it) select these column
lists and hand the rows here, as asyncpg records or as the tuples of an ``array(SELECT ROW(...))``:
rows are read by position. The decoder alone decides the order of everything (endpoints, ranks,
members, contacts by their ordinal or id; extensions by number, shortest first), so two readers
cannot disagree on it, e.g. on which extension owns an endpoint listed twice (`Directory.build`
gives it to the first).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from operator import itemgetter
from typing import Any

from routing.model import Directory, Extension, Forward, Member, Rank, static_contacts_from_config, trunk_keys

__all__ = [
    "ENDPOINT_COLUMNS",
    "EXTENSION_COLUMNS",
    "MEMBER_COLUMNS",
    "RANK_COLUMNS",
    "SETTINGS",
    "STATIC_COLUMNS",
    "decode_contacts",
    "decode_directory",
]

Row = Sequence[Any]

# pbx.extensions columns that are `Extension` fields of the same name, read as they are. A new
# column of that kind is one more name here (and its field in routing.model.Extension).
_PLAIN = ("type", "short_name", "call_waiting", "dialout", "outgoing_number", "outgoing_name", "ringback", "language")
# Selected from pbx.extensions (alias e); decoded by `_extension`, in this order.
EXTENSION_COLUMNS = ", ".join(
    (
        "e.number",
        "coalesce(e.name, '')",
        "e.forward_mode",
        "e.forward_to",
        "coalesce(e.forward_delay_ms, 0)",
        *(f"e.{c}" for c in _PLAIN),
        # Trunk keys and the ring timeout, in the shape of the configuration (routing.model.trunk_keys);
        # asked only where there can be any, so a whole tenant's load stays one pass.
        "CASE WHEN e.type = 'trunk' OR e.ring_timeout_ms IS NOT NULL"
        " THEN pbx.routing_trunk_keys(e.tenant_id, e.number) END",
    )
)
# pbx.extension_endpoints (alias x) joined to the endpoint's pbx.objects row (alias o).
ENDPOINT_COLUMNS = "x.number, x.ordinal, o.name"
RANK_COLUMNS = "r.number, r.ordinal, r.mode, r.delay_ms"  # pbx.ranks (alias r)
MEMBER_COLUMNS = "m.number, m.rank_ordinal, m.ordinal, m.member, m.active"  # pbx.rank_members (alias m)
# The rows of pbx.routing_static_contacts (alias s): (endpoint name, its merged `aor` section).
STATIC_COLUMNS = "s.endpoint, s.config"
# The tenant's settings object, for a tenant id in `ten.id`.
SETTINGS = "pbx.routing_settings(ten.id)"


def _json(raw: Any) -> Any:
    # asyncpg hands jsonb over as its text unless a codec is set on the connection.
    return json.loads(raw) if isinstance(raw, str) else raw


def _number_order(row: Row) -> tuple[int, str]:
    # Shortest first, then bytewise (numbers are ASCII: extension_number_pattern): the order jsonb
    # gives its keys, which the first loader followed.
    number: str = row[0]
    return len(number), number


def _extension(row: Row, endpoints: tuple[str, ...], ranks: tuple[Rank, ...]) -> Extension:
    return Extension(
        number=row[0],
        name=row[1],
        endpoints=endpoints,
        forward=Forward(row[2], row[3], row[4]) if row[2] is not None else None,
        ranks=ranks,
        **dict(zip(_PLAIN, row[5:-1], strict=True)),
        **trunk_keys(_json(row[-1]) or {}),
    )


# Group keys then the ordinal: rows sorted by these are in the model's order.
_BY_ORDINAL = itemgetter(0, 1)
_MEMBER_ORDER = itemgetter(0, 1, 2)


def decode_directory(
    tenant: str,
    extensions: Iterable[Row],
    endpoints: Iterable[Row],
    ranks: Iterable[Row],
    members: Iterable[Row],
    static: Iterable[Row] = (),
    settings: Any = None,
) -> Directory:
    """Rows of the column lists above (any order, any subset of a tenant's extensions; `static`:
    STATIC_COLUMNS rows of at least their endpoints), and the value of SETTINGS."""
    eps: dict[str, list[str]] = {}
    for number, _, name in sorted(endpoints, key=_BY_ORDINAL):
        eps.setdefault(number, []).append(name)
    mems: dict[tuple[str, int], list[Member]] = {}
    for number, rank_ordinal, _, member, active in sorted(members, key=_MEMBER_ORDER):
        mems.setdefault((number, rank_ordinal), []).append(Member(member, active))
    rks: dict[str, list[Rank]] = {}
    for number, ordinal, mode, delay_ms in sorted(ranks, key=_BY_ORDINAL):
        rks.setdefault(number, []).append(Rank(mode, delay_ms, tuple(mems.get((number, ordinal), ()))))
    out: dict[str, Extension] = {}
    for row in sorted(extensions, key=_number_order):
        n = row[0]
        out[n] = _extension(row, tuple(eps.get(n, ())), tuple(rks.get(n, ())))
    # The model's own converter reads the merged AOR sections, as the simulator reads a file's.
    contacts = static_contacts_from_config({"endpoints": {name: _json(config) for name, config in static}})
    ring_timeout_ms = (_json(settings) or {}).get("ring_timeout_ms")
    return Directory.build(tenant, out, static_contacts=contacts, ring_timeout_ms=ring_timeout_ms)


_CONTACT_ID = itemgetter(1)


def decode_contacts(rows: Iterable[Row], domain: str) -> tuple[dict[str, list[str]], dict[str, str]]:
    """(endpoint id ``name@domain``, contact id, URI) rows, a None id for none -> (endpoint name ->
    contact ids by id, contact id -> URI)."""
    cut = len(domain) + 1
    contacts: dict[str, list[str]] = {}
    uris: dict[str, str] = {}
    for endpoint, contact, uri in sorted((r for r in rows if r[1] is not None), key=_CONTACT_ID):
        contacts.setdefault(endpoint[:-cut], []).append(contact)
        uris[contact] = uri
    return contacts, uris
