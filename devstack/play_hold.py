"""The calls of a live play's ``in_use``: each held up on every node through its ARI (why every
node: devstack/play_nodes.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from ari_app.ari import AriClient, AriNotFound, DialplanTarget, HttpAriTransport
from devstack import sipp
from devstack.play_nodes import PlayError, PlayTarget
from devstack.play_sipp import device_xml
from devstack.sipp import SippProcess

__all__ = ["hold_calls"]


@contextlib.asynccontextmanager
async def hold_calls(target: PlayTarget, domain: str, in_use: Mapping[str, int], tmp: Path) -> AsyncIterator[None]:
    """``in_use`` (endpoint -> count) as calls up on every node for the block, hung up after it."""
    async with contextlib.AsyncExitStack() as stack:
        for node, url in enumerate(target.ari_urls, start=1):
            transport = await stack.enter_async_context(HttpAriTransport(url, target.ari_user, target.ari_password))
            ari = AriClient(transport, "pbx-play")
            for endpoint, count in in_use.items():
                for n in range(count):
                    channel_id, holder = await _hold_a_call(ari, target.sip_addr, domain, endpoint, f"{node}-{n}", tmp)
                    stack.push_async_callback(_release, ari, channel_id, holder)
        yield


async def _release(ari: AriClient, channel_id: str, holder: SippProcess) -> None:
    try:
        await ari.channels.hangup(channel_id)
    except AriNotFound:
        pass
    finally:
        holder.stop()


async def _hold_a_call(
    ari: AriClient, sip_addr: str, domain: str, endpoint: str, n: str, tmp: Path
) -> tuple[str, SippProcess]:
    """A call up on ``endpoint`` that is not the scenario's: a channel from the endpoint to a sipp
    that answers (context pbx-hold of the dev stack's dialplan, devstack/asterisk_dev/, keeps it up)."""
    d = tmp / f"hold-{endpoint}-{n}"
    d.mkdir()
    holder = SippProcess(f"hold-{endpoint}", sipp.free_udp_port(), d)
    holder.start(sip_addr, device_xml({"answer_at": 0}, 0), ["-"], 600)
    channel_id = f"pbx-play-hold-{endpoint}-{n}-{os.getpid()}"
    try:
        await ari.channels.originate(
            f"PJSIP/{endpoint}@{domain}/sip:hold@127.0.0.1:{holder.port}",
            dialplan=DialplanTarget("pbx-hold", "hold", 1),
            channel_id=channel_id,
            timeout=10,
        )
    except BaseException:
        holder.stop()
        raise
    deadline = time.monotonic() + 10
    while True:
        try:
            state = (await ari.channels.get(channel_id)).state
        except AriNotFound:
            state = "gone"
        if state == "Up":
            return channel_id, holder
        if state == "gone" or time.monotonic() > deadline:
            holder.stop()
            raise PlayError(f"in_use: could not hold a call up on {endpoint} (channel {state})")
        await asyncio.sleep(0.05)
