"""Writing call records to Postgres in batches, away from the calls.

:meth:`RecordWriter.put` is the recorder's sink: it appends to a bounded in-memory queue and returns,
so nothing a call does waits for the database. One task takes up to ``batch`` records at a time and
writes them (their calls and legs) in one transaction on its own connection, ``linger_s`` after the
first of them arrived: calls that end close together share one write, and a write rarely lands
beside the setup of the next call (bench/calls.py, records on vs off). While the database is
away the queue fills up to ``buffer`` records and then drops the oldest; the task reconnects with
backoff and writes what is left once the database is back. Counted in the controller's metrics:
``pbx_call_records_written_total``, ``pbx_call_records_dropped_total``, ``pbx_call_records_buffered``.

A batch whose commit outcome is unknown (the connection dropped during COMMIT) is written again:
both tables' keys make a second write of the same call a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from datetime import UTC, datetime
from typing import Any

import asyncpg

from ari_app.controller.metrics import Metrics
from ari_app.controller.records import CallRecord
from pbx_base.retry import Backoff

__all__ = ["RecordWriter"]

log = logging.getLogger("ari_app.controller.records")


def _unnest_insert(table: str, columns: list[tuple[str, str]], key: str) -> str:
    """One INSERT of a whole batch: the rows come as one array per column (``$n::type[]``),
    unnested server-side; the tenant comes from the row's domain (a join, not a query per row).
    Set-based, this costs Postgres a fraction of a statement per row (executemany)."""
    names = [name for name, _ in columns]
    arrays = ", ".join(f"${i}::{kind}[]" for i, (_, kind) in enumerate(columns, 1))
    target = [n for n in names if n != "domain"]
    values = [
        "t.id" if n == "tenant_id" else "coalesce(r.tenant, t.name)" if n == "tenant" else f"r.{n}"
        for n in ["tenant_id", *target]
    ]
    return (
        f"INSERT INTO pbx.{table} (tenant_id, {', '.join(target)})"
        f" SELECT {', '.join(values)} FROM unnest({arrays}) AS r({', '.join(names)})"
        f" LEFT JOIN pbx.tenants t ON t.domain = r.domain ON CONFLICT {key} DO NOTHING"
    )


_CALL_COLUMNS = [
    ("node", "text"), ("call_id", "text"), ("domain", "text"), ("tenant", "text"), ("caller", "text"),
    ("caller_name", "text"), ("endpoint", "text"), ("called", "text"), ("did", "text"), ("routed_to", "text"),
    ("route", "text"), ("started_at", "timestamptz"), ("ring_at", "timestamptz"), ("answered_at", "timestamptz"),
    ("ended_at", "timestamptz"), ("result", "text"), ("hangup_cause", "int"), ("answered_by", "text"),
    ("transferred_from", "text"), ("transferred_to", "text"),
]  # fmt: skip
_LEG_COLUMNS = [
    ("node", "text"), ("call_id", "text"), ("domain", "text"), ("channel_id", "text"), ("kind", "text"),
    ("endpoint", "text"), ("device", "text"), ("extension", "text"), ("started_at", "timestamptz"),
    ("ringing_at", "timestamptz"), ("answered_at", "timestamptz"), ("ended_at", "timestamptz"), ("result", "text"),
    ("hangup_cause", "int"), ("transferred_from", "text"), ("transferred_to", "text"),
]  # fmt: skip
# A call written twice (a batch whose commit outcome was unknown, written again) adds no row;
# nor does the same call twice in one batch.
_CALL_SQL = _unnest_insert("call_records", _CALL_COLUMNS, "(node, call_id)")
_LEG_SQL = _unnest_insert("call_legs", _LEG_COLUMNS, "(node, call_id, channel_id)")
# Whatever makes a write fail for now: the database away, restarting, or not migrated yet.
_RETRY = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def _at(t: float | None) -> datetime | None:
    return datetime.fromtimestamp(t, UTC) if t is not None else None


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    return [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


def call_row(r: CallRecord) -> tuple[Any, ...]:
    return (
        r.node, r.call_id, r.domain, r.tenant, r.caller, r.caller_name, r.endpoint, r.called, r.did,
        r.routed_to, r.route, _at(r.started_at), _at(r.ring_at), _at(r.answered_at), _at(r.ended_at),
        r.result, r.hangup_cause, r.answered_by, r.transferred_from, r.transferred_to,
    )  # fmt: skip


def leg_rows(r: CallRecord) -> list[tuple[Any, ...]]:
    return [
        (
            r.node,
            r.call_id,
            r.domain,
            g.channel_id,
            g.kind,
            g.endpoint,
            g.device,
            g.extension,
            _at(g.started_at),
            _at(g.ringing_at),
            _at(g.answered_at),
            _at(g.ended_at),
            g.result,
            g.hangup_cause,
            g.transferred_from,
            g.transferred_to,
        )
        for g in r.legs.values()
    ]


class RecordWriter:
    def __init__(
        self,
        dsn: str,
        metrics: Metrics,
        *,
        buffer: int,
        batch: int = 500,
        linger_s: float = 1.0,
        backoff: Backoff = Backoff(initial=0.2, maximum=5.0, jitter=0.0),
    ) -> None:
        self.dsn = dsn
        self.metrics = metrics
        self.buffer = buffer
        self.batch = batch
        self.linger_s = linger_s
        self._closing = False
        self.backoff = backoff
        self._queue: deque[CallRecord] = deque()
        self._wake = asyncio.Event()
        self._writing = 0  # records taken from the queue, not yet written
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None

    def put(self, record: CallRecord) -> None:
        self._queue.append(record)
        self._bound()
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="call-records")

    async def aclose(self, timeout: float = 5.0) -> None:
        """Write what is queued, for at most ``timeout`` seconds, then stop."""
        self._closing = True
        self._wake.set()
        try:
            async with asyncio.timeout(timeout):
                while (self._queue or self._writing) and self._task is not None and not self._task.done():
                    await asyncio.sleep(0.02)
        except TimeoutError:
            log.warning("call records: %d not written at shutdown", len(self._queue) + self._writing)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._disconnect()

    async def _run(self) -> None:
        attempt = 0
        while True:
            await self._wake.wait()
            if not self._closing:
                await asyncio.sleep(self.linger_s)
            self._wake.clear()
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(self.batch, len(self._queue)))]
                self._writing = len(batch)
                try:
                    await self._write(batch)
                except asyncpg.DataError as exc:  # a value Postgres refuses: writing it again cannot help
                    log.error("call records: %d dropped: %s", len(batch), exc)
                    self.metrics.inc("pbx_call_records_dropped_total", len(batch))
                    continue
                except _RETRY as exc:
                    log.warning("call records: %s; %d waiting, retrying", exc, len(batch) + len(self._queue))
                    self.metrics.inc("pbx_failures_total", kind="records")
                    self._queue.extendleft(reversed(batch))
                    self._writing = 0
                    self._bound()
                    await self._disconnect()
                    await asyncio.sleep(self.backoff.delay(attempt))
                    attempt += 1
                    continue
                finally:
                    self._writing = 0
                attempt = 0
                self.metrics.inc("pbx_call_records_written_total", len(batch))
                self.metrics.set("pbx_call_records_buffered", len(self._queue))

    async def _write(self, batch: list[CallRecord]) -> None:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self.dsn, timeout=5, command_timeout=10)
        legs = [row for r in batch for row in leg_rows(r)]
        async with self._conn.transaction():
            await self._conn.execute(_CALL_SQL, *_columns([call_row(r) for r in batch], len(_CALL_COLUMNS)))
            if legs:
                await self._conn.execute(_LEG_SQL, *_columns(legs, len(_LEG_COLUMNS)))

    def _bound(self) -> None:
        """Drop the oldest beyond the buffer (records being written count too)."""
        while self._queue and len(self._queue) + self._writing > self.buffer:
            self._queue.popleft()
            self.metrics.inc("pbx_call_records_dropped_total")
        self.metrics.set("pbx_call_records_buffered", len(self._queue) + self._writing)

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)
