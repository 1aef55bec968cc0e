"""compose/render_asterisk_conf.py: the container's Asterisk config from the PBX_* settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "compose" / "render_asterisk_conf.py"


def _render(out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PBX_")}
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(REPO / "asterisk_conf"), str(out)],
        env={**clean, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        check=False,
    )


SECRETS = {"PBX_ASTERISK_DB_PASSWORD": "dbpw", "PBX_ARI_PASSWORD": "aripw", "PBX_AMI_PASSWORD": "amipw"}


def test_renders_settings_and_defaults(tmp_path: Path) -> None:
    r = _render(tmp_path, **SECRETS, PBX_AMI_PORT="6038")
    assert r.returncode == 0, r.stderr
    assert "secret = amipw" in (tmp_path / "manager.conf").read_text()
    assert "port = 6038" in (tmp_path / "manager.conf").read_text()
    assert "bindport = 8088" in (tmp_path / "http.conf").read_text()


def test_missing_secrets_are_one_line_and_nothing_is_written(tmp_path: Path) -> None:
    r = _render(tmp_path, PBX_ARI_PASSWORD="aripw")
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0
    assert "PBX_ASTERISK_DB_PASSWORD" in r.stderr and "PBX_AMI_PASSWORD" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_cluster_node_listens_on_its_own_address_under_its_name(tmp_path: Path) -> None:
    r = _render(tmp_path, **SECRETS, PBX_NODE_HOST="127.0.0.22", PBX_SYSTEMNAME="node2")
    assert r.returncode == 0, r.stderr
    assert "bind = 127.0.0.22:5060" in (tmp_path / "pjsip.conf").read_text()
    assert "bindaddr = 127.0.0.22" in (tmp_path / "http.conf").read_text()
    assert "bindaddr = 127.0.0.22" in (tmp_path / "manager.conf").read_text()
    assert "systemname = node2\n" in (tmp_path / "asterisk.conf").read_text()
