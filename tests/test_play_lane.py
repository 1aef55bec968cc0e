"""devstack.play_lane: a scenario moved to a lane of its own keeps what its devices see."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from devstack.play import _plan
from devstack.play_lane import in_lane
from routing.simulate import simulate

REPO = Path(__file__).resolve().parent.parent
TRUNK = REPO / "tests" / "scenarios" / "trunks" / "T01.yaml"


def test_tenants_domains_and_loopback_addresses_move_to_the_lane() -> None:
    doc = yaml.safe_load(TRUNK.read_text())
    moved = in_lane(doc, 7)
    assert moved["call"]["tenant"] == "t-l7"
    assert list(moved["config"]["tenants"]) == ["t-l7"]
    tenant = moved["config"]["tenants"]["t-l7"]
    assert tenant["domain"] == "l7.t.example"
    text = yaml.safe_dump(tenant)
    assert "127.0." not in text and "127.7.0.2:5070" in text
    _config, plan = _plan(moved)
    assert {ip for _ep, ip, _port in plan.static.values()} <= {f"127.7.0.{n}" for n in range(2, 10)}
    assert doc["config"]["tenants"]["t"]["domain"] == "t.example", "the scenario itself is left alone"


def test_a_lane_simulates_like_the_scenario() -> None:
    for path in [TRUNK, *sorted((REPO / "tests" / "scenarios" / "live").glob("L*.yaml"))]:
        doc = yaml.safe_load(path.read_text())
        doc.pop("expect", None)
        assert simulate(in_lane(doc, 3)) == simulate(doc), path.name


def test_only_the_exact_127_0_prefix_moves() -> None:
    doc = {
        "call": {"tenant": "a"},
        "config": {
            "tenants": {
                "a": {
                    "domain": "a.example",
                    "endpoints": {
                        "x": {"aor": {"contact": ["sip:127.0.0.9:5070", "sip:10.127.0.1.5", "sip:127.1.0.2"]}}
                    },
                }
            }
        },
    }
    contacts = in_lane(doc, 2)["config"]["tenants"]["a-l2"]["endpoints"]["x"]["aor"]["contact"]
    assert contacts == ["sip:127.2.0.9:5070", "sip:10.127.0.1.5", "sip:127.1.0.2"]


@pytest.mark.parametrize("lane", [0, 255])
def test_a_lane_out_of_range_is_a_one_line_error(lane: int) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "pbxctl", "call", "play", str(TRUNK), "--lane", str(lane)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert p.returncode == 1
    assert p.stderr.strip() == f"pbxctl: --lane {lane}: not between 1 and 254"
