"""The I/O seam of the ARI client: REST requests and the events WebSocket.

Everything above this module speaks in paths relative to ``/ari`` and in decoded JSON, so the
client, the controller and their tests can run against :class:`FakeAriTransport` without sockets.
"""

from __future__ import annotations

import asyncio
import base64
import json as jsonlib
import logging
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Any, Protocol

import aiohttp

from pbx_base.errors import DependencyError, Unavailable

__all__ = [
    "AriConflict",
    "AriError",
    "AriNotFound",
    "AriStatusError",
    "AriTransport",
    "AriUnavailable",
    "HttpAriTransport",
    "error_for_status",
]

logger = logging.getLogger(__name__)


class AriError(DependencyError):
    """Any failure of an ARI request or of the events stream: catch this for "ARI did not do it"."""


class AriStatusError(AriError):
    """Asterisk answered with an HTTP error. ``message`` is ARI's own ``{"message": ...}`` text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"ARI {status}: {message}")
        self.status = status
        self.message = message


class AriNotFound(AriStatusError):
    """404: the channel, bridge or variable is gone (often just a hangup racing our request)."""


class AriConflict(AriStatusError):
    """409: the object exists but is not in our Stasis app (left it, or an id already taken)."""


class AriUnavailable(AriError, Unavailable):
    """Asterisk could not be reached or did not answer in time. The request may or may not have
    been applied: a timed-out POST is not known to have failed."""


def error_for_status(status: int, message: str) -> AriStatusError:
    if status == 404:
        return AriNotFound(status, message)
    if status == 409:
        return AriConflict(status, message)
    return AriStatusError(status, message)


class AriTransport(Protocol):
    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        timeout: float | None = None,
    ) -> Any:
        """One REST call; ``path`` is relative to ``/ari`` (``/channels/{id}/answer``). Returns the
        decoded JSON body, None for an empty one. ``timeout`` None means the transport's default."""
        ...

    def events(
        self, app: str | Sequence[str], *, on_open: Callable[[], None] | None = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        """One WebSocket session for ``app``: yields each event as a dict and ends when the socket
        closes. ``on_open`` runs once the handshake succeeded, before any event: Stasis() only
        reaches the app from that moment, and no event tells us so (Asterisk sends
        ApplicationRegistered on outbound sockets only)."""
        ...


class HttpAriTransport:
    """:class:`AriTransport` over aiohttp.

    ``base_url`` is Asterisk's HTTP server (``http://127.0.0.1:8088``), with or without ``/ari``.
    A session passed in stays the caller's; one created here is closed by :meth:`close`.
    """

    def __init__(
        self,
        base_url: str,
        user: str,
        password: str,
        session: aiohttp.ClientSession | None = None,
        *,
        request_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        heartbeat: float | None = 20.0,
    ) -> None:
        base = base_url.rstrip("/")
        self._base = base if base.endswith("/ari") else base + "/ari"
        # Built by hand: aiohttp 3.14 deprecates BasicAuth/auth=, and a header also reaches the
        # WebSocket handshake without relying on the session's defaults.
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        self._headers = {"Authorization": f"Basic {token}"}
        self._session = session
        self._owns_session = session is None
        self._request_timeout = request_timeout
        self._connect_timeout = connect_timeout
        # Pings find a half-open TCP connection (Asterisk host gone without a FIN), which would
        # otherwise look like a quiet system forever.
        self._heartbeat = heartbeat

    async def __aenter__(self) -> HttpAriTransport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        # Created lazily: a ClientSession wants a running loop, the constructor may not have one.
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        timeout: float | None = None,
    ) -> Any:
        seconds = self._request_timeout if timeout is None else timeout
        where = f"{method} {path}"
        try:
            async with self._http().request(
                method,
                self._base + path,
                params=dict(params) if params else None,
                json=json,
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=seconds),
            ) as resp:
                body = await resp.read()
                status, reason = resp.status, resp.reason or ""
        except TimeoutError as e:
            raise AriUnavailable(f"{where}: no answer in {seconds:g} s") from e
        except (aiohttp.ClientError, OSError) as e:
            raise AriUnavailable(f"{where}: {e!r}") from e
        if status >= 400:
            raise error_for_status(status, _error_message(body, reason))
        if not body:
            return None
        try:
            return jsonlib.loads(body)
        except ValueError as e:
            raise AriStatusError(status, f"{where}: response is not JSON") from e

    async def events(
        self, app: str | Sequence[str], *, on_open: Callable[[], None] | None = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        apps = [app] if isinstance(app, str) else list(app)
        params = {"app": ",".join(apps), "subscribeAll": "false"}
        try:
            # aiohttp's WebSocket timeouts cover frames, not the handshake; a stalled upgrade
            # must not hang the reconnect loop.
            async with asyncio.timeout(self._connect_timeout):
                ws = await self._http().ws_connect(
                    self._base + "/events", params=params, headers=self._headers, heartbeat=self._heartbeat
                )
        except aiohttp.WSServerHandshakeError as e:
            raise error_for_status(e.status, e.message or "WebSocket handshake refused") from e
        except TimeoutError as e:
            raise AriUnavailable(f"events: no handshake in {self._connect_timeout:g} s") from e
        except (aiohttp.ClientError, OSError) as e:
            raise AriUnavailable(f"events: {e!r}") from e
        try:
            if on_open is not None:
                on_open()
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    event = _decode_event(msg.data)
                    if event is not None:
                        yield event
                elif msg.type is aiohttp.WSMsgType.ERROR:
                    raise AriUnavailable(f"events: {ws.exception()!r}")
            logger.debug("ARI events socket closed (code %s)", ws.close_code)
        finally:
            await ws.close()


def _decode_event(text: str) -> dict[str, Any] | None:
    try:
        event = jsonlib.loads(text)
    except ValueError:
        logger.warning("ARI event is not JSON, skipped: %.200s", text)
        return None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        logger.warning("ARI event without a type, skipped: %.200s", text)
        return None
    return event


def _error_message(body: bytes, reason: str) -> str:
    try:
        decoded = jsonlib.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip() or reason
    if isinstance(decoded, dict):
        # ARI's errors are {"message": ...}; the HTTP server's own ones (no module) differ.
        for key in ("message", "error"):
            if isinstance(decoded.get(key), str):
                return str(decoded[key])
    return reason
