"""The least any ARI controller does for a call, as a baseline for bench/calls.py.

On the caller's StasisStart it originates one leg to a fixed device; on the leg's Up it answers
the caller and bridges both in a mixing bridge, as the controller does. No routing, no database,
no bookkeeping, straight on aiohttp. Its setup time over Dial()'s is what ARI call control itself
costs on this machine: the controller can only add to it.

The bench points one endpoint at it through a dialplan context added at run time
(:func:`install_context`), so the shipped dialplan carries nothing for it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from typing import Any

import aiohttp

from devstack.stack import Stack

__all__ = ["APP", "CONTEXT", "FloorApp", "install_context"]

APP = "pbx-floor"
CONTEXT = "pbx-ari-floor"


def install_context(stack: Stack) -> None:
    out = stack.asterisk.rx(f"dialplan add extension _X.,1,Stasis({APP},${{EXTEN}}) into {CONTEXT}")
    if "added" not in out.lower():
        raise SystemExit(f"adding the {CONTEXT} context: {out.strip()}")


class FloorApp:
    """Runs in a thread of its own with its own event loop, beside the bench's blocking sipp runs."""

    def __init__(self, stack: Stack, dial_string: str) -> None:
        s = stack.settings
        self._base = s.ari_url + "/ari"
        self._ws = s.ari_url.replace("http", "ws", 1) + f"/ari/events?app={APP}&subscribeAll=false"
        token = base64.b64encode(f"{s.ari_user}:{s.ari_password}".encode()).decode()
        self._headers = {"Authorization": f"Basic {token}"}
        self._dial = dial_string
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="ari-floor", daemon=True)

    def __enter__(self) -> FloorApp:
        self._thread.start()
        if not self._ready.wait(15) or self._error is not None:
            raise SystemExit(f"the baseline ARI app did not connect: {self._error}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported by __enter__ if it happens before the ready signal
            self._error = exc
            self._ready.set()

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        tasks: set[asyncio.Task[None]] = set()
        legs: dict[str, str] = {}  # leg channel id -> caller channel id
        count = 0
        async with aiohttp.ClientSession(headers=self._headers) as http:

            async def req(method: str, path: str, **params: str) -> None:
                async with http.request(method, self._base + path, params=params) as r:
                    await r.read()

            def spawn(coro: Any) -> None:
                task = asyncio.create_task(coro)
                tasks.add(task)
                task.add_done_callback(tasks.discard)

            async def answer(caller: str, leg: str) -> None:
                await req("POST", f"/channels/{caller}/answer")
                await req("POST", "/bridges", type="mixing", bridgeId=f"{leg}-b")
                await req("POST", f"/bridges/{leg}-b/addChannel", channel=f"{caller},{leg}")

            async def end(caller: str, leg: str) -> None:
                for path in (f"/channels/{caller}", f"/channels/{leg}", f"/bridges/{leg}-b"):
                    await req("DELETE", path)

            async with http.ws_connect(self._ws) as ws:
                self._ready.set()
                closing = asyncio.create_task(self._close_on_stop(ws))
                async for msg in ws:  # ends when __exit__ closes the socket
                    if msg.type is not aiohttp.WSMsgType.TEXT:
                        break
                    ev = json.loads(msg.data)
                    kind, channel = ev["type"], ev.get("channel", {}).get("id", "")
                    if kind == "StasisStart" and ev.get("args", [""])[:1] != ["leg"]:
                        count += 1
                        leg = f"floor{count}-l"
                        legs[leg] = channel
                        spawn(
                            req("POST", "/channels", endpoint=self._dial, app=APP, appArgs="leg", channelId=leg,
                                originator=channel, timeout="-1")
                        )  # fmt: skip
                    elif kind == "ChannelStateChange" and ev["channel"]["state"] == "Up" and channel in legs:
                        spawn(answer(legs[channel], channel))
                    elif kind == "StasisEnd":
                        for leg, caller in list(legs.items()):
                            if channel in (leg, caller):
                                del legs[leg]
                                spawn(end(caller, leg))
                closing.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _close_on_stop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        assert self._stop is not None
        await self._stop.wait()
        await ws.close()
