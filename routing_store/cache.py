"""The routing data of each tenant kept in memory by a long-running service, exact at every call.

A tenant's directory (extensions, ranks, members, forwards, extension -> endpoint links, its
domain) is loaded once into a `TenantSnapshot` stamped with the tenant's routing version
(sql/010_routing_notify.sql bumps it in every transaction that changes routing data). The
registered contacts are kept in one `ContactSet` (routing_store/contacts.py) stamped with the
contacts' counter (sql/022_contacts_notify.sql). Per call one small statement reads, together, the
current routing version and the contacts' counter; a snapshot whose version differs is never used,
and when the contact set is not at that counter (or not usable) a second statement probes
ps_contacts for the endpoints the call can reach, as before.

Why both versions and LISTEN/NOTIFY: the versions alone make every call exact (it routes on the
data committed before its own statement, as the uncached loader does: the stale-read window is
zero). The NOTIFYs from the same triggers let the listener drop and reload a changed tenant, and
apply each contact change, in the background, so the call after an edit or a registration rarely
pays for it. A call that finds no usable snapshot is routed by the uncached loader
(`load_for_call`, one statement) and schedules a reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from pbx_base.errors import UnknownTenant
from pbx_base.retry import Backoff
from pbx_base.settings import DEFAULTS
from routing.lookup import CallData
from routing.model import Directory
from routing.stage1 import reachable
from routing_store.contacts import CHANNEL as CONTACTS_CHANNEL
from routing_store.contacts import ContactSet
from routing_store.decode import decode_contacts
from routing_store.loader import load_for_call, load_tenant

__all__ = ["NOTIFY_CHANNEL", "CacheStats", "RoutingData", "TenantSnapshot", "load_snapshot"]

NOTIFY_CHANNEL = "pbx_routing"
_log = logging.getLogger(__name__)

# The per-call statement: the tenant's current identity and version, the contacts' counter, and
# the contacts only when the in-memory contact set is not at that counter ($3, $4; -1 when it is
# unusable): then one index probe per endpoint (OFFSET 0 keeps the LATERAL a probe: `endpoint =
# ANY($2)` lets the planner pick a sequential scan of ps_contacts whenever its statistics are
# behind). CASE evaluates the probes only in that branch. Always one row while the tenant exists.
_CHECK = """
SELECT t.name, t.domain, coalesce(v.version, 0) AS version,
       array(SELECT ROW(e.ep, pc.id, pc.uri) FROM unnest($2::text[]) AS e(ep),
             LATERAL (SELECT id, uri FROM public.ps_contacts WHERE endpoint = e.ep OFFSET 0) pc) AS contacts
FROM pbx.tenants t
LEFT JOIN pbx.routing_versions v ON v.tenant_id = t.id
WHERE t.id = $1
"""
# The common case, the contact set is current: the routing version and the contacts' counter only.
# Sending the reachable endpoints' ids for probes that are not run cost a third of the statement.
_VERSIONS = """
SELECT t.name, t.domain, coalesce(v.version, 0) AS version, cv.epoch, cv.version AS contacts_version
FROM pbx.tenants t
LEFT JOIN pbx.routing_versions v ON v.tenant_id = t.id
LEFT JOIN pbx.contacts_version cv ON true
WHERE t.id = $1
"""

_MEMO_LIMIT = 4096


@dataclass
class TenantSnapshot:
    """One tenant's routing data as of one committed state (its routing `version`)."""

    tenant_id: int
    name: str
    domain: str
    version: int
    directory: Directory
    owners: Mapping[str, tuple[str, ...]]  # endpoint name -> every extension listing it
    _memo: dict[tuple[str, str, str], list[str]] = field(default_factory=dict, repr=False)

    def endpoint_ids(self, caller: str, called: str, endpoint: str) -> list[str]:
        """Asterisk ids (`name@domain`) of the endpoints of the extensions this call can reach
        (routing.stage1.reachable, the rule the uncached loader follows in SQL: both read the same
        contacts)."""
        key = (caller, called, endpoint)
        ids = self._memo.get(key)
        if ids is None:
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            exts = self.directory.extensions
            numbers = reachable(self.directory, caller, called, self.owners.get(endpoint, ()))
            names = sorted({ep for n in numbers for ep in exts[n].endpoints})
            ids = self._memo[key] = [f"{ep}@{self.domain}" for ep in names]
        return ids


async def load_snapshot(conn: asyncpg.Connection, tenant: str) -> TenantSnapshot:
    """Every piece of a tenant's routing data, read in one consistent snapshot. Raises UnknownTenant."""
    t = await load_tenant(conn, tenant)
    owners: dict[str, tuple[str, ...]] = {}
    for ext in t.directory.extensions.values():
        for ep in ext.endpoints:
            owners[ep] = (*owners.get(ep, ()), ext.number)
    return TenantSnapshot(t.id, t.name, t.domain, t.version, t.directory, owners)


@dataclass
class CacheStats:
    hits: int = 0  # calls routed from a snapshot
    misses: int = 0  # calls routed by the uncached loader (no snapshot, or an outdated one)
    loads: int = 0  # snapshots loaded and kept
    discarded: int = 0  # snapshots loaded but outdated by a notification during the load
    notifications: int = 0
    connects: int = 0  # LISTEN connections established
    contact_hits: int = 0  # hits whose contacts came from the in-memory contact set


class RoutingData:
    """The routing data a call needs, from memory where that is exact, else from the database.

    `for_call` is the call path; `listen` is the task that keeps the memory fresh (run it for as
    long as the service lives). Snapshots are loaded on the pool's connections, in the background.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        keepalive_s: float = 10.0,
        retry_s: float = 0.5,
        retry_max_s: float = DEFAULTS.db_retry_max_s,
    ) -> None:
        self._pool = pool
        self._keepalive_s = keepalive_s
        self._backoff = Backoff(initial=retry_s, maximum=retry_max_s, jitter=0.0)
        self._snaps: dict[str, TenantSnapshot] = {}
        self._loading: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        # Invalidation clock: a load that began before the last notification of its tenant (or
        # before the last drop of everything) is outdated when it ends and is not kept.
        self._clock = 0
        self._notified_at: dict[int, int] = {}
        self._dropped_all_at = 0
        self._changed = asyncio.Condition()
        self._background: set[asyncio.Task[None]] = set()  # the loop only keeps weak references
        self.stats = CacheStats()
        self.contacts = ContactSet()
        self._contacts_loading: asyncio.Task[None] | None = None
        self.listener_pid: int | None = None
        self.listening = asyncio.Event()

    # --- the call path ---------------------------------------------------------------------------
    async def for_call(
        self, conn: asyncpg.Connection, tenant: str, caller: str, called: str, endpoint: str | None = None
    ) -> CallData:
        """What `load_for_call` returns for this call (the directory may hold more extensions).

        `endpoint`: the PJSIP endpoint name the call arrived on (None when unauthenticated or not
        given, as for `load_for_call`). Raises UnknownTenant.
        """
        snap = self._snaps.get(tenant)
        if snap is not None:
            ids = snap.endpoint_ids(caller, called, endpoint or "")
            row, probed = await self._check(conn, snap, ids)
            if row is not None and (row["version"], row["name"], row["domain"]) == (
                snap.version,
                snap.name,
                snap.domain,
            ):
                self.stats.hits += 1
                if probed is None:
                    self.stats.contact_hits += 1
                contacts, uris = decode_contacts(self.contacts.rows(ids) if probed is None else probed, snap.domain)
                return CallData(snap.directory, contacts, snap.domain, cached=True, contact_uris=uris)
            if self._snaps.get(tenant) is snap:
                del self._snaps[tenant]
        self.stats.misses += 1
        self.refresh(tenant)
        return await load_for_call(conn, tenant, caller, called, endpoint)

    async def _check(
        self, conn: asyncpg.Connection, snap: TenantSnapshot, ids: list[str]
    ) -> tuple[asyncpg.Record | None, list[Any] | None]:
        """The tenant's row (name, domain, routing version) and the reachable endpoints' contacts
        probed in Postgres, or None for them when the in-memory set is exact for this call."""
        at = self.contacts.current
        if at is not None:
            row: asyncpg.Record | None = await conn.fetchrow(_VERSIONS, snap.tenant_id)
            # A set that moved on meanwhile holds what was committed up to a later version: still
            # exact. One that became unusable while the statement ran (a gap) is not.
            if row is None or ((row["epoch"], row["contacts_version"]) == at and self.contacts.current is not None):
                return row, None
        row = await conn.fetchrow(_CHECK, snap.tenant_id, ids)
        return row, None if row is None else list(row["contacts"])

    # --- snapshots ---------------------------------------------------------------------------------
    def snapshot(self, tenant: str) -> TenantSnapshot | None:
        return self._snaps.get(tenant)

    def refresh(self, tenant: str) -> None:
        """Load the tenant's snapshot in the background (at most one load per tenant at a time)."""
        if tenant in self._loading:
            self._again.add(tenant)  # the running load may predate the change that asked for this
            return
        task = asyncio.get_running_loop().create_task(self._load_loop(tenant))
        self._loading[tenant] = task
        task.add_done_callback(lambda _t: self._loading.pop(tenant, None))

    async def preload(self, tenant: str) -> TenantSnapshot:
        """Load the tenant now and keep it (service start, tests). Raises UnknownTenant."""
        while True:
            snap = await self._load_once(tenant)
            if snap is not None:
                return snap

    async def preload_all(self) -> None:
        async with self._pool.acquire() as conn:
            names = [r["name"] for r in await conn.fetch("SELECT name FROM pbx.tenants ORDER BY name")]
        for name in names:
            try:
                await self.preload(name)
            except UnknownTenant:
                pass

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait until `predicate()` holds, re-checked after every change of the cache (for tests)."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), timeout)

    async def _load_once(self, tenant: str) -> TenantSnapshot | None:
        """Load and keep a snapshot; None when a notification made it outdated during the load."""
        self._again.discard(tenant)
        started = self._clock
        try:
            async with self._pool.acquire() as conn:
                snap = await load_snapshot(conn, tenant)
        except UnknownTenant:
            self._snaps.pop(tenant, None)
            raise
        if self._outdated(snap.tenant_id, started):
            self.stats.discarded += 1
            return None
        current = self._snaps.get(tenant)
        # Versions only grow for one tenant id: never replace a newer snapshot by an older one.
        if current is None or current.tenant_id != snap.tenant_id or current.version <= snap.version:
            self._snaps[tenant] = snap
            self.stats.loads += 1
            await self._notify_change()
        return snap

    async def _load_loop(self, tenant: str) -> None:
        # Bounded: under a storm of edits the calls keep being routed uncached, and the next call
        # after the storm starts a new load.
        for _ in range(5):
            try:
                snap = await self._load_once(tenant)
            except UnknownTenant:
                await self._notify_change()
                return
            except Exception as exc:  # a background load must not take anything down with it
                _log.warning("routing cache: cannot load tenant %s: %s", tenant, exc)
                return
            if snap is not None and tenant not in self._again:
                return

    def _outdated(self, tenant_id: int, started: int) -> bool:
        return self._notified_at.get(tenant_id, 0) > started or self._dropped_all_at > started

    async def _notify_change(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # --- invalidation ------------------------------------------------------------------------------
    def invalidate(self, tenant_id: int | None = None) -> None:
        """Forget one tenant (by id) or everything; loads running now will not be kept."""
        self._clock += 1
        if tenant_id is None:
            self._dropped_all_at = self._clock
            self._snaps.clear()
        else:
            self._notified_at[tenant_id] = self._clock
            for name in [n for n, s in self._snaps.items() if s.tenant_id == tenant_id]:
                del self._snaps[name]
                self.refresh(name)
        task = asyncio.get_running_loop().create_task(self._notify_change())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _on_notification(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self.stats.notifications += 1
        try:
            tenant_id = int(payload)
        except ValueError:
            _log.warning("routing cache: ignoring notification %r", payload)
            return
        self.invalidate(tenant_id)

    def _on_contacts_notification(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        if not self.contacts.on_notification(payload) and self._contacts_loading is None:
            self._contacts_loading = asyncio.get_running_loop().create_task(self._load_contacts())

    async def _load_contacts(self) -> None:
        """Read the contact set again until it is usable (a gap during the load asks for another)."""
        try:
            for _ in range(5):
                try:
                    async with self._pool.acquire() as conn:
                        await self.contacts.load(conn)
                except Exception as exc:  # calls probe ps_contacts meanwhile; the next gap retries
                    _log.warning("routing cache: cannot load the contact set: %s", exc)
                    return
                if self.contacts.current is not None:
                    return
        finally:
            # Here, not in a done callback: a gap heard after this point must start a new load.
            self._contacts_loading = None

    async def listen(self) -> None:
        """LISTEN for routing changes until cancelled; reconnects, dropping the cache each time
        (changes made while nobody listened were not heard)."""
        attempt = 0
        while True:
            try:
                await self._listen_once()
            except Exception as exc:  # the listener outlives any failure; cancellation still ends it
                _log.warning("routing cache: LISTEN connection lost: %s", exc)
                if self.listening.is_set():  # it was listening: a new loss, not a failed reconnect
                    attempt = 0
            finally:
                self.listening.clear()
                self.listener_pid = None
                self.contacts.invalidate()
                self.invalidate()
            await asyncio.sleep(self._backoff.delay(attempt))
            attempt += 1

    async def _listen_once(self) -> None:
        lost = asyncio.Event()

        def on_lost(_conn: object) -> None:
            lost.set()

        async with self._pool.acquire() as conn:
            conn.add_termination_listener(on_lost)
            try:
                await conn.add_listener(NOTIFY_CHANNEL, self._on_notification)
                await conn.add_listener(CONTACTS_CHANNEL, self._on_contacts_notification)
                # Only now is every later change heard: forget what was loaded before.
                self.invalidate()
                await self._load_contacts()
                self.stats.connects += 1
                self.listener_pid = conn.get_server_pid()
                self.listening.set()
                await self._notify_change()
                while not lost.is_set():
                    try:
                        await asyncio.wait_for(lost.wait(), self._keepalive_s)
                    except TimeoutError:
                        # A half-open TCP connection never reports its loss: ask.
                        await conn.fetchval("SELECT 1", timeout=self._keepalive_s)
                raise ConnectionResetError("the server closed the connection")
            finally:
                # A lost connection may already be detached from its pool proxy, which then refuses
                # every call: the cleanup must not hide why the listener stopped.
                with contextlib.suppress(asyncpg.InterfaceError):
                    conn.remove_termination_listener(on_lost)
                    if not conn.is_closed():
                        await conn.remove_listener(NOTIFY_CHANNEL, self._on_notification)
                        await conn.remove_listener(CONTACTS_CHANNEL, self._on_contacts_notification)
