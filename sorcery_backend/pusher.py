"""The change pusher: delivers the outbox to every Asterisk node over AMI, durably.

One listener connection LISTENs on ``pbx_changes`` (a commit wrote outbox rows) and ``pbx_nodes``
(a node was added or removed). Each node has its own worker task, DB connection and AMI session,
so a node that is down never holds the others back. A worker:

1. holds a per-node advisory lock, so two `pbxctl serve` processes never push the same node twice;
2. connects and logs in to AMI (reconnecting with capped exponential backoff); on the first
   contact with a node it has never reached, or one restarted since it last reached it (a new
   CoreStartup time), it expires every cache whole (it cannot know what the node holds), and on
   every connection it (re)creates the dialplan contexts the endpoints use;
3. waits for a NOTIFY, lets a burst settle (``quiet_s`` after the last NOTIFY, at most ``max_hold_s``
   after the first), then reads the node's pending rows, coalesces them per object
   (:mod:`sorcery_backend.push_plan`) and sends the actions pipelined, ``chunk`` at a time;
4. after each chunk, deletes exactly the pending rows covered by the actions Asterisk confirmed, in
   one transaction with the node's counters. A crash or a drop redoes only unconfirmed actions.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from pbx_base.retry import Backoff
from pbx_base.settings import DEFAULTS, Settings
from sorcery_backend.ami import AmiDisconnected, AmiError, AmiSession, AmiUnreachable
from sorcery_backend.boot_set import BootObject, may_change, sync_boot_set
from sorcery_backend.nodes import Node, list_nodes
from sorcery_backend.push_plan import (
    CACHE_OF_VIEW,
    PER_OBJECT_CACHES,
    AorQualify,
    CacheAction,
    PendingRow,
    Plan,
    plan_batch,
)

__all__ = ["DIALPLAN_TARGET", "Pusher", "PusherSettings", "run_pusher"]

log = logging.getLogger("pbx.pusher")

DIALPLAN_TARGET = "pbx-stasis"
# The same pattern as [pbx-stasis] in asterisk_conf/extensions.conf: every dialable number.
_PATTERN = "_[+*#0-9a-zA-Z]!"
_CONTEXT = "coalesce(nullif(context, ''), 'default')"  # Asterisk's own default
_LOCK_CLASS = 0x70757368  # "push": advisory lock class, the node id is the key
# Errors that mean "nothing to expire": the object was not cached, or the node runs without caches.
# The last: PJSIPRegister for an outbound auth that no registration uses (one for outgoing calls only).
_BENIGN = (
    "could not be expired from the cache",
    "The provided cache does not exist",
    "Unable to retrieve registration entry",
)
# The node is stopping: it did nothing, like a lost session (retried after the reconnect), not a
# refusal of the object (recorded, and cleared only by a later per-object action, which a restarted
# node's whole-cache expiry never sends).
_GOING_AWAY = "Asterisk is shutting down"
_CACHE_COUNT = re.compile(r"Number of objects within cache:\s*(\d+)")


@dataclass(frozen=True)
class PusherSettings:
    quiet_s: float = 0.025  # a burst is over after this much silence ...
    max_hold_s: float = 1.0  # ... or this long after its first change, whichever comes first
    batch_rows: int = 20000  # pending rows read per round
    chunk: int = 500  # actions confirmed (and acknowledged in the DB) together
    window: int = 64  # actions in flight on one AMI session
    whole_cache_min: int = 200  # below this many objects of one cache, never ask the cache's size
    backoff: Backoff = Backoff(initial=0.2, maximum=DEFAULTS.db_retry_max_s, jitter=0.0)  # the database
    ami_backoff: Backoff = Backoff(initial=0.2, maximum=DEFAULTS.ami_retry_max_s, jitter=0.0)  # a node's AMI
    idle_check_s: float = 30.0  # ping the node and re-check its contexts when nothing happened
    outbox_keep_s: float = DEFAULTS.outbox_keep_s  # delivered outbox rows are kept this long as history
    audit_keep_s: float = DEFAULTS.audit_keep_s  # pbx.audit rows are kept this long
    call_records_keep_s: float = DEFAULTS.call_records_keep_s  # pbx.call_records (and their legs) too

    @classmethod
    def from_settings(cls, s: Settings) -> PusherSettings:
        return cls(
            backoff=dataclasses.replace(cls.backoff, maximum=s.db_retry_max_s),
            ami_backoff=dataclasses.replace(cls.ami_backoff, maximum=s.ami_retry_max_s),
            outbox_keep_s=s.outbox_keep_s,
            audit_keep_s=s.audit_keep_s,
            call_records_keep_s=s.call_records_keep_s,
        )


class Pusher:
    def __init__(self, dsn: str, settings: PusherSettings | None = None) -> None:
        self.dsn = dsn
        self.settings = settings or PusherSettings()
        self._workers: dict[int, tuple[NodeWorker, asyncio.Task[None]]] = {}
        self._trimmed_at = float("-inf")

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; survives database restarts."""
        attempt = 0
        try:
            while not stop.is_set():
                try:
                    await self._listen(stop)
                    attempt = 0
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                    log.warning("database: %s; retrying", exc)
                    await _sleep_or_stop(stop, self.settings.backoff.delay(attempt))
                    attempt += 1
        finally:
            await self._stop_workers(list(self._workers))

    async def _listen(self, stop: asyncio.Event) -> None:
        conn = await asyncpg.connect(self.dsn, timeout=10)
        nodes_changed = asyncio.Event()
        try:
            await conn.add_listener("pbx_changes", lambda *_: self._wake_all())
            await conn.add_listener("pbx_nodes", lambda *_: nodes_changed.set())
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _c: lost.set())
            while not stop.is_set():
                nodes_changed.clear()
                await self._sync_workers(conn, stop)
                await self._trim_history(conn)
                # Rows committed while no one listened are pending already; a wake finds them.
                self._wake_all()
                waits = [asyncio.create_task(e.wait()) for e in (stop, nodes_changed, lost)]
                try:
                    await asyncio.wait(waits, timeout=self.settings.idle_check_s, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waits:
                        w.cancel()
                if lost.is_set():
                    raise ConnectionResetError("listener connection lost")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)

    async def _trim_history(self, conn: asyncpg.Connection) -> None:
        """Delivered outbox rows, audit rows and call records past their retention, once per idle check."""
        now = time.monotonic()
        if now - self._trimmed_at < self.settings.idle_check_s:
            return
        self._trimmed_at = now
        kept = (
            ("outbox", self.settings.outbox_keep_s),
            ("audit", self.settings.audit_keep_s),
            ("call_records", self.settings.call_records_keep_s),
        )
        for what, keep_s in kept:
            try:
                removed = await conn.fetchval(f"SELECT pbx.trim_{what}(make_interval(secs => $1))", keep_s)
            except asyncpg.PostgresError as exc:  # e.g. a role without the right: pushing matters more
                log.warning("%s: not trimmed: %s", what, exc)
                continue
            if removed:
                log.info("%s: removed %d rows older than %g s", what, removed, keep_s)

    def _wake_all(self) -> None:
        for worker, _task in self._workers.values():
            worker.notify()

    async def _sync_workers(self, conn: asyncpg.Connection, stop: asyncio.Event) -> None:
        nodes = {n.id: n for n in await list_nodes(conn)}
        # Gone, or its AMI address or credentials changed: that worker starts over.
        stale = [nid for nid, (w, _t) in self._workers.items() if nodes.get(nid) != w.node]
        await self._stop_workers(stale)
        for nid, node in nodes.items():
            if nid in self._workers:
                task = self._workers[nid][1]
                if not task.done():
                    continue
                if not task.cancelled() and task.exception() is not None:
                    log.error("node %s: worker failed, restarting: %r", node.name, task.exception())
            worker = NodeWorker(self.dsn, node, self.settings)
            self._workers[nid] = (worker, asyncio.create_task(worker.run(stop), name=f"push-{node.name}"))

    async def _stop_workers(self, ids: Sequence[int]) -> None:
        tasks = []
        for nid in ids:
            _worker, task = self._workers.pop(nid)
            task.cancel()
            tasks.append(task)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class NodeWorker:
    def __init__(self, dsn: str, node: Node, settings: PusherSettings) -> None:
        self.dsn = dsn
        self.node = node
        self.settings = settings
        self._wake = asyncio.Event()
        self._first_notify: float | None = None
        self._last_notify = 0.0
        self._contexts: set[str] = set()  # ensured on the current AMI session
        self._boot_held: set[BootObject] | None = None  # the node's boot set at the last sync
        self.refused: list[tuple[CacheAction, AmiError]] = []  # answered with an error, not yet recorded

    def notify(self) -> None:
        now = time.monotonic()
        if self._first_notify is None:
            self._first_notify = now
        self._last_notify = now
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        attempt = 0
        while not stop.is_set():
            try:
                conn = await asyncpg.connect(self.dsn, timeout=10)
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                log.warning("node %s: database: %s", self.node.name, exc)
                await _sleep_or_stop(stop, self.settings.backoff.delay(attempt))
                attempt += 1
                continue
            try:
                if not await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", _LOCK_CLASS, self.node.id):
                    log.info("node %s: another pusher holds it", self.node.name)
                    await _sleep_or_stop(stop, self.settings.idle_check_s)
                    continue
                attempt = await self._serve_node(conn, stop, attempt)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("node %s: database: %s", self.node.name, exc)
                await _sleep_or_stop(stop, self.settings.backoff.delay(attempt))
                attempt += 1
            finally:
                with contextlib.suppress(Exception):
                    if stop.is_set():
                        await conn.execute(
                            "UPDATE pbx.node_state SET connected = false WHERE node_id = $1", self.node.id
                        )
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 5)

    async def _serve_node(self, conn: asyncpg.Connection, stop: asyncio.Event, attempt: int) -> int:
        """AMI sessions one after another while the DB connection lasts; returns the backoff attempt."""
        n = self.node
        while not stop.is_set():
            session = AmiSession(n.ami_host, n.ami_port, n.ami_user, n.ami_secret)
            try:
                await session.connect()
                await self._on_connect(conn, session)
                attempt = 0
                log.info("node %s: connected to AMI %s", n.name, session.address)
                await self._deliver_forever(conn, session, stop)
            except (AmiUnreachable, AmiDisconnected, AmiError) as exc:
                await self._record_error(conn, str(exc))
                log.warning("node %s: %s", n.name, exc)
            finally:
                session.close()
                self._contexts.clear()
            await _sleep_or_stop(stop, self.settings.ami_backoff.delay(attempt))
            attempt += 1
        return attempt

    async def _on_connect(self, conn: asyncpg.Connection, session: AmiSession) -> None:
        status = await session.send({"Action": "CoreStatus"})
        boot_id = f"{status.get('CoreStartupDate', '')} {status.get('CoreStartupTime', '')}".strip()
        known = await conn.fetchrow("SELECT boot_id FROM pbx.node_state WHERE node_id = $1", self.node.id)
        if known is None or known["boot_id"] is None:
            await self._expire_everything(conn, session, "first contact")
        elif known["boot_id"] != boot_id:
            # Restarted (a crash, a failover) since we last reached it: its caches are new and hold
            # only what it read since, and everything queued while it was away is covered by one
            # whole expiry per cache instead of one action per change.
            await self._expire_everything(conn, session, f"restarted since {known['boot_id']}")
        await conn.execute(
            "INSERT INTO pbx.node_state (node_id, boot_id, connected) VALUES ($1, $2, true) "
            "ON CONFLICT (node_id) DO UPDATE SET boot_id = $2, connected = true",
            self.node.id,
            boot_id,
        )
        await self._ensure_contexts(conn, session, None)
        await self._sync_boot_set(conn, session)

    async def _sync_boot_set(self, conn: asyncpg.Connection, session: AmiSession) -> None:
        """The trunks the node loads at its next boot (sorcery_backend/boot_set.py)."""
        try:
            put, deleted, self._boot_held = await sync_boot_set(conn, session)
        except AmiError as exc:  # a node that refuses it still gets every other change
            log.warning("node %s: boot set not synced: %s", self.node.name, exc.message)
            self._boot_held = None  # unknown: the next batch that touches AORs or endpoints syncs
            return
        if put or deleted:
            log.info("node %s: boot set: %d objects written, %d removed", self.node.name, put, deleted)

    async def _expire_everything(self, conn: asyncpg.Connection, session: AmiSession, why: str) -> None:
        """First contact, or a new boot: the node's caches may hold anything. Every change pending
        now is covered."""
        seqs = [r["seq"] for r in await conn.fetch("SELECT seq FROM pbx.push_pending WHERE node_id = $1", self.node.id)]
        actions = [
            CacheAction((("Action", "SorceryMemoryCacheExpire"), ("Cache", c)), (), 0)
            for c in (*PER_OBJECT_CACHES, "res_pjsip/identify")
        ]
        try:
            done = await self._send_all(session, actions)
        except _PartlyDone as partly:
            raise partly.cause from None
        refused, self.refused = self.refused, []
        if refused:  # a node whose caches could not be emptied may serve anything: try again
            raise refused[0][1]
        await self._acknowledge(conn, seqs, len(done))
        log.info("node %s: %s, every cache expired (%d pending changes covered)", self.node.name, why, len(seqs))

    async def _deliver_forever(self, conn: asyncpg.Connection, session: AmiSession, stop: asyncio.Event) -> None:
        closed = asyncio.create_task(session.wait_closed())
        try:
            while not stop.is_set():
                await self._deliver_pending(conn, session)
                woke = asyncio.create_task(self._wake.wait())
                stopped = asyncio.create_task(stop.wait())
                done, _ = await asyncio.wait(
                    {woke, stopped, closed}, timeout=self.settings.idle_check_s, return_when=asyncio.FIRST_COMPLETED
                )
                woke.cancel()
                stopped.cancel()
                if closed in done:
                    raise AmiDisconnected(f"AMI {session.address}: {closed.result()}")
                if not done:
                    await session.send({"Action": "Ping"})
                    self._contexts.clear()  # a `dialplan reload` drops contexts added over AMI
                    await self._ensure_contexts(conn, session, None)
                    continue
                await self._settle()
        finally:
            closed.cancel()

    async def _settle(self) -> None:
        """Let a burst of commits finish so each object is pushed once for all of them."""
        s = self.settings
        while True:
            first = self._first_notify if self._first_notify is not None else time.monotonic()
            now = time.monotonic()
            left = min(self._last_notify + s.quiet_s, first + s.max_hold_s) - now
            if left <= 0:
                return
            await asyncio.sleep(left)

    async def _deliver_pending(self, conn: asyncpg.Connection, session: AmiSession) -> None:
        # Cleared before reading: a commit landing during the round sets it again for the next one.
        self._wake.clear()
        self._first_notify = None
        while True:
            t0 = time.perf_counter()
            rows = [
                PendingRow(r["seq"], r["view"], r["object_id"], r["op"])
                for r in await conn.fetch(
                    "SELECT q.seq, o.view, o.object_id, o.op FROM pbx.push_pending q "
                    "JOIN pbx.outbox o ON o.seq = q.seq WHERE q.node_id = $1 ORDER BY q.seq LIMIT $2",
                    self.node.id,
                    self.settings.batch_rows,
                )
            ]
            if not rows:
                return
            t1 = time.perf_counter()
            counts = await self._cache_counts(session, rows)
            aors = await aor_qualify(conn, [r.object_id for r in rows if r.view == "ps_aors" and r.op != "deleted"])
            plan = plan_batch(rows, counts.get, whole_cache_min=self.settings.whole_cache_min, aors=aors)
            await self._ensure_contexts(conn, session, [r.object_id for r in rows if r.view == "ps_endpoints"])
            boot_aors = [r.object_id for r in rows if r.view == "ps_aors"]
            boot_endpoints = [r.object_id for r in rows if r.view == "ps_endpoints"]
            if (boot_aors or boot_endpoints) and (
                self._boot_held is None or await may_change(conn, self._boot_held, boot_aors, boot_endpoints)
            ):  # before the expiries: see boot_set's doc
                await self._sync_boot_set(conn, session)
            t2 = time.perf_counter()
            await self._run_plan(conn, session, plan, rows)
            t3 = time.perf_counter()
            whole = [a.as_dict["Cache"] for a in plan.actions if a.name == "SorceryMemoryCacheExpire"]
            log.info(
                "node %s: %d changes in %d actions%s (read %.0f ms, plan %.0f ms, send+ack %.0f ms)",
                self.node.name,
                len(rows),
                len(plan.actions),
                f", whole-cache expiry of {', '.join(whole)}" if whole else "",
                (t1 - t0) * 1000,
                (t2 - t1) * 1000,
                (t3 - t2) * 1000,
            )
            if len(rows) < self.settings.batch_rows:
                return

    async def _cache_counts(self, session: AmiSession, rows: list[PendingRow]) -> dict[str, int | None]:
        per_cache: dict[str, set[str]] = {}
        for r in rows:
            per_cache.setdefault(r.view, set()).add(r.object_id)
        out: dict[str, int | None] = {}
        for view, ids in per_cache.items():
            cache = CACHE_OF_VIEW.get(view)
            if cache in PER_OBJECT_CACHES and len(ids) >= self.settings.whole_cache_min:
                reply = await session.send({"Action": "Command", "Command": f"sorcery memory cache show {cache}"})
                m = _CACHE_COUNT.search(_command_output(reply))
                out[cache] = int(m.group(1)) if m else None
        return out

    async def _run_plan(
        self, conn: asyncpg.Connection, session: AmiSession, plan: Plan, rows: list[PendingRow]
    ) -> None:
        if plan.unknown_views:
            log.warning("node %s: no action known for views %s", self.node.name, sorted(plan.unknown_views))
            await self._acknowledge(conn, [r.seq for r in rows if r.view in plan.unknown_views], 0)
        step = self.settings.chunk
        for i in range(0, len(plan.actions), step):
            chunk = plan.actions[i : i + step]
            try:
                done = await self._send_all(session, chunk)
            except _PartlyDone as partly:
                # What Asterisk confirmed is delivered, even though the session is going down.
                await self._acknowledge(conn, [s for a in partly.done for s in a.seqs], len(partly.done))
                await self._note_refusals(conn, partly.done)
                raise partly.cause from None
            await self._acknowledge(conn, [s for a in done for s in a.seqs], len(done))
            await self._note_refusals(conn, done)
            await asyncio.sleep(0)  # let other nodes and services run between chunks

    async def _send_all(self, session: AmiSession, actions: list[CacheAction]) -> list[CacheAction]:
        """Send pipelined; every action the node answered (confirmed, or refused and recorded in
        :attr:`refused`), else :class:`_PartlyDone` when the session was lost on the way."""
        window = asyncio.Semaphore(self.settings.window)
        lost: list[Exception] = []

        async def one(action: CacheAction) -> bool:
            async with window:
                try:
                    await session.send(action.as_dict)
                except AmiError as exc:
                    if _GOING_AWAY in exc.message:
                        lost.append(AmiDisconnected(str(exc)))
                        return False
                    if not any(b in exc.message for b in _BENIGN):
                        self.refused.append((action, exc))
                except AmiDisconnected as exc:
                    lost.append(exc)
                    return False
            return True

        results = await asyncio.gather(*(one(a) for a in actions))
        done = [a for a, ok in zip(actions, results, strict=True) if ok]
        if lost:
            raise _PartlyDone(done, lost[0])
        return done

    async def _acknowledge(self, conn: asyncpg.Connection, seqs: list[int], actions: int) -> None:
        if not seqs and not actions:
            return
        async with conn.transaction():
            deleted = await conn.fetchval(
                "WITH d AS (DELETE FROM pbx.push_pending WHERE node_id = $1 AND seq = ANY($2::bigint[]) RETURNING 1) "
                "SELECT count(*) FROM d",
                self.node.id,
                seqs,
            )
            await conn.execute(
                "UPDATE pbx.node_state SET actions_sent = actions_sent + $2, rows_delivered = rows_delivered + $3, "
                "last_delivery_at = now(), connected = true WHERE node_id = $1",
                self.node.id,
                actions,
                deleted,
            )

    async def _note_refusals(self, conn: asyncpg.Connection, answered: list[CacheAction]) -> None:
        """Record what the node refused among ``answered``; forget earlier refusals of the others."""
        refused, self.refused = self.refused, []
        bad = {id(a) for a, _ in refused}
        fine = [_object_of(a.as_dict) for a in answered if id(a) not in bad]
        if fine:
            await conn.execute(
                "DELETE FROM pbx.push_refusals WHERE node_id = $1 AND object = ANY($2::text[])", self.node.id, fine
            )
        for action, exc in refused:
            await self._record_refusal(conn, action.as_dict, exc)

    async def _record_refusal(self, conn: asyncpg.Connection, fields: dict[str, str], exc: AmiError) -> None:
        obj = _object_of(fields)
        log.warning("node %s: refused %s for %s: %s", self.node.name, fields["Action"], obj, exc.message)
        await conn.execute(
            "INSERT INTO pbx.push_refusals (node_id, object, action, message) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (node_id, object) DO UPDATE SET action = $3, message = $4, at = now()",
            self.node.id,
            obj,
            fields["Action"],
            exc.message[:500],
        )

    async def _ensure_contexts(
        self, conn: asyncpg.Connection, session: AmiSession, endpoint_ids: list[str] | None
    ) -> None:
        """Every endpoint context exists on the node and leads to Stasis; ``None`` checks all endpoints."""
        # An endpoint that names no context is in Asterisk's default one, `default`: it leads to
        # Stasis like any other, or that endpoint's calls would meet an empty context (404).
        if endpoint_ids is None or len(endpoint_ids) > 1000:
            # One scan of every endpoint is cheaper than thousands of probes by id.
            rows = await conn.fetch(f"SELECT DISTINCT {_CONTEXT} AS context FROM pbx.rt_ps_endpoints")
        elif endpoint_ids:
            rows = await conn.fetch(
                f"SELECT DISTINCT {_CONTEXT} AS context FROM pbx.rt_ps_endpoints WHERE id = ANY($1::text[])",
                endpoint_ids,
            )
        else:
            return
        wanted = {r["context"] for r in rows} - self._contexts - {DIALPLAN_TARGET}
        if not wanted:
            return
        existing = await _dialplan(session)
        for context in sorted(wanted):
            have = existing.get(context)
            if have is not None and not any(app == "Goto" and DIALPLAN_TARGET in data for _e, app, data in have):
                # Defined by the node's own dialplan (extensions.conf): never touched.
                self._contexts.add(context)
                continue
            extens = {e for e, _a, _d in have or ()}
            adds = []
            if _PATTERN not in extens:
                adds.append((_PATTERN, "Goto", f"{DIALPLAN_TARGET},${{EXTEN}},1"))
            if "h" not in extens:
                adds.append(("h", "NoOp", ""))  # an exact h, or the pattern would also run at hangup
            self._contexts.add(context)  # refused or not: not asked again until the next check
            try:
                for exten, app, data in adds:
                    await session.send(
                        {
                            "Action": "DialplanExtensionAdd",
                            "Context": context,
                            "Extension": exten,
                            "Priority": "1",
                            "Application": app,
                            "ApplicationData": data,
                        }
                    )
            except AmiError as exc:
                # One endpoint's context the node will not take must not hold back every other change.
                await self._record_refusal(conn, {"Action": "DialplanExtensionAdd", "Context": context}, exc)
                continue
            await conn.execute(
                "DELETE FROM pbx.push_refusals WHERE node_id = $1 AND object = $2", self.node.id, _context_key(context)
            )
            log.info("node %s: dialplan context %s leads to %s", self.node.name, context, DIALPLAN_TARGET)

    async def _record_error(self, conn: asyncpg.Connection, message: str) -> None:
        with contextlib.suppress(Exception):
            await conn.execute(
                "INSERT INTO pbx.node_state (node_id, connected, last_error, last_error_at) "
                "VALUES ($1, false, $2, now()) ON CONFLICT (node_id) DO UPDATE "
                "SET connected = false, last_error = $2, last_error_at = now()",
                self.node.id,
                message[:500],
            )


async def aor_qualify(conn: asyncpg.Connection, ids: Sequence[str]) -> dict[str, AorQualify]:
    """The qualify settings of the AORs of ``ids`` that exist, as the node will read them."""
    if not ids:
        return {}
    rows = await conn.fetch(
        # Both columns are text in the realtime view, as Asterisk reads them.
        "SELECT id, CASE WHEN qualify_frequency ~ '^[0-9]+$' THEN qualify_frequency::int ELSE 0 END AS f, "
        "coalesce(contact, '') <> '' AS s FROM public.ps_aors WHERE id = ANY($1::text[])",
        sorted(set(ids)),
    )
    return {r["id"]: AorQualify(r["f"], r["s"]) for r in rows}


def _context_key(context: str) -> str:
    return f"context:{context}"


def _object_of(fields: dict[str, str]) -> str:
    """What a refusal is recorded against: the object, else the cache, else the dialplan context, else
    the registration."""
    if "Object" in fields:
        return fields["Object"]
    if "Context" in fields:
        return _context_key(fields["Context"])
    return fields.get("Cache") or fields.get("Module") or fields.get("Registration") or fields["Action"]


class _PartlyDone(Exception):
    """Some actions of a chunk were not confirmed; ``done`` were."""

    def __init__(self, done: list[CacheAction], cause: Exception) -> None:
        super().__init__(str(cause))
        self.done = done
        self.cause = cause


async def _dialplan(session: AmiSession) -> dict[str, list[tuple[str, str, str]]]:
    """context -> [(extension, application, data)] of the node's whole dialplan."""
    out: dict[str, list[tuple[str, str, str]]] = {}
    for msg in await session.send_list({"Action": "ShowDialPlan"}, timeout=30):
        if msg.get("Event") == "ListDialplan" and msg.get("Context"):
            out.setdefault(str(msg["Context"]), []).append(
                (str(msg.get("Extension", "")), str(msg.get("Application", "")), str(msg.get("AppData", "")))
            )
    return out


def _command_output(reply: Any) -> str:
    out = reply.get("Output", "")
    if isinstance(out, list):
        out = "\n".join(out)
    return f"{out}\n{getattr(reply, 'content', '')}"


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def run_pusher(dsn: str, stop: asyncio.Event, settings: PusherSettings | None = None) -> None:
    """What `pbxctl serve` runs next to its other services."""
    await Pusher(dsn, settings).run(stop)
