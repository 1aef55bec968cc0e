"""The cluster's SIP edge in a container (compose/): Kamailio with the project's kamailio.cfg, its
values taken from the PBX_* settings and rendered by the dev stack's code, then run with the dev
stack's command line (``exec``: Kamailio becomes the container's process).

Usage: python -m devstack.edge_container DIR [--wait SECONDS]

Kamailio reads its node list from Postgres once at start and exits when it cannot, so it starts
only once its login works and can read the node list (another container migrates the database
and provisions that login). Nodes added later reach it over the RPC socket (``PBX_KAMAILIO_RPC``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from pathlib import Path

import asyncpg

from devstack.kamailio import KamailioError, edge_defines, kamailio_argv, write_edge_config
from pbx_base.settings import Settings, SettingsError, get_settings

__all__ = ["main", "render"]

# Kamailio's db_url has no escaping: a password it could misread (":", "@", "/") is refused.
_URL_SAFE = re.compile(r"[A-Za-z0-9._~-]+")


def _db_url(s: Settings) -> str:
    password = s.kamailio_db_password.get_secret_value()
    if not password:
        raise SettingsError("the SIP edge container needs PBX_KAMAILIO_DB_PASSWORD")
    if not _URL_SAFE.fullmatch(password) or not _URL_SAFE.fullmatch(s.kamailio_db_user):
        raise SettingsError(
            "PBX_KAMAILIO_DB_USER and PBX_KAMAILIO_DB_PASSWORD: only letters, digits and ._~- (Kamailio's db_url)"
        )
    return f"postgres://{s.kamailio_db_user}:{password}@{s.db_host}:{s.db_port}/{s.db_name}"


def render(directory: Path, s: Settings) -> tuple[Path, str]:
    """kamailio.cfg and edge.cfg in ``directory``; returns the config and the database URL."""
    rpc = s.kamailio_rpc
    if rpc is None:
        raise SettingsError("the SIP edge container needs PBX_KAMAILIO_RPC (its JSON-RPC socket)")
    db_url = _db_url(s)
    # kamcmd's socket beside the RPC one: one directory shared with the controllers.
    ctl = rpc.parent / "ctl.sock"
    for sock in (rpc, ctl):  # left by a killed predecessor (a restarted container): the bind would fail
        sock.unlink(missing_ok=True)
    defines = edge_defines("the SIP edge container", f"{s.edge_host}:{s.sip_port}", db_url, rpc, ctl)
    return write_edge_config(directory, defines), db_url


async def _node_list_problem(db_url: str) -> str | None:
    try:
        conn = await asyncpg.connect(db_url, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return str(exc) or type(exc).__name__
    try:
        await conn.fetchval("SELECT count(*) FROM kamailio.dispatcher")
    except asyncpg.PostgresError as exc:
        return str(exc)
    finally:
        await conn.close()
    return None


def wait_for_node_list(db_url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (problem := asyncio.run(_node_list_problem(db_url))) is not None:
        if time.monotonic() >= deadline:
            raise KamailioError(f"the edge's database login cannot read the node list after {timeout:g}s: {problem}")
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devstack.edge_container", description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="where the rendered config and Kamailio's runtime files go")
    parser.add_argument("--wait", type=float, default=120.0, metavar="SECONDS", help="for the database login")
    args = parser.parse_args(argv)
    try:
        config, db_url = render(args.dir, get_settings())
        wait_for_node_list(db_url, args.wait)
        command = kamailio_argv(config)
    except (SettingsError, KamailioError) as exc:
        sys.exit(f"edge_container: {exc}")
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
