"""The fork state machine and simulator on behaviours the public scenarios do not show."""

from __future__ import annotations

from typing import Any

from routing.simulate import simulate

PHONES = {
    f"{n}": {"type": "simple", "name": name, "endpoints": [f"{n}"]}
    for n, name in (("1001", "Alice"), ("1002", "Bob"), ("1003", "Carol"), ("1004", "Dave"))
}


def scenario(extensions: dict[str, Any], called: str, **extra: Any) -> dict[str, Any]:
    regs = {n: [f"dev-{n}"] for n in PHONES}
    return {
        "config": {"tenants": {"t": {"domain": "t.example", "extensions": {**PHONES, **extensions}}}},
        "registrations": extra.pop("registrations", regs),
        "call": {"tenant": "t", "caller": "1001", "called": called},
        "horizon_s": 60,
        **extra,
    }


def events(out: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (
            e["t"],
            next(k for k in ("ring", "stop", "refused", "answer") if k in e),
            e.get("ring") or e.get("stop") or e.get("refused") or e.get("answer"),
            e.get("why") or e.get("error"),
        )
        for e in out["timeline"]
    ]


GROUP = {
    "2000": {
        "type": "group",
        "name": "Team",
        "ranks": [{"mode": "default", "members": ["1002", "1003"]}, {"mode": "default", "members": ["1004"]}],
    }
}


def test_answer_stops_everything_else() -> None:
    out = simulate(scenario(GROUP, "2000", behaviour={"dev-1003": {"answer_at": 3}}))
    assert out["result"] == "answered"
    assert events(out) == [
        (0, "ring", "dev-1002", None),
        (0, "ring", "dev-1003", None),
        (3, "stop", "dev-1002", "answered_elsewhere"),
        (3, "answer", "dev-1003", None),
    ]


def test_default_rank_starts_when_every_earlier_leg_failed() -> None:
    out = simulate(scenario(GROUP, "2000", behaviour={"dev-1002": {"reject_at": 2}, "dev-1003": {"reject_at": 4}}))
    assert events(out) == [
        (0, "ring", "dev-1002", None),
        (0, "ring", "dev-1003", None),
        (2, "stop", "dev-1002", "rejected"),
        (4, "stop", "dev-1003", "rejected"),
        (4, "ring", "dev-1004", None),
        (60, "stop", "dev-1004", "caller_hangup"),
    ]


def test_everyone_rejects_ends_busy_and_nobody_registered_ends_unavailable() -> None:
    out = simulate(
        scenario(GROUP, "2000", behaviour={d: {"reject_at": 1} for d in ("dev-1002", "dev-1003", "dev-1004")})
    )
    assert out["result"] == "busy"
    out = simulate(scenario(GROUP, "2000", registrations={"1001": ["dev-1001"]}))
    assert out["result"] == "unavailable"
    assert [e[1:] for e in events(out)] == [
        ("refused", "1002", "offline"),
        ("refused", "1003", "offline"),
        ("refused", "1004", "offline"),
    ]


def test_next_rank_starts_at_once_when_all_earlier_legs_failed() -> None:
    ext = {
        "2000": {
            "type": "group",
            "name": "T",
            "ranks": [
                {"mode": "default", "members": ["1002"]},
                {"mode": "next", "delay_ms": 20000, "members": ["1003"]},
            ],
        }
    }
    out = simulate(scenario(ext, "2000", behaviour={"dev-1002": {"reject_at": 5}}))
    assert (5, "ring", "dev-1003", None) in events(out)


def test_caller_hangup_stops_ringing_devices_and_ends_noanswer() -> None:
    out = simulate(scenario(GROUP, "2000"), horizon_s=7)
    assert out["result"] == "noanswer"
    assert events(out)[-2:] == [(7, "stop", "dev-1002", "caller_hangup"), (7, "stop", "dev-1003", "caller_hangup")]


def test_device_rings_once_even_after_its_first_leg_stopped() -> None:
    ext = {
        "2000": {
            "type": "group",
            "name": "T",
            "ranks": [
                {"mode": "default", "members": ["1002"]},
                {"mode": "drop", "delay_ms": 5000, "members": ["1002", "1003"]},
            ],
        }
    }
    out = simulate(scenario(ext, "2000"))
    assert events(out)[:4] == [
        (0, "ring", "dev-1002", None),
        (5, "refused", "1002", "busy"),
        (5, "ring", "dev-1003", None),
        (5, "stop", "dev-1002", "drop"),
    ]


def test_unknown_status_for_unauthenticated_internal_number() -> None:
    s = scenario({}, "1002")
    s["call"]["endpoint"] = None
    assert simulate(s)["status"] == "error:noauth"
