"""Running the controller inside `pbxctl serve`: settings from the environment, ARI transport."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from ari_app.ari import AriClient, HttpAriTransport
from ari_app.controller.controller import Controller
from ari_app.controller.metrics import Metrics
from ari_app.controller.peer_nodes import follow_peers, own_ari_addr
from ari_app.controller.peers import PeerFeeds, peer_app
from ari_app.controller.record_writer import RecordWriter
from ari_app.controller.records import NO_RECORDS, CallRecorder
from pbx_base.retry import Backoff
from pbx_base.settings import DEFAULTS, Settings, get_settings
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
    records_buffer: int = DEFAULTS.call_records_buffer

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
            records_buffer=s.call_records_buffer,
        )


async def run_controller(
    settings: AriSettings,
    lookup: CallLookup,
    stop: asyncio.Event,
    ref: ControllerRef,
    records_dsn: str | None = None,
    nodes_dsn: str | None = None,
) -> None:
    """Until ``stop`` is set. Calls in progress stay in Asterisk when it stops; the next controller
    adopts their conferences and ends the calls it cannot know. With ``records_dsn`` every call is
    recorded in that database (records.py, record_writer.py). With ``nodes_dsn`` the devices on a
    call on the other nodes of pbx.nodes count as in use too (peers.py, peer_nodes.py)."""
    metrics = Metrics()
    writer = RecordWriter(records_dsn, metrics, buffer=settings.records_buffer) if records_dsn else None
    records = CallRecorder(writer.put) if writer is not None else NO_RECORDS
    async with HttpAriTransport(settings.url, settings.user, settings.password) as transport, _writing(writer):
        client = AriClient(transport, settings.app, backoff=Backoff(maximum=settings.retry_max_s))
        controller = Controller(client, lookup, metrics=metrics, records=records)
        ref.current = controller
        own = own_ari_addr(settings.url)
        peers = PeerFeeds(
            controller.presence,
            # The cluster's one ARI user: every node's ari.conf has the same.
            app=peer_app(settings.app, own),
            connect=lambda addr: HttpAriTransport(f"http://{addr}", settings.user, settings.password),
            metrics=metrics,
            backoff=Backoff(maximum=settings.retry_max_s),
        )
        following = (
            asyncio.create_task(follow_peers(nodes_dsn, own, peers.update), name="ari-peers")
            if nodes_dsn is not None
            else None
        )
        try:
            await _control(controller, stop, settings.app)
        finally:
            if following is not None:
                following.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await following
            await peers.close()


async def _control(controller: Controller, stop: asyncio.Event, app: str) -> None:
    """The controller's own node, until ``stop`` or until another process takes its app."""
    task = asyncio.create_task(controller.run(), name="ari-controller")
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        stopper.cancel()
        exc = task.exception()
        if exc is not None:
            raise exc
        logger.error("another controller took the ARI app %s; this one stops", app)
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@contextlib.asynccontextmanager
async def _writing(writer: RecordWriter | None) -> AsyncIterator[None]:
    """The writer's task for as long as the controller runs; what is queued at the end (the
    records of calls still going, see CallRecorder.close) is written before it stops."""
    if writer is None:
        yield
        return
    writer.start()
    try:
        yield
    finally:
        await writer.aclose()
