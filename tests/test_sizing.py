"""bench/sizing.py: the sizing table of docs/sizing.md, computed from bench/sizing_inputs.yaml."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import yaml

from bench.sizing import ENDPOINTS, INPUTS, load_inputs, size, table

ROOT = Path(__file__).resolve().parent.parent


def test_docs_table_matches_the_inputs() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sizing.py"), "--check"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_input_says_where_it_comes_from() -> None:
    doc = yaml.safe_load(INPUTS.read_text())
    for group in doc.values():
        for name, item in group.items():
            assert item["source"].split(":")[0] in {"measured", "derived", "assumed"}, name
            assert float(item["value"]) > 0, name


def test_more_endpoints_never_need_less() -> None:
    x = load_inputs()
    rows = [size(e, 10, x) for e in ENDPOINTS]
    for small, big in itertools.pairwise(rows):
        assert big.nodes >= small.nodes
        assert big.postgres_cores > small.postgres_cores
        assert big.postgres_gb > small.postgres_gb


def test_the_working_nodes_stay_under_the_target_and_one_spare_is_left() -> None:
    x = load_inputs()
    assert size(1_000, 10, x).nodes == 2
    for e in ENDPOINTS:
        assert size(e, 10, x).node_load <= x["target_utilisation"]


def test_identify_grows_with_trunks_not_nodes() -> None:
    x = load_inputs()
    few, many = size(100_000, 10, x), size(100_000, 100_000, x)
    assert many.identify_ms_per_request == few.identify_ms_per_request * 10_000
    assert many.nodes == few.nodes
    assert all(r.tenants <= r.endpoints for r in table(x))
