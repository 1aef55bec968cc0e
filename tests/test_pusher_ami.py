"""AmiSession against a scripted AMI server on a real socket. Replies are byte-for-byte what
Asterisk 22.10.1 sent (tests/fixtures/ami/, captured from the dev stack), with the ActionID swapped."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sorcery_backend.ami import AmiDisconnected, AmiError, AmiSession, AmiUnreachable

FIXTURES = Path(__file__).parent / "fixtures" / "ami"
REPLIES = {
    "login": "login",
    "corestatus": "corestatus",
    "command": "cache_show",
    "showdialplan": "showdialplan_context",
    "sorcerymemorycacheexpireobject": "expire_object_not_cached",
}


class FakeAmi:
    """Answers each action from the fixtures; ``hang`` actions get no answer, ``drop`` ones close the socket."""

    def __init__(self) -> None:
        self.received: list[dict[str, str]] = []
        self.hang: set[str] = set()
        self.drop: set[str] = set()
        self.refuse_login = False
        self.server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"Asterisk Call Manager/9.0.0\r\n")
        try:
            while True:
                block = await reader.readuntil(b"\r\n\r\n")
                fields = dict(line.split(": ", 1) for line in block.decode().strip().split("\r\n") if ": " in line)
                self.received.append(fields)
                action = fields["Action"].lower()
                if action in self.drop:
                    writer.close()
                    return
                if action in self.hang:
                    continue
                if action == "login" and self.refuse_login:
                    reply = b"Response: Error\r\nActionID: x\r\nMessage: Authentication failed\r\n\r\n"
                else:
                    reply = (FIXTURES / f"{REPLIES[action]}.txt").read_bytes()
                writer.write(re.sub(rb"ActionID: [^\r]*", f"ActionID: {fields['ActionID']}".encode(), reply))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@pytest.fixture
async def ami() -> AsyncIterator[FakeAmi]:
    fake = FakeAmi()
    fake.server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    try:
        yield fake
    finally:
        fake.server.close()


async def session(fake: FakeAmi) -> AmiSession:
    s = AmiSession("127.0.0.1", fake.port, "pbx", "secret")
    await s.connect(timeout=5)
    return s


async def test_login_then_simple_list_and_command_replies(ami: FakeAmi) -> None:
    s = await session(ami)
    assert ami.received[0] == {
        "Action": "Login",
        "ActionID": ami.received[0]["ActionID"],
        "Events": "off",
        "Secret": "secret",
        "Username": "pbx",
    }
    status = await s.send({"Action": "CoreStatus"})
    assert (status["CoreStartupDate"], status["CoreStartupTime"]) == ("2026-11-30", "04:46:25")
    listed = await s.send_list({"Action": "ShowDialPlan", "Context": "acme-internal"})
    extensions = [(m["Extension"], m["Application"]) for m in listed if m.get("Event") == "ListDialplan"]
    assert extensions == [("h", "NoOp"), ("_[+*#0-9a-zA-Z]!", "Goto")]
    shown = await s.send({"Action": "Command", "Command": "sorcery memory cache show res_pjsip/endpoint"})
    assert "Number of objects within cache: 2" in shown["Output"]
    s.close()


async def test_an_error_reply_raises_with_asterisks_text(ami: FakeAmi) -> None:
    s = await session(ami)
    with pytest.raises(AmiError) as err:
        await s.send({"Action": "SorceryMemoryCacheExpireObject", "Cache": "res_pjsip/endpoint", "Object": "x"})
    assert err.value.message == "The provided object could not be expired from the cache"
    assert s.connected  # an error reply is not a broken session
    s.close()


async def test_a_drop_fails_every_action_in_flight_and_nothing_is_resent(ami: FakeAmi) -> None:
    s = await session(ami)
    ami.hang.add("sorcerymemorycacheexpireobject")
    in_flight = [
        asyncio.create_task(s.send({"Action": "SorceryMemoryCacheExpireObject", "Cache": "c", "Object": f"o{i}"}))
        for i in range(5)
    ]
    while len(ami.received) < 6:
        await asyncio.sleep(0.01)
    ami.drop.add("corestatus")
    with pytest.raises(AmiDisconnected):
        await s.send({"Action": "CoreStatus"})
    for task in in_flight:
        with pytest.raises(AmiDisconnected):
            await asyncio.wait_for(task, 5)
    assert not s.connected
    with pytest.raises(AmiDisconnected):
        await s.send({"Action": "CoreStatus"})
    # panoramisk's Manager would re-send the five on its next connection; a new session sends only its own.
    ami.drop.clear()
    before = len(ami.received)
    again = await session(ami)
    await again.send({"Action": "CoreStatus"})
    assert [r["Action"] for r in ami.received[before:]] == ["Login", "CoreStatus"]
    again.close()


async def test_an_unanswered_action_times_out_and_ends_the_session(ami: FakeAmi) -> None:
    s = await session(ami)
    ami.hang.add("corestatus")
    with pytest.raises(AmiDisconnected, match="no answer to CoreStatus"):
        await s.send({"Action": "CoreStatus"}, timeout=0.2)
    assert not s.connected
    assert "no answer" in await asyncio.wait_for(s.wait_closed(), 1)


async def test_refused_login_and_refused_connection_are_unreachable(ami: FakeAmi) -> None:
    ami.refuse_login = True
    with pytest.raises(AmiUnreachable, match="login refused"):
        await session(ami)
    port = ami.port
    assert ami.server is not None
    ami.server.close()
    await ami.server.wait_closed()
    with pytest.raises(AmiUnreachable):
        await AmiSession("127.0.0.1", port, "pbx", "x").connect(timeout=2)
