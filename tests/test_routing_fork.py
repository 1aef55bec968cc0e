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


# --- trunks, static contacts, ring timeout, multiring rank 0 --------------------------------------

CARRIER = {
    "templates": {"carrier": {"aor": {"contact": ["sip:127.0.0.2:5070", "sip:127.0.0.4:5070"]}}},
    "endpoints": {"carrier": {"templates": ["carrier"]}, "backup": {"aor": {"contact": ["sip:127.0.0.6:5070"]}}},
}


def until_hangup(out: dict[str, Any]) -> list[dict[str, Any]]:
    """The timeline without the caller hanging up at the horizon."""
    return [e for e in out["timeline"] if e.get("why") != "caller_hangup"]


def trunk_scenario(extensions: dict[str, Any], called: str, **extra: Any) -> dict[str, Any]:
    s = scenario({"1001": {**PHONES["1001"], "dialout": True}, **extensions}, called, **extra)
    s["config"]["tenants"]["t"].update(CARRIER)
    return s


def test_every_static_contact_of_a_trunk_rings_with_the_number_sent() -> None:
    out = simulate(trunk_scenario({"0": {"type": "trunk", "name": "C", "endpoints": ["carrier"]}}, "0301"))
    assert [(e["ring"], e["dialed"]) for e in until_hangup(out)] == [("carrier/1", "0301"), ("carrier/2", "0301")]


def test_behaviour_can_name_a_static_device() -> None:
    out = simulate(
        trunk_scenario(
            {"0": {"type": "trunk", "name": "C", "endpoints": ["carrier"]}},
            "0301",
            behaviour={"carrier/2": {"answer_at": 3}},
        )
    )
    assert out["result"] == "answered"
    assert events(out)[-2:] == [(3, "stop", "carrier/1", "answered_elsewhere"), (3, "answer", "carrier/2", None)]


FALLBACKS = {
    "0": {"type": "trunk", "name": "Primary", "endpoints": ["1004"], "fallback": ["8", "9"]},
    "8": {"type": "trunk", "name": "Backup", "endpoints": ["backup"], "outbound": {"strip": 1, "prepend": "+49"}},
    "9": {"type": "trunk", "name": "Last", "endpoints": ["carrier"]},
}


def test_fallbacks_are_tried_in_order_each_with_its_own_rules_when_the_trunk_is_unavailable() -> None:
    regs = {"1001": ["dev-1001"]}  # 1004 (the primary's endpoint) has no registration
    out = simulate(trunk_scenario(FALLBACKS, "0301", registrations=regs))
    assert out["timeline"][0] == {"t": 0, "refused": "0", "error": "offline"}
    assert [(e["ring"], e["dialed"]) for e in until_hangup(out)[1:]] == [("backup/1", "+49301")]


def test_a_fallback_that_fails_unavailable_passes_on_to_the_next() -> None:
    regs = {"1001": ["dev-1001"]}
    exts = {**FALLBACKS, "8": {**FALLBACKS["8"], "endpoints": ["1003"]}}  # 1003 unregistered too
    out = simulate(trunk_scenario(exts, "0301", registrations=regs))
    assert events({"timeline": until_hangup(out)}) == [
        (0, "refused", "0", "offline"),
        (0, "refused", "8", "offline"),
        (0, "ring", "carrier/1", None),
        (0, "ring", "carrier/2", None),
    ]
    assert out["timeline"][2]["dialed"] == "0301"


def test_every_trunk_unavailable_ends_the_call_unavailable() -> None:
    regs = {"1001": ["dev-1001"]}
    exts = {
        "0": {"type": "trunk", "name": "P", "endpoints": ["1004"], "fallback": ["8"]},
        "8": {**FALLBACKS["8"], "endpoints": ["1003"]},
    }
    out = simulate(trunk_scenario(exts, "0301", registrations=regs))
    assert out["result"] == "unavailable"
    assert events(out) == [(0, "refused", "0", "offline"), (0, "refused", "8", "offline")]


def test_a_busy_trunk_does_not_fall_back() -> None:
    regs = {"1001": ["dev-1001"], "1004": ["dev-1004"]}
    out = simulate(trunk_scenario(FALLBACKS, "0301", registrations=regs, behaviour={"dev-1004": {"busy": True}}))
    assert out["result"] == "busy"
    assert not any(e.get("ring", "").startswith("backup") for e in out["timeline"])


def test_a_trunk_that_fails_unavailable_later_falls_back_then() -> None:
    from routing.fork import Fork, LegFailed, RingDevice, Start
    from routing.model import directory_from_config
    from routing.simulate import ScenarioDevices
    from routing.stage1 import CallRequest, build_tree

    s = trunk_scenario(FALLBACKS, "0301")
    d = directory_from_config("t", s["config"]["tenants"]["t"])
    fork = Fork(build_tree(d, CallRequest("t", "1001", "0301")), "0301", ScenarioDevices({"1004": ["dev-1004"]}, {}))
    first = [c for c in fork.handle(Start(), 0) if isinstance(c, RingDevice)]
    assert [c.device for c in first] == ["dev-1004"]
    then = [c for c in fork.handle(LegFailed(first[0].leg_id, "unavailable"), 4000) if isinstance(c, RingDevice)]
    assert [(c.device, c.dialed, c.uri) for c in then] == [("backup/1", "+49301", "sip:127.0.0.6:5070")]


def test_an_unreachable_qualified_static_contact_is_offline() -> None:
    from routing.fork import Fork, Refused, RingDevice, Start
    from routing.model import directory_from_config
    from routing.simulate import ScenarioDevices
    from routing.stage1 import CallRequest, build_tree

    s = trunk_scenario(FALLBACKS, "0301")
    cfg = s["config"]["tenants"]["t"]
    cfg["endpoints"]["backup"]["aor"]["qualify_frequency"] = 60
    d = directory_from_config("t", cfg)

    class BackupDown:
        def reachable(self, endpoint: str, uri: str) -> bool:
            return endpoint != "backup"

    fork = Fork(build_tree(d, CallRequest("t", "1001", "0301")), "0301", ScenarioDevices({}, {}), BackupDown())
    out = fork.handle(Start(), 0)
    assert [c.number for c in out if isinstance(c, Refused)] == ["0", "8"]
    assert [c.device for c in out if isinstance(c, RingDevice)] == ["carrier/1", "carrier/2"]


def test_ring_timeout_stops_every_leg_and_ends_unanswered() -> None:
    s = scenario(GROUP, "2000")
    s["config"]["tenants"]["t"]["settings"] = {"ring_timeout_ms": 7000}
    out = simulate(s)
    assert out["result"] == "noanswer"
    assert events(out) == [
        (0, "ring", "dev-1002", None),
        (0, "ring", "dev-1003", None),
        (7, "stop", "dev-1002", "timeout"),
        (7, "stop", "dev-1003", "timeout"),
    ]


def test_ring_timeout_counts_from_the_start_of_the_call_across_ranks_and_forwards() -> None:
    exts = {
        "2000": {
            "type": "group",
            "name": "Team",
            "ring_timeout_ms": 12000,
            "ranks": [
                {"mode": "default", "members": ["1002"]},
                {"mode": "next", "delay_ms": 10000, "members": ["1003"]},
            ],
            "forward": {"mode": "always", "to": "1004", "delay_ms": 20000},
        }
    }
    out = simulate(scenario(exts, "2000"))
    assert events(out) == [
        (0, "ring", "dev-1002", None),
        (10, "ring", "dev-1003", None),
        (12, "stop", "dev-1002", "timeout"),
        (12, "stop", "dev-1003", "timeout"),
    ]


def test_the_dialed_extensions_ring_timeout_beats_the_tenants() -> None:
    s = scenario({"1002": {**PHONES["1002"], "ring_timeout_ms": 3000}}, "1002")
    s["config"]["tenants"]["t"]["settings"] = {"ring_timeout_ms": 7000}
    assert events(simulate(s)) == [(0, "ring", "dev-1002", None), (3, "stop", "dev-1002", "timeout")]


def test_an_answer_before_the_timeout_cancels_it() -> None:
    s = scenario(
        {"1002": {**PHONES["1002"], "ring_timeout_ms": 3000}}, "1002", behaviour={"dev-1002": {"answer_at": 3}}
    )
    assert simulate(s)["result"] == "answered"  # a device answering at the very instant wins


def test_ring_timeout_is_a_timer_of_the_fork() -> None:
    from routing.fork import EndCall, Fork, Start, StartTimer, StopLeg, TimerFired
    from routing.model import directory_from_config
    from routing.simulate import ScenarioDevices
    from routing.stage1 import CallRequest, build_tree

    d = directory_from_config("t", {"extensions": PHONES})
    fork = Fork(build_tree(d, CallRequest("t", "1001", "1002")), "1002", ScenarioDevices({"1002": ["d"]}, {}))
    timers = [c for c in fork.handle(Start(), 500) if isinstance(c, StartTimer)]
    assert [t.at_ms for t in timers] == [180500]  # the default, from the call's start
    out = fork.handle(TimerFired(timers[0].timer_id), 180500)
    assert next(c for c in out if isinstance(c, StopLeg)).why == "timeout"
    assert out[-1] == EndCall("noanswer")


def test_multiring_default_rank_0_rings_with_the_own_devices() -> None:
    exts = {
        "1002": {
            **PHONES["1002"],
            "type": "multiring",
            "ranks": [{"mode": "default", "members": ["1003"]}, {"mode": "default", "members": ["1004"]}],
        }
    }
    out = simulate(scenario(exts, "1002", behaviour={"dev-1002": {"reject_at": 2}, "dev-1003": {"reject_at": 4}}))
    assert events({"timeline": until_hangup(out)}) == [
        (0, "ring", "dev-1002", None),
        (0, "ring", "dev-1003", None),
        (2, "stop", "dev-1002", "rejected"),
        (4, "stop", "dev-1003", "rejected"),
        (4, "ring", "dev-1004", None),  # rank 1 still waits for every earlier leg
    ]


def test_empty_extension_called_directly_is_noroute_and_a_timed_forward_to_one_never_fires() -> None:
    exts = {
        "3000": {"type": "group", "name": "Nobody", "ranks": [{"members": [{"number": "1003", "active": False}]}]},
        "1002": {**PHONES["1002"], "forward": {"mode": "always", "to": "3000", "delay_ms": 5000}},
    }
    assert simulate(scenario(exts, "3000")) == {"status": "noroute", "result": "noroute", "timeline": []}
    assert events(simulate(scenario(exts, "1002"))) == [
        (0, "ring", "dev-1002", None),
        (60, "stop", "dev-1002", "caller_hangup"),
    ]


def test_an_external_member_that_fails_is_refused_under_its_own_number_its_fallback_under_the_trunks() -> None:
    regs = {"1001": ["dev-1001"]}
    exts = {
        "0": {"type": "trunk", "name": "P", "endpoints": ["1004"], "fallback": ["8"]},
        "8": {**FALLBACKS["8"], "endpoints": ["1003"]},
        "0800": {"type": "external", "name": "Hotline"},
    }
    out = simulate(trunk_scenario(exts, "0800", registrations=regs))
    assert events(out) == [(0, "refused", "0800", "offline"), (0, "refused", "8", "offline")]
