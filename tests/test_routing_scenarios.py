"""Routing acceptance scenarios through `pbxctl route simulate`: the shared folders and our own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# (shared or ours, folder): ours hold what the public examples do not show, with the same checker.
FOLDERS = [("shared", "routing"), ("shared", "trunks"), ("ours", "trunks")]


@pytest.mark.parametrize(("where", "folder"), FOLDERS, ids=[f"{w}-{f}" for w, f in FOLDERS])
def test_routing_scenarios_pass(shared_dir: Path, where: str, folder: str) -> None:
    root = shared_dir / "scenarios" if where == "shared" else REPO / "tests" / "scenarios"
    p = subprocess.run(
        [
            sys.executable,
            str(shared_dir / "tools" / "check-scenarios"),
            "--pbxctl",
            f"{sys.executable} -m pbxctl",
            str(root / folder),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "0 failed" in p.stdout
