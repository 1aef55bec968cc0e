"""One AMI session to one Asterisk node, on panoramisk's protocol and message classes.

panoramisk's ``Manager`` reconnects on its own and silently re-sends, on the new connection, every
action that had no answer yet. The pusher must decide itself what to redo after a drop (and record
it), so this class owns the connection: one instance is one TCP session; when it drops, every
action in flight fails with :class:`AmiDisconnected` and the caller opens a new session.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from typing import Any

from panoramisk.actions import Action
from panoramisk.ami_protocol import AMIProtocol
from panoramisk.message import Message

from pbx_base.errors import DependencyError, Unavailable

__all__ = ["AmiDisconnected", "AmiError", "AmiSession", "AmiUnreachable"]


class AmiUnreachable(Unavailable, ConnectionError):
    """Could not connect or log in."""


class AmiDisconnected(Unavailable, ConnectionError):
    """The session ended while an action was in flight (or before it was sent)."""


class AmiError(DependencyError, RuntimeError):
    """Asterisk answered the action with an error; ``message`` is Asterisk's text."""

    def __init__(self, action: str, message: str) -> None:
        super().__init__(f"{action}: {message}")
        self.action = action
        self.message = message


class _Factory:
    """What panoramisk's AMIProtocol expects of its owner."""

    forgetable_actions = ("ping", "login")
    save_stream = None

    def __init__(self, session: AmiSession) -> None:
        self._session = session
        # AMIProtocol.close() parks unanswered actions here for a re-send; we fail them instead.
        self.awaiting_actions: deque[Action] = deque()

    def dispatch(self, message: Message) -> list[str]:
        return []  # events are not used (the session logs in with Events: off)

    def connection_lost(self, exc: object) -> None:
        self._session._lost(exc)


class AmiSession:
    def __init__(self, host: str, port: int, user: str, secret: str) -> None:
        self.host, self.port, self.user, self._secret = host, port, user, secret
        self._protocol: AMIProtocol | None = None
        self._factory = _Factory(self)
        self._closed = asyncio.Event()
        self.close_reason = ""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        return self._protocol is not None and not self._closed.is_set()

    async def connect(self, timeout: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        try:
            _transport, protocol = await asyncio.wait_for(
                loop.create_connection(AMIProtocol, self.host, self.port), timeout
            )
        except (OSError, TimeoutError) as exc:
            raise AmiUnreachable(f"AMI {self.address}: {exc or 'timeout'}") from None
        protocol.factory = self._factory
        protocol.encoding = "utf8"
        protocol.log.disabled = True  # panoramisk logs every parse at debug level and drops at error
        self._protocol = protocol
        try:
            reply = await self.send({"Action": "Login", "Username": self.user, "Secret": self._secret, "Events": "off"})
        except (AmiError, AmiDisconnected, TimeoutError) as exc:
            self.close()
            raise AmiUnreachable(f"AMI {self.address}: login refused ({exc})") from None
        del reply

    async def send(self, fields: Mapping[str, str], timeout: float = 10.0) -> Message:
        """Send one action; its single response (an :class:`AmiError` when Asterisk says Error)."""
        reply = await self._send(dict(fields), as_list=False, timeout=timeout)
        assert isinstance(reply, Message)
        return reply

    async def send_list(self, fields: Mapping[str, str], timeout: float = 10.0) -> list[Message]:
        """Send an action answered by an event list; the response and its events, in order."""
        reply = await self._send(dict(fields), as_list=None, timeout=timeout)
        return reply if isinstance(reply, list) else [reply]

    async def _send(self, fields: dict[str, str], as_list: bool | None, timeout: float) -> Any:
        if not self.connected or self._protocol is None:
            raise AmiDisconnected(f"AMI {self.address}: not connected ({self.close_reason or 'closed'})")
        action = Action(fields, as_list=as_list)
        future = self._protocol.send(action, as_list=as_list)
        try:
            reply = await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            # An action that never answers leaves the session's state unknown: end it.
            self.close(f"no answer to {fields.get('Action')} within {timeout:g}s")
            raise AmiDisconnected(f"AMI {self.address}: {self.close_reason}") from None
        first = reply[0] if isinstance(reply, list) else reply
        if first.response in ("Error", "Fail", "Failure"):
            raise AmiError(str(fields.get("Action")), str(first.message).strip())
        return reply

    async def wait_closed(self) -> str:
        await self._closed.wait()
        return self.close_reason

    def close(self, reason: str = "closed by the pusher") -> None:
        if self._protocol is not None and not self._closed.is_set():
            self.close_reason = reason
            self._protocol.close()
        self._fail_awaiting(reason)
        self._closed.set()

    def _lost(self, exc: object) -> None:
        if not self.close_reason:
            self.close_reason = "connection lost" + (f" ({exc})" if isinstance(exc, Exception) else "")
        self._fail_awaiting(self.close_reason)
        self._closed.set()

    def _fail_awaiting(self, reason: str) -> None:
        protocol = self._protocol
        pending = list(self._factory.awaiting_actions)
        self._factory.awaiting_actions.clear()
        if protocol is not None:
            pending.extend(protocol.responses.values())
            protocol.responses.clear()
        for action in pending:
            if not action.future.done():
                action.future.set_exception(AmiDisconnected(f"AMI {self.address}: {reason}"))
