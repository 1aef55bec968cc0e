"""A stand-in Stasis app for the stack's own checks: answers the first call, reports what it saw.

The real controller (ari_app) routes calls; this only proves the Stasis() path end to end.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import aiohttp

from devstack.settings import StackSettings

__all__ = ["answer_first_call"]


async def answer_first_call(settings: StackSettings, ready: asyncio.Event, seen: list[dict[str, Any]]) -> None:
    """Connect the events WebSocket (then set ``ready``), answer the first StasisStart over REST,
    return at its StasisEnd. Every event is appended to ``seen``."""
    s = settings
    auth = {"Authorization": "Basic " + base64.b64encode(f"{s.ari_user}:{s.ari_password}".encode()).decode()}
    async with (
        aiohttp.ClientSession(headers=auth) as http,
        http.ws_connect(f"{s.ari_url}/ari/events?app={s.ari_app}") as ws,
    ):
        ready.set()
        async for msg in ws:
            event = json.loads(msg.data)
            seen.append(event)
            if event["type"] == "StasisStart":
                async with http.post(f"{s.ari_url}/ari/channels/{event['channel']['id']}/answer") as resp:
                    event["answer_status"] = resp.status
            elif event["type"] == "StasisEnd":
                return
