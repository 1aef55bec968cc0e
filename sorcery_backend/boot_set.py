"""The objects a node must know from boot on, kept in the node's astdb.

A node starts without reading every endpoint and AOR (`allow_unqualified_fetch=no` on ps_endpoints
and ps_aors in asterisk_conf/sorcery.conf): res_pjsip read all of them three times at boot and
cached none, 23 s against ~8 s for the same 10k endpoints in pjsip.conf (bench/boot.py). Only the
AORs with static contacts (trunks) must be known from the start, so that Asterisk qualifies their
contacts and derives their endpoints' state, as it did when it read everything. Those "all
objects" reads fall through to a second Sorcery wizard, ``astdb,pbx_boot``, and this module keeps
its content (family ``pbx_boot/aor`` and ``pbx_boot/endpoint``) equal to the database's: the
AORs with static contacts, and the endpoints that use them (only their ``aors``: everything else
is read from Postgres by id, the first wizard, whenever the endpoint is used).

The pusher syncs a node's copy on every AMI connection and before it delivers a batch whose AORs
or endpoints were in the copy or are trunks now (:func:`may_change`), so a trunk removed from the
database is gone from the copy before its cache entry is expired (a lookup by id of an id Postgres
no longer has reaches this wizard).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import asyncpg

from sorcery_backend.ami import AmiError, AmiSession

__all__ = ["FAMILY", "BootObject", "diff", "may_change", "parse_tree", "sync_boot_set", "wanted"]

FAMILY = "pbx_boot"
BootObject = tuple[str, str]  # (Sorcery type, id)

# The AORs with a static contact and the endpoints that list one of them. `contact` holds several
# URIs separated by `;` (realtime's multi-value form, `^3B`/`^5E` escaped); the AOR option takes
# them comma-separated in one value, as a JSON object set can only hold one value per key.
_WANTED = """
SELECT 'aor' AS type, a.id, jsonb_strip_nulls(to_jsonb(a) - 'id') AS fields
FROM pbx.rt_ps_aors a WHERE a.contact IS NOT NULL
UNION ALL
SELECT 'endpoint', e.id, jsonb_build_object('aors', e.aors)
FROM pbx.rt_ps_endpoints e
WHERE EXISTS (
    SELECT 1 FROM pbx.rt_ps_aors a
    WHERE a.contact IS NOT NULL AND a.id = ANY (string_to_array(replace(e.aors, ' ', ''), ','))
)
"""


def _decode(value: str) -> str:
    return value.replace("^3B", ";").replace("^5E", "^")


async def wanted(conn: asyncpg.Connection) -> dict[BootObject, str]:
    """(type, id) -> the JSON object set the node's astdb should hold."""
    out = {}
    for r in await conn.fetch(_WANTED):
        fields = json.loads(r["fields"])
        if "contact" in fields:
            fields["contact"] = ",".join(_decode(u) for u in fields["contact"].split(";") if u)
        out[(r["type"], r["id"])] = json.dumps({k: _decode(str(v)) for k, v in sorted(fields.items())})
    return out


def parse_tree(messages: Iterable[Mapping[str, Any]]) -> dict[BootObject, str]:
    """The objects of a ``DBGetTree`` reply for the family."""
    prefix = f"/{FAMILY}/"
    out = {}
    for msg in messages:
        key = str(msg.get("Key", ""))
        if msg.get("Event") != "DBGetTreeResponse" or not key.startswith(prefix):
            continue
        kind, _, object_id = key[len(prefix) :].partition("/")
        if object_id:
            out[(kind, object_id)] = str(msg.get("Val", ""))
    return out


def diff(want: Mapping[BootObject, str], have: Mapping[BootObject, str]) -> tuple[list[BootObject], list[BootObject]]:
    """(objects to put, objects to delete): deletions first matter, see the module doc."""
    put = sorted(k for k, v in want.items() if have.get(k) != v)
    delete = sorted(k for k in have if k not in want)
    return put, delete


async def node_boot_set(session: AmiSession) -> dict[BootObject, str]:
    try:
        return parse_tree(await session.send_list({"Action": "DBGetTree", "Family": FAMILY}, timeout=30))
    except AmiError:  # Asterisk answers an empty family with an error
        return {}


# Whether changed AORs or endpoints are (now) trunks: one probe by id, not the whole set.
_NOW_TRUNKS = """
SELECT EXISTS (SELECT 1 FROM pbx.rt_ps_aors WHERE id = ANY($1::text[]) AND contact IS NOT NULL)
    OR EXISTS (
        SELECT 1 FROM pbx.rt_ps_endpoints e
        WHERE e.id = ANY($2::text[]) AND EXISTS (
            SELECT 1 FROM pbx.rt_ps_aors a
            WHERE a.contact IS NOT NULL AND a.id = ANY (string_to_array(replace(e.aors, ' ', ''), ','))
        )
    )
"""


async def may_change(
    conn: asyncpg.Connection, held: set[BootObject], aor_ids: list[str], endpoint_ids: list[str]
) -> bool:
    """Whether changes to these AORs and endpoints can change the boot set, which held ``held`` at
    the last sync: one of them was in it, or is a trunk now. A phone's edit (nearly every edit)
    then costs one probe instead of the whole set read and the node's copy fetched over AMI."""
    if any(("aor", i) in held for i in aor_ids) or any(("endpoint", i) in held for i in endpoint_ids):
        return True
    return bool(await conn.fetchval(_NOW_TRUNKS, aor_ids, endpoint_ids))


async def sync_boot_set(conn: asyncpg.Connection, session: AmiSession) -> tuple[int, int, set[BootObject]]:
    """Make the node's copy equal the database's; returns (put, deleted, what it holds now)."""
    want = await wanted(conn)
    put, delete = diff(want, await node_boot_set(session))
    for kind, object_id in delete:
        await session.send({"Action": "DBDel", "Family": f"{FAMILY}/{kind}", "Key": object_id})
    for kind, object_id in put:
        await session.send(
            {"Action": "DBPut", "Family": f"{FAMILY}/{kind}", "Key": object_id, "Val": want[(kind, object_id)]}
        )
    return len(put), len(delete), set(want)
