"""`pbxctl route explain` against a real database (scenario files: test_routing_scenarios.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg

from sorcery_backend.apply import apply_config
from sorcery_backend.declarative import parse_config

CONFIG = {
    "tenants": {
        "t": {
            "domain": "t.example",
            "endpoints": {n: {"auth": {"password": "x"}} for n in ("1001", "1002")},
            "extensions": {
                "1001": {"type": "simple", "name": "Alice", "endpoints": ["1001"]},
                "1002": {"type": "simple", "name": "Bob", "endpoints": ["1002"]},
                "2000": {"type": "group", "name": "Team", "short_name": "T", "ranks": [{"members": ["1002"]}]},
            },
        }
    }
}


def explain(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pbxctl", "route", "explain", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, PBX_DATABASE_URL=db),
        timeout=60,
    )


async def test_explain_from_the_database_with_svg(db: str, tmp_path: Path) -> None:
    conn = await asyncpg.connect(db)
    await apply_config(conn, parse_config(CONFIG))
    await conn.close()
    svg = tmp_path / "tree.svg"
    p = explain(db, "--tenant", "t", "--caller", "1001", "--called", "2000", "--json", "--svg", str(svg))
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["status"] == "ok" and out["callername_prefix"] == "[T]"
    assert svg.read_text().startswith("<svg") and "2000 Team" in svg.read_text()

    text = explain(db, "--tenant", "t", "--caller", "1001", "--called", "2000")
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[:2] == ["t: call to 2000: ok", "  2000 'Team' (group)"]
    unknown = explain(db, "--tenant", "nope", "--caller", "1", "--called", "2")
    assert unknown.returncode == 1 and unknown.stderr == "pbxctl: tenant nope: unknown tenant\n"
