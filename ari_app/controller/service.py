"""Running the controller inside `pbxctl serve`: settings from the environment, ARI transport."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass

from ari_app.ari import AriClient, HttpAriTransport
from ari_app.controller.controller import Controller
from routing.lookup import CallLookup

__all__ = ["AriSettings", "ControllerRef", "run_controller"]

logger = logging.getLogger("ari_app.controller")


@dataclass
class ControllerRef:
    """The running controller, for HTTP routes registered before it exists (None until then)."""

    current: Controller | None = None


@dataclass(frozen=True)
class AriSettings:
    url: str
    user: str
    password: str
    app: str = "pbx"

    @classmethod
    def from_env(cls) -> AriSettings | None:
        """None when PBX_ARI_URL is unset: the node runs without a controller."""
        url = os.environ.get("PBX_ARI_URL")
        if not url:
            return None
        return cls(
            url=url,
            user=os.environ.get("PBX_ARI_USER", "pbx"),
            password=os.environ.get("PBX_ARI_PASSWORD", ""),
            app=os.environ.get("PBX_ARI_APP", "pbx"),
        )


async def run_controller(
    settings: AriSettings,
    lookup: CallLookup,
    stop: asyncio.Event,
    ref: ControllerRef,
) -> None:
    """Until ``stop`` is set. Calls in progress stay in Asterisk when it stops; the next controller
    adopts their conferences and ends the calls it cannot know."""
    async with HttpAriTransport(settings.url, settings.user, settings.password) as transport:
        controller = Controller(AriClient(transport, settings.app), lookup)
        ref.current = controller
        task = asyncio.create_task(controller.run(), name="ari-controller")
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            stopper.cancel()
            exc = task.exception()
            if exc is not None:
                raise exc
            logger.error("another controller took the ARI app %s; this one stops", settings.app)
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
