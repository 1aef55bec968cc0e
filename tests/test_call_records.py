"""Call records: the recorder fed by the controller on the fake ARI transport (no database), the
batch writer against real Postgres, reading them back (CLI, HTTP) and row-level security.

The live stack's records are in test_call_records_stack.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from test_audit import tenant_admin
from test_controller import Rig, channel, destroyed, rig, stasis_start
from test_controller_transfer import answered_call, refer, replaces

from ari_app.controller.metrics import Metrics
from ari_app.controller.record_writer import RecordWriter
from ari_app.controller.records import CallRecord, CallRecorder, LegRecord
from http_api.route import make_app
from http_api.tokens import Principal
from pbxctl.cli import main
from sorcery_backend.apply import apply_config
from sorcery_backend.call_history import read_calls
from sorcery_backend.declarative import parse_config

__all__ = ["rig"]  # the fixture, used by name


@pytest.fixture
def records(rig: Rig) -> list[CallRecord]:
    out: list[CallRecord] = []
    rig.controller.records = CallRecorder(out.append, grace_s=0.05)
    return out


def _leg_number(channel_id: str) -> str:
    return channel_id.rsplit("l", 1)[1]


async def test_an_answered_blind_transfer_names_the_transferer_and_the_target(
    rig: Rig, records: list[CallRecord]
) -> None:
    bob = await answered_call(rig)
    rig.fake.push(refer(channel("A"), "1003"))
    [ring] = await rig.until("the target rings", lambda: [o for o in rig.originates() if "-t" in o.params["channelId"]])
    carol = ring.params["channelId"]
    rig.fake.push(
        destroyed("A", 16),
        stasis_start(carol, "leg", "A-t", "1", endpoint="1003@t.example"),
        {"type": "ChannelStateChange", "application": "pbx", "channel": {**channel(carol), "state": "Up"}},
    )
    await rig.until("Carol bridged", lambda: rig.fake.calls("POST", "/bridges/conf-A/addChannel")[1:])
    rig.fake.push(destroyed(carol, 16), destroyed(bob, 16))
    [rec] = await rig.until("the record", lambda: [r for r in records if r.call_id == "A"])
    assert (rec.transferred_from, rec.transferred_to) == ("A", "1003")


async def test_an_answered_attended_transfer_names_the_transferer_and_the_second_call(
    rig: Rig, records: list[CallRecord]
) -> None:
    bob = await answered_call(rig, "A", "1002")
    carol = await answered_call(rig, "B", "1003")
    rig.fake.push(replaces(carol))
    await rig.until("Carol joined Bob", lambda: carol in rig.controller.conferences["A"].members)
    rig.fake.push(destroyed("A", 16), destroyed("B", 16), destroyed(carol, 16), destroyed(bob, 16))
    recs = await rig.until("both records", lambda: len(records) == 2 and {r.call_id: r for r in records})
    assert (recs["A"].transferred_from, recs["A"].transferred_to) == ("A", "B")
    assert (recs["B"].transferred_from, recs["B"].transferred_to) == (None, None)


async def test_an_answered_call_is_one_record_with_a_row_per_leg(rig: Rig, records: list[CallRecord]) -> None:
    rig.fake.push(stasis_start("A", "2001") | {"asterisk_id": "00:11:22:33:44:55"})
    legs = await rig.until("two rings", lambda: len(rig.originates()) == 2 and rig.originates())
    ids = [leg.params["channelId"] for leg in legs]
    rig.fake.push(
        {"type": "ChannelStateChange", "application": "pbx", "channel": channel(ids[0]) | {"state": "Ringing"}}
    )
    rig.fake.push(stasis_start(ids[1], "leg", "A", _leg_number(ids[1]), endpoint="1003@t.example"))
    await rig.until("the bridge", lambda: rig.fake.calls("POST", "/bridges/conf-A/addChannel"))
    await rig.until("the other leg stopped", lambda: rig.hangups(ids[0]))
    assert not records  # nothing until the call is over
    rig.fake.push(destroyed(ids[0], 16), destroyed("A", 16))
    [rec] = await rig.until("the record", lambda: records)
    assert (rec.node, rec.call_id, rec.domain, rec.tenant, rec.caller, rec.called) == (
        "00:11:22:33:44:55", "A", "t.example", "t", "1001", "2001"
    )  # fmt: skip
    assert (rec.route, rec.routed_to, rec.did, rec.result, rec.hangup_cause) == (
        "group 2001",
        "2001",
        None,
        "answered",
        16,
    )
    assert rec.answered_by == ids[1] and rec.ended_at is not None
    assert rec.started_at <= rec.ring_at <= rec.answered_at <= rec.ended_at  # type: ignore[operator]
    rung, answered = rec.legs[ids[0]], rec.legs[ids[1]]
    assert (rung.endpoint, rung.extension, rung.result, rung.hangup_cause) == (
        "1002@t.example", "1002", "answered_elsewhere", 16
    )  # fmt: skip
    assert rung.ringing_at is not None and rung.answered_at is None
    assert (answered.endpoint, answered.result, answered.kind) == ("1003@t.example", "answered", "leg")
    assert answered.answered_at is not None
    assert not rig.controller.records.open


async def test_busy_devices_give_a_busy_record_with_the_callers_cause(rig: Rig, records: list[CallRecord]) -> None:
    rig.fake.push(stasis_start("A", "2001"))
    legs = await rig.until("two rings", lambda: len(rig.originates()) == 2 and rig.originates())
    for leg in legs:
        rig.fake.push(destroyed(leg.params["channelId"], 17))
    await rig.until("the caller hung up", lambda: rig.hangups("A"))
    rig.fake.push(destroyed("A", 17))
    [rec] = await rig.until("the record", lambda: records)
    assert (rec.result, rec.hangup_cause, rec.answered_at) == ("busy", 17, None)
    assert {leg.result for leg in rec.legs.values()} == {"rejected"}


async def test_a_caller_who_hangs_up_while_it_rings_is_cancelled(rig: Rig, records: list[CallRecord]) -> None:
    rig.fake.push(stasis_start("A", "1002"))
    [leg] = await rig.until("the ring", rig.originates)
    rig.fake.push(destroyed("A", 16))
    [rec] = await rig.until("the record", lambda: records)
    assert (rec.result, rec.hangup_cause) == ("cancelled", 16)
    assert rec.legs[leg.params["channelId"]].result == "cancelled"


async def test_an_unrouted_call_is_recorded_with_its_refusal(rig: Rig, records: list[CallRecord]) -> None:
    rig.fake.push(stasis_start("A", "9999"))
    await rig.until("refused", lambda: rig.hangups("A"))
    rig.fake.push(destroyed("A", 1))
    [rec] = await rig.until("the record", lambda: records)
    assert (rec.route, rec.result, rec.hangup_cause, rec.legs, rec.ring_at) == ("noroute", "noroute", 1, {}, None)


async def test_a_call_whose_caller_end_is_never_seen_is_written_after_the_grace(
    rig: Rig, records: list[CallRecord]
) -> None:
    rig.fake.push(stasis_start("A", "9999"))
    [rec] = await rig.until("the record without the caller's ChannelDestroyed", lambda: records)
    assert (rec.result, rec.hangup_cause) == ("noroute", None)


async def test_a_party_added_to_the_conference_is_a_leg_of_its_call(rig: Rig, records: list[CallRecord]) -> None:
    rig.fake.push(stasis_start("A", "1002"))
    [leg] = await rig.until("the ring", rig.originates)
    leg_id = leg.params["channelId"]
    rig.fake.push(stasis_start(leg_id, "leg", "A", _leg_number(leg_id), endpoint="1002@t.example"))
    await rig.until("bridged", lambda: rig.fake.calls("POST", "/bridges/conf-A/addChannel"))
    await rig.until("the conference is the controller's", lambda: "A" in rig.controller.conferences)
    party = await rig.controller.add_party("A", "1003")
    rig.controller.records.set_transfer("A", transferred_to="1003", channel_id=party)
    rig.fake.push(stasis_start(party, "party", "A", "1", endpoint="1003@t.example"))
    await rig.until("the party joined", lambda: len(rig.fake.calls("POST", "/bridges/conf-A/addChannel")) == 2)
    rig.fake.push(destroyed("A", 16), destroyed(leg_id, 16))
    [rec] = await rig.until("the record", lambda: records)
    assert rec.legs[party].kind == "party" and rec.legs[party].endpoint == "1003@t.example"
    assert rec.legs[party].answered_at is not None and rec.legs[party].transferred_to == "1003"


async def test_a_disabled_recorder_keeps_nothing(rig: Rig) -> None:
    rig.fake.push(stasis_start("A", "9999"))
    await rig.until("refused", lambda: rig.hangups("A"))
    assert not rig.controller.records.open


# --- the batch writer ----------------------------------------------------------------------------

TENANTS = {
    "tenants": {
        "acme": {
            "domain": "acme.example",
            "endpoints": {"1001": {"auth": {"password": "x"}}},
            "extensions": {"1001": {"type": "simple", "name": "Alice", "endpoints": ["1001"]}},
        },
        "beta": {
            "domain": "beta.example",
            "endpoints": {"1001": {"auth": {"password": "y"}}},
            "extensions": {"1001": {"type": "simple", "name": "Bob", "endpoints": ["1001"]}},
        },
    }
}


def record(call_id: str, domain: str | None = "acme.example", *, at: float | None = None, **kw: Any) -> CallRecord:
    t = time.time() if at is None else at
    rec = CallRecord(
        node="n1",
        call_id=call_id,
        caller="1001",
        caller_name="Alice",
        endpoint=f"1001@{domain}",
        called="0301234",
        started_at=t,
        domain=domain,
        route="trunk 0",
        ring_at=t + 0.01,
        answered_at=t + 1,
        ended_at=t + 5,
        result="answered",
        hangup_cause=16,
        answered_by=f"{call_id}-l1",
        **kw,
    )
    rec.legs[f"{call_id}-l1"] = LegRecord(
        f"{call_id}-l1", "leg", f"gw@{domain}", "gw@x", "0", t + 0.01, t + 0.2, t + 1, t + 5, "answered", 16
    )
    return rec


async def _seeded(db: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(db)
    await apply_config(conn, parse_config(TENANTS))
    return conn


async def _drained(writer: RecordWriter, metrics: Metrics, n: int) -> None:
    async with asyncio.timeout(10):
        while metrics.value("pbx_call_records_written_total") < n:
            await asyncio.sleep(0.01)


async def test_the_writer_writes_calls_and_legs_in_batches(db: str) -> None:
    conn = await _seeded(db)
    metrics = Metrics()
    writer = RecordWriter(db, metrics, buffer=100, batch=2, linger_s=0.05)
    writer.start()
    try:
        writer.put(record("c0", did="0301234", routed_to="1001"))
        for i in range(5):  # c0 twice in one batch of 2: no second row
            writer.put(record(f"c{i}", did="0301234", routed_to="1001"))
        writer.put(record("b1", "beta.example"))
        writer.put(record("x1", None))  # arrived on no endpoint of ours: no tenant
        writer.put(record("c0"))  # the same call in a later batch (one written twice): no second row
        await _drained(writer, metrics, 9)
    finally:
        await writer.aclose()
    try:
        rows = await conn.fetch(
            "SELECT c.call_id, c.tenant, t.name FROM pbx.call_records c LEFT JOIN pbx.tenants t ON t.id = c.tenant_id"
        )
        assert sorted(tuple(r) for r in rows) == sorted(
            [*((f"c{i}", "acme", "acme") for i in range(5)), ("b1", "beta", "beta"), ("x1", None, None)]
        )
        assert await conn.fetchval("SELECT count(*) FROM pbx.call_legs") == 7
        [call] = await read_calls(conn, tenant="beta")
        assert set(call) == {
            "node", "call_id", "tenant", "caller", "caller_name", "endpoint", "called", "did", "routed_to",
            "route", "started_at", "ring_at", "answered_at", "ended_at", "result", "hangup_cause",
            "answered_by", "transferred_from", "transferred_to", "legs",
        }  # fmt: skip
        assert call["started_at"].endswith("+00:00") and call["legs"][0]["answered_at"].endswith("+00:00")
        assert call["legs"][0]["channel_id"] == "b1-l1" and call["legs"][0]["result"] == "answered"
        acme = await read_calls(conn, tenant="acme", limit=3)
        assert [c["did"] for c in acme] == ["0301234"] * 3
        assert metrics.value("pbx_call_records_dropped_total") == 0
        assert metrics.value("pbx_call_records_buffered") == 0
    finally:
        await conn.close()


async def test_a_database_outage_buffers_up_to_the_bound_and_drops_the_oldest(db: str) -> None:
    conn = await _seeded(db)
    metrics = Metrics()
    # Nothing listens on port 1: the database is away until the writer is pointed back at it.
    writer = RecordWriter("postgresql://postgres@127.0.0.1:1/none", metrics, buffer=3, batch=2, linger_s=0)
    writer.start()
    try:
        for i in range(5):
            writer.put(record(f"c{i}"))
        async with asyncio.timeout(5):
            while metrics.value("pbx_failures_total", kind="records") < 2:
                await asyncio.sleep(0.01)
        assert metrics.value("pbx_call_records_dropped_total") == 2
        assert metrics.value("pbx_call_records_buffered") == 3
        writer.dsn = db  # the database is back
        await _drained(writer, metrics, 3)
    finally:
        await writer.aclose()
    try:
        ids = {r["call_id"] for r in await conn.fetch("SELECT call_id FROM pbx.call_records")}
        assert ids == {"c2", "c3", "c4"}  # the newest three
        assert metrics.value("pbx_call_records_buffered") == 0
    finally:
        await conn.close()


async def test_put_never_waits_for_the_database() -> None:
    metrics = Metrics()
    writer = RecordWriter("postgresql://postgres@127.0.0.1:1/none", metrics, buffer=10000)
    t0 = time.perf_counter()
    for i in range(10000):
        writer.put(record(f"c{i}"))
    assert time.perf_counter() - t0 < 1.0
    assert metrics.value("pbx_call_records_buffered") == 10000


async def _write(db: str, *records: CallRecord) -> None:
    metrics = Metrics()
    writer = RecordWriter(db, metrics, buffer=100, linger_s=0)
    writer.start()
    for r in records:
        writer.put(r)
    await _drained(writer, metrics, len(records))
    await writer.aclose()


async def test_a_tenant_admin_reads_its_own_tenants_records_only_and_writes_none(db: str) -> None:
    conn = await _seeded(db)
    await _write(db, record("a1"), record("b1", "beta.example"), record("x1", None))
    try:
        async with tenant_admin(db, conn, "acme") as ta:
            assert [c["call_id"] for c in await read_calls(ta)] == ["a1"]
            assert await ta.fetchval("SELECT count(*) FROM pbx.call_legs") == 1
            with pytest.raises(Exception, match="unknown tenant"):
                await read_calls(ta, tenant="beta")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await ta.execute("DELETE FROM pbx.call_records")
    finally:
        await conn.close()


async def test_records_past_the_retention_are_trimmed_with_their_legs(db: str) -> None:
    conn = await _seeded(db)
    await _write(db, record("old", at=time.time() - 7200), record("new"))
    try:
        assert await conn.fetchval("SELECT pbx.trim_call_records(interval '1 hour')") == 1
        assert [r["call_id"] for r in await conn.fetch("SELECT call_id FROM pbx.call_legs")] == ["new"]
    finally:
        await conn.close()


async def test_the_pusher_trims_call_records_with_the_audit_trail(db: str) -> None:
    from sorcery_backend.pusher import Pusher, PusherSettings

    conn = await _seeded(db)
    await _write(db, record("old", at=time.time() - 7200), record("new"))
    try:
        await Pusher(db, PusherSettings(call_records_keep_s=3600))._trim_history(conn)
        assert [r["call_id"] for r in await conn.fetch("SELECT call_id FROM pbx.call_records")] == ["new"]
    finally:
        await conn.close()


# --- reading them: CLI and HTTP ------------------------------------------------------------------


async def test_calls_history_cli_filters_by_tenant_and_time(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    conn = await _seeded(db)
    await conn.close()
    await _write(db, record("old", at=time.time() - 7200), record("new"), record("b1", "beta.example"))

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["calls", "history", "--dsn", db, *args])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = await asyncio.to_thread(run, "--tenant", "acme", "--since", "1h", "--json")
    assert code == 0 and [c["call_id"] for c in json.loads(out)["calls"]] == ["new"]
    code, out, _ = await asyncio.to_thread(run)
    assert code == 0 and len(out.splitlines()) == 3 and "0301234" in out and "answered by gw@acme.example" in out
    code, _, err = await asyncio.to_thread(run, "--tenant", "nope")
    assert (
        code == 1
        and err == "pbxctl: tenant nope: unknown tenant (no such tenant and no call records under that name)\n"
    )
    code, _, err = await asyncio.to_thread(run, "--since", "yesterday")
    assert code == 2 and "--since" in err and err.count("\n") == 1


async def _principal(token: str) -> Principal | None:
    return {
        "op": Principal("op"),
        "acme": Principal("acme-token", "acme", "acme.example"),
    }.get(token)


async def test_get_calls_history_with_operator_and_tenant_tokens(db: str) -> None:
    conn = await _seeded(db)
    await conn.close()
    await _write(db, record("a1"), record("b1", "beta.example"))
    pool = await asyncpg.create_pool(db, min_size=1, max_size=2)
    try:
        app = make_app(pool, verify=_principal, listen=False)
        async with TestClient(TestServer(app)) as client:

            async def get(token: str, **params: str) -> tuple[int, Any]:
                resp = await client.get("/calls/history", params=params, headers={"Authorization": f"Bearer {token}"})
                return resp.status, await resp.json()

            status, body = await get("op")
            assert status == 200 and {c["call_id"] for c in body["calls"]} == {"a1", "b1"}
            status, body = await get("op", tenant="beta", since="1h", limit="1")
            assert status == 200 and [c["call_id"] for c in body["calls"]] == ["b1"]
            assert body["calls"][0]["legs"][0]["endpoint"] == "gw@beta.example"
            status, body = await get("acme")  # a tenant token: its own calls without asking
            assert status == 200 and [c["call_id"] for c in body["calls"]] == ["a1"]
            status, body = await get("acme", tenant="beta")
            assert status == 403 and "not visible to token acme-token" in body["error"]
            status, body = await get("op", limit="0")
            assert status == 400 and body["error"].startswith("limit '0'")
            status, body = await get("op", since="soon")
            assert status == 400 and body["error"].startswith("since:")
            status, body = await get("op", tenant="nope")
            assert status == 404
            resp = await client.get("/calls/history")
            assert resp.status == 401
    finally:
        await pool.close()
