"""The ARI client: typed REST resources and an event stream that survives Asterisk restarts.

The stream mixes ARI events with two connection items of our own, :class:`Connected` and
:class:`Disconnected`, in the order they happened, so a controller sees exactly where a gap in
the events is. While it is down the stream reconnects by itself with capped, jittered exponential
backoff. It ends only when Asterisk says another process took the app (:class:`ApplicationReplaced`,
yielded last): reconnecting would take it back, and two controllers would steal it in turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any

import pydantic

from ari_app.ari.events import ApplicationReplaced, Event, parse_event
from ari_app.ari.models import AsteriskInfo
from ari_app.ari.resources import Applications, AsteriskApi, Bridges, Channels, Endpoints, Playbacks
from ari_app.ari.transport import AriStatusError, AriTransport, AriUnavailable
from pbx_base.retry import Backoff

__all__ = ["AriClient", "Backoff", "Connected", "Disconnected", "StreamItem"]

logger = logging.getLogger(__name__)

# Handshake refusals that retrying cannot fix: bad credentials, a malformed app list. Anything else
# (404/503 from an HTTP server whose res_ari is not loaded yet, a refused TCP connect) is retried.
_FATAL_STATUSES = frozenset({400, 401, 403})


@dataclasses.dataclass(frozen=True)
class Connected:
    """The events WebSocket is up and the app registered: Stasis() calls reach us from now.
    ``reconnected``: an earlier session existed, events in between are lost; channels still in
    Stasis stay ours, so reconcile them (``channels.list()``)."""

    reconnected: bool


@dataclasses.dataclass(frozen=True)
class Disconnected:
    """The stream went down (or could not come up). Reported once per outage, not per retry."""

    error: str
    retry_in: float


StreamItem = Event | Connected | Disconnected


@dataclasses.dataclass(frozen=True)
class _Stop:
    error: BaseException | None = None


class AriClient:
    """``AriClient(transport, app)``: ``client.channels``, ``client.bridges``, ``client.playbacks``,
    ``client.endpoints``, ``client.applications``, ``client.asterisk`` for REST, :meth:`events` /
    :meth:`run_events` for the event stream of ``app``."""

    def __init__(
        self,
        transport: AriTransport,
        app: str,
        *,
        request_timeout: float | None = None,
        backoff: Backoff = Backoff(),
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.transport = transport
        self.app = app
        self.channels = Channels(transport, app, request_timeout)
        self.bridges = Bridges(transport, app, request_timeout)
        self.asterisk = AsteriskApi(transport, app, request_timeout)
        self.endpoints = Endpoints(transport, app, request_timeout)
        self.applications = Applications(transport, app, request_timeout)
        self.playbacks = Playbacks(transport, app, request_timeout)
        self.connected = False
        self._backoff = backoff
        self._sleep = sleep
        self._rand = rand
        self._clock = clock

    async def asterisk_info(self, only: Sequence[str] | None = None) -> AsteriskInfo:
        return await self.asterisk.info(only)

    async def events(self) -> AsyncGenerator[StreamItem, None]:
        """Events of our app with :class:`Connected`/:class:`Disconnected` in between, forever,
        until :class:`ApplicationReplaced` (yielded, then the stream ends). Raises :class:`AriStatusError`
        when Asterisk refuses the handshake for good (401, 403, 400). Run one stream per app name
        at a time: a second one, here or in another process, replaces the first. Close it with
        ``contextlib.aclosing`` (or cancel its task) so the WebSocket closes at once."""
        # A task reads the socket because Connected must be yielded when the handshake succeeds,
        # which happens inside the transport's iterator while we would be waiting for an event.
        queue: asyncio.Queue[StreamItem | _Stop] = asyncio.Queue()
        producer = asyncio.create_task(self._produce(queue.put_nowait), name=f"ari-events-{self.app}")
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _Stop):
                    if item.error is not None:
                        raise item.error
                    return
                yield item
        finally:
            await _cancel_and_wait(producer)

    async def run_events(self, handler: Callable[[StreamItem], Awaitable[None]]) -> ApplicationReplaced:
        """Await ``handler`` on each stream item in order; return the ApplicationReplaced that
        ended the stream (after the handler saw it). A handler's exception stops the loop."""
        async with contextlib.aclosing(self.events()) as stream:
            async for item in stream:
                await handler(item)
                if isinstance(item, ApplicationReplaced):
                    return item
        raise AssertionError("the ARI event stream ended without ApplicationReplaced")

    async def _produce(self, put: Callable[[StreamItem | _Stop], None]) -> None:
        try:
            await self._reconnect_loop(put)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            put(_Stop(e))

    async def _reconnect_loop(self, put: Callable[[StreamItem | _Stop], None]) -> None:
        attempt = 0
        ever_up = False
        reported_down = False
        while True:
            opened_at: float | None = None

            def on_open(reconnected: bool = ever_up) -> None:
                nonlocal opened_at, reported_down
                opened_at = self._clock()
                reported_down = False
                self.connected = True
                logger.info("ARI events connected for app %s", self.app)
                put(Connected(reconnected=reconnected))

            try:
                async with contextlib.aclosing(self.transport.events(self.app, on_open=on_open)) as stream:
                    async for raw in stream:
                        event = _parse(raw)
                        if event is None:
                            continue
                        put(event)
                        if isinstance(event, ApplicationReplaced) and event.application in ("", self.app):
                            self.connected = False
                            logger.warning("ARI app %s was taken by another connection; not reconnecting", self.app)
                            put(_Stop())
                            return
                error = "events WebSocket closed by Asterisk"
            except AriStatusError as e:
                if e.status in _FATAL_STATUSES:
                    self.connected = False
                    put(_Stop(e))
                    return
                error = str(e)
            except AriUnavailable as e:
                error = str(e)

            self.connected = False
            if opened_at is not None:
                ever_up = True
                if self._clock() - opened_at >= self._backoff.reset_after:
                    attempt = 0
            delay = self._backoff.delay(attempt, self._rand())
            attempt += 1
            logger.warning("ARI events down for app %s (%s); retry %d in %.2f s", self.app, error, attempt, delay)
            if not reported_down:
                reported_down = True
                put(Disconnected(error=error, retry_in=delay))
            await self._sleep(delay)


def _parse(raw: dict[str, Any]) -> Event | None:
    try:
        return parse_event(raw)
    except pydantic.ValidationError as e:
        # Skipped, not fatal: one odd payload must not take down every call in progress.
        logger.error("ARI event %s not understood, skipped: %s; payload %.500r", raw.get("type"), e, raw)
        return None


async def _cancel_and_wait(task: asyncio.Task[None]) -> None:
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        # The producer's cancellation is expected; ours (someone cancelling this task) is not ours
        # to swallow.
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
