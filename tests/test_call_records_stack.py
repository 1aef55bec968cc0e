"""Call records on the real stack: played calls (answered, busy, from a carrier through a DID rule)
leave rows with the right fields, and calls going on while Postgres stops still complete, their
records held in memory and written once Postgres is back."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import test_controller_stack as live
import yaml
from stack import pbxctl, serve_url, wait_for
from test_controller_stack import Phones, conference

from devstack.stack import Stack, run_sql

pytestmark = pytest.mark.stack
phones = live.phones  # the registered phones of test_controller_stack, a fixture here too

REPO = Path(__file__).resolve().parent.parent
SHARED_TRUNKS = "scenarios/trunks/S64.yaml"  # a carrier calls in; DID rule +4930123456100 -> group 2000


def _play(stack: Stack, tmp_path: Path, doc: dict[str, Any], name: str) -> float:
    """Play the scenario; the time (epoch) just before it started."""
    f = tmp_path / f"{name}.yaml"
    doc.pop("expect", None)
    f.write_text(yaml.safe_dump(doc, sort_keys=False))
    t0 = time.time()
    p = pbxctl(stack, "call", "play", str(f), "--json")
    assert p.returncode == 0, p.stderr
    return t0


def _record(stack: Stack, called: str, since: float) -> dict[str, Any]:
    """The record of the call to `called` that started after `since`, with its legs by endpoint."""

    def probe() -> list[Any]:
        return run_sql(
            stack,
            "SELECT c.*, t.name AS tenant_now FROM pbx.call_records c LEFT JOIN pbx.tenants t ON t.id = c.tenant_id"
            " WHERE c.called = $1 AND c.started_at >= to_timestamp($2)",
            called,
            since,
        )

    [row] = wait_for(f"the record of the call to {called}", probe)
    rec = dict(row)
    legs = run_sql(stack, "SELECT * FROM pbx.call_legs WHERE node = $1 AND call_id = $2", rec["node"], rec["call_id"])
    rec["legs"] = {leg["endpoint"]: dict(leg) for leg in legs}
    return rec


def test_played_calls_leave_records_with_their_route_result_and_legs(
    stack: Stack, shared_dir: Path, tmp_path: Path
) -> None:
    l01 = yaml.safe_load((REPO / "tests" / "scenarios" / "live" / "L01.yaml").read_text())
    # Answered: 1001 calls group 2000, 1003 answers at 2 s, the rank after it started at 1 s.
    t0 = _play(stack, tmp_path, dict(l01), "answered")
    rec = _record(stack, "2000", t0)
    assert (rec["tenant"], rec["tenant_now"], rec["caller"], rec["endpoint"]) == ("t", "t", "1001", "1001@t.example")
    assert (rec["route"], rec["routed_to"], rec["did"], rec["result"]) == ("group 2000", "2000", None, "answered")
    assert rec["node"] and rec["hangup_cause"] == 16
    assert rec["started_at"] < rec["ring_at"] < rec["answered_at"] < rec["ended_at"]
    legs = rec["legs"]
    assert legs["1003@t.example"]["result"] == "answered" and rec["answered_by"] == legs["1003@t.example"]["channel_id"]
    assert legs["1002@t.example"]["result"] == "answered_elsewhere"
    assert legs["1002@t.example"]["ringing_at"] is not None and legs["1002@t.example"]["extension"] == "1002"
    assert (rec["answered_at"] - rec["started_at"]).total_seconds() == pytest.approx(2, abs=0.7)

    # Busy: 1002 answers 486 at once.
    busy = dict(l01, call={"tenant": "t", "caller": "1001", "called": "1002"}, behaviour={"dev-1002": {"busy": True}})
    busy["horizon_s"] = 3
    t0 = _play(stack, tmp_path, busy, "busy")
    rec = _record(stack, "1002", t0)
    assert (rec["route"], rec["result"], rec["hangup_cause"], rec["answered_at"]) == ("user 1002", "busy", 17, None)
    assert rec["legs"]["1002@t.example"]["result"] == "rejected"

    # From a carrier: the number it sent is the DID, what the DID rule made of it is routed_to.
    s64 = yaml.safe_load((shared_dir / SHARED_TRUNKS).read_text())
    s64["behaviour"] = {"dev-1002": {"answer_at": 0.5}}
    s64["horizon_s"] = 4
    t0 = _play(stack, tmp_path, s64, "did")
    rec = _record(stack, "+4930123456100", t0)
    assert (rec["did"], rec["routed_to"], rec["caller"], rec["endpoint"]) == (
        "+4930123456100", "2000", "+4917012345", "carrier@t.example"
    )  # fmt: skip
    assert (rec["route"], rec["result"], rec["tenant"]) == ("group 2000", "answered", "t")
    assert rec["legs"]["1002@t.example"]["result"] == "answered"

    # Each of these callers was hung up in Stasis and ran h: it never entered Stasis again from there
    # (such a second StasisStart once rewrote the busy record's route to `noroute`).
    log = stack.serve.log_text()
    assert " calls h" not in log and "from its h extension" not in log, log[-3000:]

    # What the CLI shows of them.
    p = pbxctl(stack, "calls", "history", "--tenant", "t", "--since", "10m", "--json")
    assert p.returncode == 0, p.stderr
    shown = {c["call_id"]: c for c in json.loads(p.stdout)["calls"]}
    assert shown[rec["call_id"]]["did"] == "+4930123456100"


def _metric(stack: Stack, name: str) -> float:
    async def go() -> str:
        async with aiohttp.ClientSession() as http, http.get(f"{serve_url(stack)}/metrics") as resp:
            return await resp.text()

    for line in asyncio.run(go()).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_calls_during_a_postgres_stop_complete_and_their_records_are_written_when_it_returns(
    stack: Stack, phones: Phones
) -> None:
    bob = phones.device("1002", {"answer_at": 0})
    carol = phones.device("1003", {"answer_at": 0})
    written = _metric(stack, "pbx_call_records_written_total")
    t0 = time.time()
    alice = phones.call("1001", "1002", talk_s=4)
    dave = phones.call("1004", "1003", talk_s=4)
    wait_for(
        "both calls bridged", lambda: conference(stack, 2) and len(live.controller_calls(stack)["conferences"]) == 2
    )
    stack.postgres.stop()
    try:
        # Both talk on and hang up while the database is away.
        assert alice.wait(30) == 0 and dave.wait(30) == 0
        assert bob.wait(15) == 0 and carol.wait(15) == 0
        wait_for("two records held in memory", lambda: _metric(stack, "pbx_call_records_buffered") == 2)
        assert _metric(stack, "pbx_call_records_written_total") == written
    finally:
        stack.postgres.start()
    wait_for("both written", lambda: _metric(stack, "pbx_call_records_written_total") == written + 2, 30)
    assert _metric(stack, "pbx_call_records_buffered") == 0
    assert _metric(stack, "pbx_call_records_dropped_total") == 0
    for called in ("1002", "1003"):
        rec = _record(stack, called, t0)
        assert (rec["tenant"], rec["result"], rec["hangup_cause"]) == ("conf", "answered", 16)
        assert rec["ended_at"] is not None and rec["legs"][f"{called}@conf.example"]["result"] == "answered"
