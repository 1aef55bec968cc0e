"""The SIP edge's container entry point (devstack/edge_container.py): kamailio.cfg's values from the
PBX_* settings through the dev stack's rendering, and the wait for the edge's database login."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from devstack.edge_container import render, wait_for_node_list
from devstack.kamailio import CONFIG, KamailioError
from pbx_base.settings import Settings, SettingsError
from sorcery_backend.schema import ensure_login


def _settings(tmp_path: Path, **values: object) -> Settings:
    base: dict[str, object] = {
        "kamailio_db_password": "edge-pw",
        "kamailio_rpc": tmp_path / "shared" / "rpc.sock",
        "edge_host": "127.0.0.20",
        "sip_port": 5070,
        "db_port": 6543,
    }
    return Settings(**(base | values))  # type: ignore[arg-type]


def test_render_writes_the_projects_config_and_the_edges_values(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "ctl.sock").write_text("left by a killed edge")
    config, db_url = render(tmp_path / "etc", _settings(tmp_path))
    assert config == tmp_path / "etc" / CONFIG and config.read_text().startswith("#!KAMAILIO")
    edge = tmp_path / "etc" / "edge.cfg"
    assert edge.stat().st_mode & 0o777 == 0o600
    text = edge.read_text()
    assert "#!define EDGE_LISTEN udp:127.0.0.20:5070\n" in text
    assert db_url == "postgres://kamailio:edge-pw@127.0.0.1:6543/pbx"
    assert f'#!define DB_URL "{db_url}"' in text
    assert f'#!define RPC_SOCKET "{tmp_path}/shared/rpc.sock"' in text
    assert f'#!define CTL_SOCKET "unix:{tmp_path}/shared/ctl.sock"' in text
    assert not (tmp_path / "shared" / "ctl.sock").exists()


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"kamailio_db_password": ""}, "PBX_KAMAILIO_DB_PASSWORD"),
        ({"kamailio_db_password": "p@ss:word"}, "PBX_KAMAILIO_DB_PASSWORD"),
        ({"kamailio_rpc": None}, "PBX_KAMAILIO_RPC"),
    ],
)
def test_refusals_name_the_setting_and_write_nothing(tmp_path: Path, values: dict[str, object], named: str) -> None:
    with pytest.raises(SettingsError, match=named) as err:
        render(tmp_path / "etc", _settings(tmp_path, **values))
    assert "p@ss" not in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "etc").exists()


def test_the_entry_point_fails_in_one_line_without_its_settings(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PBX_")}
    p = subprocess.run(
        [sys.executable, "-m", "devstack.edge_container", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 1 and p.stderr.strip().count("\n") == 0, p.stderr
    assert "PBX_KAMAILIO" in p.stderr


@pytest.mark.skipif(shutil.which("kamailio") is None, reason="kamailio is not installed")
def test_kamailio_accepts_the_config_the_container_renders(tmp_path: Path) -> None:
    config, _ = render(tmp_path / "etc", _settings(tmp_path))
    r = subprocess.run(["kamailio", "-c", "-f", str(config)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "config file ok" in r.stdout + r.stderr, r.stderr[-2000:]


def _on(db: str, *steps: Callable[[asyncpg.Connection], Awaitable[object]]) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(db)
        try:
            for step in steps:
                await step(conn)
        finally:
            await conn.close()

    asyncio.run(run())


def test_the_wait_ends_once_the_login_reads_the_node_list(db: str) -> None:
    user = f"edge_{os.getpid()}"
    where = urlsplit(db)
    url = f"postgres://{user}:edge-pw@{where.hostname}:{where.port}{where.path}"
    with pytest.raises(KamailioError, match=r"cannot read the node list after 0\.5s") as err:
        wait_for_node_list(url, 0.5)  # no such login yet
    assert "edge-pw" not in str(err.value)
    _on(db, lambda conn: ensure_login(conn, user, "edge-pw", "pbx_kamailio"))
    try:
        wait_for_node_list(url, 10)
    finally:
        _on(db, lambda conn: conn.execute(f'DROP OWNED BY "{user}"'), lambda conn: conn.execute(f'DROP ROLE "{user}"'))
