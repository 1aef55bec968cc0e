"""`pbxctl serve`: the long-running services of a node."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from typing import Any

import asyncpg
from aiohttp import web

from http_api.listen import Listen, listen_plan
from pbx_base.settings import DEFAULTS, Settings, get_settings
from pbxctl.commands._db import add_dsn_argument
from pbxctl.errors import EXIT_USAGE, CliError, Unreachable
from sorcery_backend.db import MissingDsn, dsn_from, service_pool

__all__ = ["register"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("serve", help="run the node's services until stopped")
    add_dsn_argument(p)
    p.add_argument(
        "--http",
        metavar="HOST:PORT",
        help=f"where the HTTP API listens (default: $PBX_HTTP_ADDR, else {DEFAULTS.http_addr}; "
        "not loopback only with PBX_HTTP_TLS_CERT/KEY)",
    )
    p.add_argument("--no-push", action="store_true", help="do not run the change pusher (AMI)")
    p.add_argument(
        "--outbox-keep",
        type=float,
        metavar="SECONDS",
        help=f"keep delivered rows of pbx.outbox this long as history "
        f"(default: $PBX_OUTBOX_KEEP_S, else {DEFAULTS.outbox_keep_s:g})",
    )
    p.add_argument(
        "--no-controller", action="store_true", help="do not run the ARI controller (it runs when PBX_ARI_URL is set)"
    )
    p.set_defaults(func=_serve)


async def _run(dsn: str, listen: Listen, settings: Settings, push: bool = True, controller: bool = True) -> None:
    from ari_app.controller import AriSettings, ControllerRef, run_controller
    from http_api.controller import add_routes
    from http_api.route import make_app
    from http_api.tokens import TokenStore
    from routing_store.cache import RoutingData
    from routing_store.lookup import DbLookup
    from sorcery_backend.contacts_sync import run_contact_sync
    from sorcery_backend.pusher import PusherSettings, run_pusher

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    try:
        pool = await service_pool(dsn, max_size=settings.pool_size)
    except (OSError, asyncpg.PostgresError) as exc:
        raise Unreachable(f"cannot reach the database: {exc}") from None
    # One routing cache for the routing API and the controller: the API's app keeps it fresh.
    routing = RoutingData(pool, retry_max_s=settings.db_retry_max_s)
    app = make_app(pool, routing, verify=TokenStore(pool).verify, open_paths=listen.open_paths)
    ari = AriSettings.from_env(settings) if controller else None
    ref = ControllerRef()
    if ari is not None:
        add_routes(app, ref)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, listen.host, listen.port, ssl_context=listen.ssl_context).start()
    except OSError as exc:
        raise Unreachable(f"cannot listen on {listen.host}:{listen.port}: {exc.strerror}") from None
    print(f"serving the routing API on {listen.url}/route (bearer tokens)", file=sys.stderr, flush=True)
    services: list[asyncio.Task[None]] = []
    if push:
        pusher = run_pusher(dsn, stop, PusherSettings.from_settings(settings))
        services.append(asyncio.create_task(pusher, name="pusher"))
        print("change pusher running", file=sys.stderr, flush=True)
        # The nodes' contacts back into ps_contacts when Postgres lost rows (a crash empties it).
        services.append(asyncio.create_task(run_contact_sync(dsn, stop), name="contacts"))
    if ari is not None:
        services.append(
            asyncio.create_task(
                run_controller(
                    ari, DbLookup(pool, routing), stop, ref, dsn if settings.call_records else None, nodes_dsn=dsn
                ),
                name="controller",
            )
        )
        print(f"ARI controller running for app {ari.app} at {ari.url}", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        stop.set()
        for task in services:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, 10)
        await runner.cleanup()
        await pool.close()


def _serve(args: argparse.Namespace) -> int:
    try:
        dsn = dsn_from(args.dsn)
    except MissingDsn as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    settings = get_settings()
    if args.outbox_keep is not None:
        settings = settings.model_copy(update={"outbox_keep_s": args.outbox_keep})
    # Refused before anything starts: no address beyond loopback without TLS.
    listen = listen_plan(args.http or settings.http_addr, settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        asyncio.run(
            _run(
                dsn,
                listen,
                settings,
                push=not args.no_push,
                controller=not args.no_controller,
            )
        )
    except KeyboardInterrupt:
        pass
    return 0
