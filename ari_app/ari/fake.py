"""An in-memory :class:`~ari_app.ari.transport.AriTransport` for tests (like httpx's MockTransport).

REST calls are recorded and answered by handlers routed on method and path pattern; events are
pushed by the test. Every events() session reads the same script, so a test can write a whole
life in advance: events, a drop, refused reconnects, more events.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import inspect
import re
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Any

from ari_app.ari.transport import AriNotFound

__all__ = ["FakeAriTransport", "FakeRequest"]


@dataclasses.dataclass(frozen=True)
class FakeRequest:
    method: str
    path: str
    params: Mapping[str, str]
    json: Any
    timeout: float | None
    # Values of the route's {placeholders}, e.g. {"channel_id": "1.2"} for /channels/{channel_id}.
    path_params: Mapping[str, str] = dataclasses.field(default_factory=dict)


class _Drop:
    """Script item: the server closes the current WebSocket."""


_DROP = _Drop()


class FakeAriTransport:
    """Routes: ``fake.route("POST", "/channels/{channel_id}/answer", handler_or_value)``. A handler
    gets a :class:`FakeRequest` and returns the JSON body (may be async, may raise
    :class:`AriError`); a non-callable is returned as is. An unrouted request is a 404 unless
    ``default`` is given (a value or handler for every unrouted request)."""

    _NO_DEFAULT: Any = object()

    def __init__(self, *, default: Any = _NO_DEFAULT) -> None:
        self.requests: list[FakeRequest] = []
        # Apps asked for by each events() session that got past the handshake, in order.
        self.sessions: list[list[str]] = []
        self._routes: list[tuple[str, re.Pattern[str], Any]] = []
        self._default = default
        self._script: asyncio.Queue[dict[str, Any] | _Drop | BaseException] = asyncio.Queue()
        self._refusals: collections.deque[BaseException] = collections.deque()
        self._open = 0
        self.closed = False

    async def close(self) -> None:
        self.closed = True

    # REST

    def route(self, method: str, pattern: str, answer: Any) -> None:
        regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(pattern))
        # Newest first, so a test can override a route set up by a shared fixture.
        self._routes.insert(0, (method.upper(), re.compile(regex + r"\Z"), answer))

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        timeout: float | None = None,
    ) -> Any:
        request = FakeRequest(method.upper(), path, dict(params or {}), json, timeout)
        self.requests.append(request)
        for route_method, regex, answer in self._routes:
            match = regex.match(path)
            if route_method == request.method and match:
                request = dataclasses.replace(request, path_params=match.groupdict())
                return await _answer(answer, request)
        if self._default is not self._NO_DEFAULT:
            return await _answer(self._default, request)
        raise AriNotFound(404, f"fake: no route for {request.method} {path}")

    def calls(self, method: str | None = None, path: str | None = None) -> list[FakeRequest]:
        return [
            r
            for r in self.requests
            if (method is None or r.method == method.upper()) and (path is None or r.path == path)
        ]

    # Events

    def push(self, *events: dict[str, Any]) -> None:
        for event in events:
            self._script.put_nowait(event)

    def drop(self, error: BaseException | None = None) -> None:
        """End the current session: cleanly, or by raising ``error`` (e.g. AriUnavailable)."""
        self._script.put_nowait(_DROP if error is None else error)

    def refuse(self, *errors: BaseException) -> None:
        """The next len(errors) connection attempts fail with these errors, in order."""
        self._refusals.extend(errors)

    @property
    def open_sessions(self) -> int:
        return self._open

    async def wait_sessions(self, count: int, *, timeout: float = 5.0) -> None:
        """Until ``count`` sessions have opened. Polls: simpler than a condition that generator
        finalizers would have to notify."""
        async with asyncio.timeout(timeout):
            while len(self.sessions) < count:
                await asyncio.sleep(0.001)

    async def events(
        self, app: str | Sequence[str], *, on_open: Callable[[], None] | None = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        if self._refusals:
            raise self._refusals.popleft()
        self.sessions.append([app] if isinstance(app, str) else list(app))
        self._open += 1
        try:
            if on_open is not None:
                on_open()
            while True:
                item = await self._script.get()
                if isinstance(item, _Drop):
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._open -= 1


async def _answer(answer: Any, request: FakeRequest) -> Any:
    if not callable(answer):
        return answer
    result = answer(request)
    if inspect.isawaitable(result):
        result = await result
    return result
