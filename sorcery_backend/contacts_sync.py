"""Contacts the nodes hold, written back into ps_contacts when Postgres lost or missed them.

Routing reads registered devices from ``public.ps_contacts``; each node also keeps the contacts it
took in its astdb (``contact/cache = astdb,registrar`` in asterisk_conf/sorcery.conf). The table is
unlogged (sql/011), so a Postgres crash empties it, and a row can also go missing by hand. While
Postgres is down, the node goes on taking REGISTERs, refreshes and removals in its astdb only (the
``memory_cache`` contact wizard of sorcery.conf makes Sorcery accept them), so its astdb is the
journal of what Postgres missed. Asterisk itself re-creates a missing row only at the contact's next
refresh, up to one registration interval later.

This service reads each node's astdb contacts over AMI (``DBGetTree`` of ``registrar/contact``:
exactly the node's cache, as the JSON object set Asterisk itself writes to realtime) and upserts the
rows Postgres lacks or holds older, one transaction per node; then it removes the rows no node holds
any more (a removal Postgres missed). It runs when the database connection comes (back), when a
node's AMI session (re)connects, and every ``interval_s``.

Why not ``PJSIPShowContacts``: when a node's astdb holds no contact, Sorcery falls through to the
realtime backend and the action lists Postgres' rows, every node's: it cannot tell what the node
itself holds.

Rules (several nodes share the table):
- a contact whose expiration has passed is never written (Asterisk's own sweep deletes it);
- an existing row is overwritten only by a copy that expires later (a later refresh is newer), and
  never while another node holds it: its reg_server is another node's and its expiry is ahead, so
  that node took the phone's latest REGISTER (the phone moved nodes) and this copy is stale even
  when it was registered for longer. The rule is sql/024's ``pbx.contact_held_elsewhere``, the
  one the nodes' own deletes follow;
- of two nodes' copies of one contact (a phone that moved nodes keeps its contact id), only the one
  that expires later is written: the other node's is stale until its own expiry;
- a missing row is not re-created when Postgres holds another contact of the same AOR, not held by
  this node, that expires later: another node superseded it (``remove_existing``) and this node's
  astdb copy is stale until its own expiry;
- a row is deleted only when, with every node answering, no node held it both before Postgres was
  read and after (Asterisk writes a contact to Postgres before its astdb, and removes it from
  Postgres first: a binding in the making is held by the second look), it has not expired (the
  sweep's), and it still has the expiry seen (a refresh since then wins). That is an unregister,
  an expiry or a ``remove_existing`` replacement that happened while Postgres was down;
- a written row that its node no longer holds when looked at again is deleted the same way: the
  phone unregistered between the two reads, and the write must not bring it back.
Rows without an expiry (made by hand) are never deleted.

It also evicts a node's stale copies (sql/028 says why they hide the AOR's real rows from that node):
the one sql/028 names in a notification, at once, and in each comparison the copies the rules above
find superseded (``plan_evictions``: a notification missed while this service or the node was away).
An eviction is an AMI ``DBDel`` of the copy: the node's lookups then read Postgres.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from prometheus_client import Counter

from pbx_base.settings import DEFAULTS, get_settings
from sorcery_backend.ami import AmiDisconnected, AmiError, AmiSession, AmiUnreachable
from sorcery_backend.nodes import NODES_CHANNEL, Node, list_nodes

__all__ = [
    "COLUMNS",
    "INTERVAL_S",
    "Contact",
    "ContactSync",
    "StoredContact",
    "node_contacts",
    "parse_tree",
    "plan_deletes",
    "plan_evictions",
    "plan_writes",
    "realtime_decode",
    "realtime_encode",
    "run_contact_sync",
    "write_contacts",
]

log = logging.getLogger("pbx.contacts")

INTERVAL_S = DEFAULTS.contacts_sync_interval
_FAMILY = "registrar/contact"  # res_sorcery_astdb's family for `astdb,registrar`, type contact
# Asterisk's ps_contacts columns (its alembic head; sql/006 creates the table with exactly these).
COLUMNS = (
    "id",
    "uri",
    "expiration_time",
    "qualify_frequency",
    "outbound_proxy",
    "path",
    "user_agent",
    "qualify_timeout",
    "reg_server",
    "authenticate_qualify",
    "via_addr",
    "via_port",
    "call_id",
    "endpoint",
    "prune_on_boot",
    "qualify_2xx_only",
)
_NUMERIC = frozenset({"expiration_time", "qualify_frequency", "qualify_timeout", "via_port"})
_ID_DELIM = "^3B@"  # `<aor>;@<hash>` as realtime stores it

RESTORED = Counter("pbx_contacts_restored", "ps_contacts rows written back from a node's astdb")
REMOVED = Counter("pbx_contacts_removed", "ps_contacts rows deleted because no node holds them any more")
EVICTED = Counter("pbx_contacts_evicted", "stale contact copies deleted from a node's astdb")
STALE_CHANNEL = "pbx_contact_copies"  # sql/028

# jsonb_populate_recordset casts Asterisk's strings ("3.000000", "45001") to the column types.
_UPSERT = f"""
INSERT INTO public.ps_contacts AS p ({", ".join(COLUMNS)})
SELECT {", ".join(COLUMNS)} FROM jsonb_populate_recordset(NULL::public.ps_contacts, $1::jsonb)
ON CONFLICT (id) DO UPDATE SET {", ".join(f"{c} = excluded.{c}" for c in COLUMNS[1:])}
WHERE (p.expiration_time IS NULL OR p.expiration_time < excluded.expiration_time)
  AND NOT pbx.contact_held_elsewhere(p.id, p.reg_server, p.expiration_time, coalesce(excluded.reg_server, ''))
RETURNING p.id
"""
# Only the version seen: a row refreshed (or re-created) since then has another expiry and stays.
_DELETE = """
DELETE FROM public.ps_contacts AS p
USING jsonb_to_recordset($1::jsonb) AS g(id text, expiration_time bigint)
WHERE p.id = g.id AND p.expiration_time = g.expiration_time
RETURNING p.id
"""


def realtime_encode(value: str) -> str:
    """As Asterisk's ast_realtime_encode_chunk: ``;`` and ``^`` would split a realtime value."""
    if ";" not in value and "^" not in value:
        return value
    return "".join(f"^{ord(ch):02X}" if ch in ";^" else ch for ch in value)


_ENCODED = re.compile(r"\^([0-9A-Fa-f]{2})")


def realtime_decode(value: str) -> str:
    """As Asterisk's ast_realtime_decode_chunk: a ps_contacts id as the astdb key it has there."""
    return _ENCODED.sub(lambda m: chr(int(m.group(1), 16)), value)


@dataclass(frozen=True)
class Contact:
    """One contact a node holds, as the ps_contacts row Asterisk would write for it."""

    row: Mapping[str, str | None]

    @property
    def id(self) -> str:
        return str(self.row["id"])

    @property
    def aor(self) -> str:
        return aor_of(self.id)

    @property
    def expiration_time(self) -> int:
        value = self.row.get("expiration_time")
        return int(value) if value else 0


@dataclass(frozen=True)
class StoredContact:
    id: str
    expiration_time: int


def aor_of(contact_id: str) -> str:
    return contact_id.rpartition(_ID_DELIM)[0] or contact_id


def parse_tree(messages: Iterable[Mapping[str, Any]]) -> list[Contact]:
    """The contacts of a ``DBGetTree`` reply for ``registrar/contact``."""
    prefix = f"/{_FAMILY}/"
    out = []
    for msg in messages:
        if msg.get("Event") != "DBGetTreeResponse":
            continue
        key = str(msg.get("Key", ""))
        if not key.startswith(prefix):
            continue
        try:
            fields = json.loads(str(msg.get("Val", "")))
        except ValueError:
            continue  # not an object set this Asterisk wrote: nothing to restore from it
        if not isinstance(fields, dict):
            continue
        row: dict[str, str | None] = {"id": realtime_encode(key[len(prefix) :])}
        for column in COLUMNS[1:]:
            value = fields.get(column)
            if value is None or (value == "" and column in _NUMERIC):
                row[column] = None
            else:
                row[column] = realtime_encode(str(value))
        out.append(Contact(row))
    return out


def plan_writes(
    held: Sequence[Contact], stored: Mapping[str, StoredContact], now: int, freshest: Mapping[str, int] | None = None
) -> list[Contact]:
    """The contacts of one node to write: missing from Postgres, or held there with an older expiry.
    ``freshest``: the latest expiry of each contact among every node's copies looked at."""
    others = _others(held, stored)
    out = []
    for c in held:
        if c.expiration_time <= now or (freshest or {}).get(c.id, 0) > c.expiration_time:
            continue
        have = stored.get(c.id)
        if have is None:
            if others.get(c.aor, 0) > c.expiration_time:
                continue
            out.append(c)
        elif have.expiration_time < c.expiration_time:
            out.append(c)
    return out


def plan_evictions(held: Sequence[Contact], stored: Mapping[str, StoredContact], now: int) -> list[Contact]:
    """The copies of one node that another node superseded: missing from Postgres, which holds a
    binding of the same AOR that the node does not hold and that expires later (``plan_writes``
    leaves them out for that reason). Expired copies are the node's own sweep's."""
    others = _others(held, stored)
    return [
        c for c in held if c.expiration_time > now and c.id not in stored and others.get(c.aor, 0) > c.expiration_time
    ]


def _others(held: Sequence[Contact], stored: Mapping[str, StoredContact]) -> dict[str, int]:
    """Per AOR, the latest expiry among rows the node does not hold: another node's (newer) binding."""
    held_ids = {c.id for c in held}
    others: dict[str, int] = {}
    for s in stored.values():
        if s.id not in held_ids:
            aor = aor_of(s.id)
            others[aor] = max(others.get(aor, 0), s.expiration_time)
    return others


def plan_deletes(seen: Mapping[str, StoredContact], held: Iterable[Iterable[Contact]], now: int) -> list[StoredContact]:
    """Rows of Postgres (as ``seen``) that no node holds: every look at every node is in ``held``."""
    held_ids = {c.id for contacts in held for c in contacts}
    return [s for s in seen.values() if s.expiration_time > now and s.id not in held_ids]


async def node_contacts(session: AmiSession, timeout: float = 60.0) -> list[Contact]:
    return parse_tree(await session.send_list({"Action": "DBGetTree", "Family": _FAMILY}, timeout=timeout))


async def evict(session: AmiSession, contact_ids: Iterable[str]) -> int:
    """Delete these copies (ps_contacts ids) from the node's astdb; returns how many it held."""
    evicted = 0
    for cid in contact_ids:
        try:
            await session.send({"Action": "DBDel", "Family": _FAMILY, "Key": realtime_decode(cid)})
        except AmiError:
            continue  # not there (the node removed it itself meanwhile): nothing to evict
        evicted += 1
    EVICTED.inc(evicted)
    return evicted


async def stored_contacts(conn: asyncpg.Connection) -> dict[str, StoredContact]:
    rows = await conn.fetch("SELECT id, coalesce(expiration_time, 0) AS exp FROM public.ps_contacts")
    return {r["id"]: StoredContact(r["id"], r["exp"]) for r in rows}


async def delete_contacts(conn: asyncpg.Connection, rows: Sequence[StoredContact]) -> int:
    """Delete each row if it still has the expiry given; returns how many were deleted."""
    if not rows:
        return 0
    payload = json.dumps([{"id": r.id, "expiration_time": r.expiration_time} for r in rows])
    deleted = len(await conn.fetch(_DELETE, payload))
    REMOVED.inc(deleted)
    return deleted


async def write_contacts(conn: asyncpg.Connection, contacts: Sequence[Contact]) -> int:
    """Upsert in one statement (one transaction); returns how many rows were written."""
    if not contacts:
        return 0
    payload = json.dumps([dict(c.row) for c in contacts])
    written = len(await conn.fetch(_UPSERT, payload))
    RESTORED.inc(written)
    return written


class ContactSync:
    def __init__(
        self, dsn: str, interval_s: float = INTERVAL_S, retry_s: float = 1.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.dsn = dsn
        self.interval_s = interval_s
        self.retry_s = retry_s  # database and AMI reconnect period while either is away
        self.clock = clock  # wall clock: expiration_time is epoch seconds
        self._sessions: dict[int, tuple[Node, AmiSession]] = {}
        self._nodes: dict[str, Node] = {}  # by name (a contact's reg_server), as of the last comparison
        # Node name -> copies sql/028 named and not evicted yet: the node did not answer, or it is
        # no node of the list now (`pbxctl nodes remove`), and its copies count again if it comes back.
        self._stale: dict[str, set[str]] = {}
        self._nodes_changed = False
        self._retry: set[int] = set()  # nodes to read again soon: unreachable, or their session dropped
        self._kick = asyncio.Event()
        self._refused = False  # the role may not write ps_contacts: said once
        self._watchers: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``; survives database and node restarts."""
        down_since: float | None = None
        try:
            while not stop.is_set():
                try:
                    conn = await asyncpg.connect(self.dsn, timeout=10)
                except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                    if down_since is None:
                        down_since = time.monotonic()
                        log.warning("contacts: database: %s; retrying every %g s", exc, self.retry_s)
                    await _wait_any(stop, timeout=self.retry_s)
                    continue
                if down_since is not None:
                    log.info("contacts: database back after %.1f s", time.monotonic() - down_since)
                    down_since = None
                try:
                    await self._serve(conn, stop)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    down_since = time.monotonic()
                    log.warning("contacts: database: %s", exc)
                finally:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 5)
        finally:
            self._close_sessions(list(self._sessions))
            for task in list(self._watchers):
                task.cancel()

    async def _serve(self, conn: asyncpg.Connection, stop: asyncio.Event) -> None:
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _c: lost.set())
        await conn.add_listener(STALE_CHANNEL, self._on_stale)
        await conn.add_listener(NODES_CHANNEL, self._on_nodes)
        # A fresh connection may follow an outage or a crash that emptied the table: compare at once.
        next_full = time.monotonic()
        while not stop.is_set() and not lost.is_set():
            self._kick.clear()
            if time.monotonic() >= next_full:
                self._nodes_changed = False
                next_full = time.monotonic() + self.interval_s
                await self.sync_once(conn)
            elif self._retry or self._nodes_changed:
                self._nodes_changed = False
                await self.sync_once(conn, only=set(self._retry))
            if self._stale:
                await self._evict_named()
            wait = next_full - time.monotonic()
            if self._retry:
                wait = min(wait, self.retry_s)
            await _wait_any(stop, lost, self._kick, timeout=max(wait, 0.0))
        if lost.is_set():
            raise ConnectionResetError("connection lost")

    async def sync_once(self, conn: asyncpg.Connection, only: set[int] | None = None) -> int:
        """Compare every node (or the nodes ``only`` names, and those added or added back since the
        last comparison, which evicts what they owe) with Postgres; returns the rows written."""
        nodes = {n.id: n for n in await list_nodes(conn)}
        known = {n.id for n in self._nodes.values()}
        self._nodes = {n.name: n for n in nodes.values()}
        self._close_sessions([nid for nid, (n, _s) in self._sessions.items() if nodes.get(nid) != n])
        self._retry &= set(nodes)
        chosen = [n for n in nodes.values() if only is None or n.id in only or n.id not in known]
        held = await asyncio.gather(*(self._held(n) for n in chosen))
        stored = await stored_contacts(conn)
        now = int(self.clock())
        freshest: dict[str, int] = {}
        for c in (c for contacts in held if contacts is not None for c in contacts):
            freshest[c.id] = max(freshest.get(c.id, 0), c.expiration_time)
        total = 0
        suspects: list[StoredContact] = []  # rows to delete unless a node holds them at the second look
        for node, contacts in zip(chosen, held, strict=True):
            if contacts is None:
                continue
            # Named ones first: a copy of a contact unregistered through another node is not restored.
            named = self._stale.pop(node.name, set())
            stale = {c.id for c in contacts if c.id in named} | {c.id for c in plan_evictions(contacts, stored, now)}
            if stale and await self._evict(node, sorted(stale)):
                contacts = [c for c in contacts if c.id not in stale]
            todo = plan_writes(contacts, stored, now, freshest)
            if not todo:
                continue
            written = await self._guarded(conn, write_contacts, todo, "write")
            total += written
            suspects += (StoredContact(c.id, c.expiration_time) for c in todo)
            if written:
                log.info("contacts: node %s: restored %d of %d held", node.name, written, len(contacts))
        if only is None and nodes and all(h is not None for h in held):
            suspects += plan_deletes(stored, (h for h in held if h is not None), now)
        if suspects:
            await self._delete_unheld(conn, chosen, suspects)
        return total

    def _on_stale(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            note = json.loads(payload)
            node, cid = str(note["node"]), str(note["id"])
        except (ValueError, KeyError, TypeError):
            log.warning("contacts: unreadable %s notification: %.200s", STALE_CHANNEL, payload)
            return
        self._stale.setdefault(node, set()).add(cid)
        self._kick.set()

    def _on_nodes(self, *_args: object) -> None:
        self._nodes_changed = True
        self._kick.set()

    async def _evict_named(self) -> None:
        for name in list(self._stale):
            node = self._nodes.get(name)
            # Else owed: the comparison of the node when it answers (or is added back) evicts them.
            if node is not None and node.id not in self._retry:
                if await self._evict(node, sorted(self._stale[name])):
                    del self._stale[name]

    async def _evict(self, node: Node, contact_ids: Sequence[str]) -> bool:
        """False when the node could not be reached: it is compared again as soon as it answers."""
        try:
            evicted = await evict(await self._session(node), contact_ids)
        except (AmiUnreachable, AmiDisconnected, AmiError) as exc:
            if node.id not in self._retry:
                log.warning("contacts: node %s: %s", node.name, exc)
            self._close_sessions([node.id])
            self._retry.add(node.id)
            self._stale.setdefault(node.name, set()).update(contact_ids)
            return False
        if evicted:
            log.info("contacts: node %s: evicted %d stale copies (another node replaced them)", node.name, evicted)
        return True

    async def _delete_unheld(
        self, conn: asyncpg.Connection, chosen: Sequence[Node], suspects: list[StoredContact]
    ) -> None:
        again = await asyncio.gather(*(self._held(n) for n in chosen))
        if any(h is None for h in again):
            return  # a node that did not answer may hold any of them
        gone = plan_deletes({s.id: s for s in suspects}, (h for h in again if h is not None), -1)
        deleted = await self._guarded(conn, delete_contacts, gone, "delete from")
        if deleted:
            log.info("contacts: removed %d rows no node holds any more", deleted)

    async def _guarded(
        self,
        conn: asyncpg.Connection,
        change: Callable[[asyncpg.Connection, Any], Awaitable[int]],
        rows: Sequence[Any],
        verb: str,
    ) -> int:
        try:
            async with conn.transaction():
                return await change(conn, rows)
        except asyncpg.InsufficientPrivilegeError as exc:
            # A role without the right: retrying would not help and reconnecting would churn.
            if not self._refused:
                log.error("contacts: cannot %s ps_contacts (%s); %d rows stay as they are", verb, exc, len(rows))
            self._refused = True
            return 0

    async def _held(self, node: Node) -> list[Contact] | None:
        try:
            session = await self._session(node)
            contacts = await node_contacts(session)
        except (AmiUnreachable, AmiDisconnected, AmiError) as exc:
            if node.id not in self._retry:  # once per outage of the node, not at every retry
                log.warning("contacts: node %s: %s", node.name, exc)
            self._close_sessions([node.id])
            self._retry.add(node.id)
            return None
        self._retry.discard(node.id)
        return contacts

    async def _session(self, node: Node) -> AmiSession:
        known = self._sessions.get(node.id)
        if known is not None and known[1].connected:
            return known[1]
        session = AmiSession(node.ami_host, node.ami_port, node.ami_user, node.ami_secret)
        await session.connect()
        self._sessions[node.id] = (node, session)
        watcher = asyncio.create_task(self._watch(node.id, session), name=f"contacts-{node.name}")
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return session

    async def _watch(self, node_id: int, session: AmiSession) -> None:
        # A session the node dropped is usually a node restart: read it again as soon as it answers.
        if await session.wait_closed() != _CLOSED_BY_US:
            self._retry.add(node_id)
            self._kick.set()

    def _close_sessions(self, ids: Sequence[int]) -> None:
        for nid in ids:
            known = self._sessions.pop(nid, None)
            if known is not None:
                known[1].close(_CLOSED_BY_US)


_CLOSED_BY_US = "closed by the contact sync"


async def _wait_any(*events: asyncio.Event, timeout: float) -> None:
    waits = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def run_contact_sync(dsn: str, stop: asyncio.Event, interval_s: float | None = None) -> None:
    """What `pbxctl serve` runs next to the change pusher."""
    await ContactSync(dsn, get_settings().contacts_sync_interval if interval_s is None else interval_s).run(stop)
