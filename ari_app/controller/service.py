"""Running the controller inside `pbxctl serve`: settings from the environment, ARI transport."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from ari_app.ari import AriClient, HttpAriTransport
from ari_app.controller.controller import Controller
from pbx_base.retry import Backoff
from pbx_base.settings import Settings, get_settings
from routing.lookup import CallLookup

__all__ = ["AriSettings", "ControllerRef", "run_controller"]

logger = logging.getLogger("ari_app.controller")


@dataclass
class ControllerRef:
    """The running controller, for HTTP routes registered before it exists (None until then)."""

    current: Controller | None = None


@dataclass(frozen=True)
class AriSettings:
    """What the controller needs of :class:`~pbx_base.settings.Settings`."""

    url: str
    user: str
    password: str = field(repr=False)
    app: str
    retry_max_s: float

    @classmethod
    def from_env(cls, settings: Settings | None = None) -> AriSettings | None:
        """None when PBX_ARI_URL is unset: the node runs without a controller."""
        s = settings or get_settings()
        if not s.ari_url:
            return None
        return cls(
            url=s.ari_url,
            user=s.ari_user,
            password=s.ari_password.get_secret_value(),
            app=s.ari_app,
            retry_max_s=s.ari_retry_max_s,
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
        client = AriClient(transport, settings.app, backoff=Backoff(maximum=settings.retry_max_s))
        controller = Controller(client, lookup)
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
