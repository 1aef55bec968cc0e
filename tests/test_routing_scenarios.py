"""The shared routing acceptance scenarios, through `pbxctl route simulate`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_public_routing_scenarios_pass(shared_dir: Path) -> None:
    p = subprocess.run(
        [
            sys.executable,
            str(shared_dir / "tools" / "check-scenarios"),
            "--pbxctl",
            f"{sys.executable} -m pbxctl",
            str(shared_dir / "scenarios" / "routing"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "0 failed" in p.stdout
