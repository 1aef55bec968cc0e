"""Properties of the routing engine on random trees (hypothesis)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routing.simulate import simulate

USERS = [f"1{i:03d}" for i in range(1, 7)]
GROUPS = [f"2{i:03d}" for i in range(4)]


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    numbers = USERS + GROUPS
    exts: dict[str, Any] = {}
    for n in USERS:
        e: dict[str, Any] = {
            "type": draw(st.sampled_from(["simple", "simple", "multiring"])),
            "name": f"U{n}",
            "endpoints": [n],
            "call_waiting": draw(st.booleans()),
        }
        if e["type"] == "multiring":
            e["ranks"] = draw(ranks(numbers))
        exts[n] = e
    for g in GROUPS:
        exts[g] = {"type": "group", "name": f"G{g}", "ranks": draw(ranks(numbers))}
    for n in numbers:
        if draw(st.integers(0, 3)) == 0:
            mode = draw(st.sampled_from(["always", "busy", "unavailable"]))
            fwd: dict[str, Any] = {"mode": mode, "to": draw(st.sampled_from(numbers))}
            if mode == "always":
                fwd["delay_ms"] = draw(st.sampled_from([0, 0, 3000, 10000]))
            exts[n]["forward"] = fwd
    regs = {n: [f"dev-{n}-{i}" for i in range(draw(st.integers(0, 2)))] for n in USERS}
    devices = [d for ds in regs.values() for d in ds]
    behaviour = {}
    for d in devices:
        kind = draw(st.sampled_from(["ring", "ring", "answer_at", "reject_at"]))
        if kind != "ring":
            behaviour[d] = {kind: draw(st.integers(0, 40))}
    in_use = {n: 1 for n in USERS if draw(st.integers(0, 4)) == 0}
    return {
        "config": {"tenants": {"t": {"domain": "t.example", "extensions": exts}}},
        "registrations": regs,
        "in_use": in_use,
        "behaviour": behaviour,
        "horizon_s": 60,
        "call": {"tenant": "t", "caller": USERS[0], "called": draw(st.sampled_from(numbers))},
    }


def ranks(numbers: list[str]) -> st.SearchStrategy[list[dict[str, Any]]]:
    member = st.one_of(
        st.sampled_from(numbers),
        st.builds(lambda n, a: {"number": n, "active": a}, st.sampled_from(numbers), st.booleans()),
    )
    rank = st.builds(
        lambda m, d, ms: {"mode": m, "delay_ms": d, "members": ms},
        st.sampled_from(["default", "next", "drop"]),
        st.sampled_from([0, 2000, 5000, 10000]),
        st.lists(member, min_size=0, max_size=3, unique_by=lambda x: x if isinstance(x, str) else x["number"]),
    )
    return st.lists(rank, max_size=3)


def paused_only(s: dict[str, Any]) -> set[str]:
    """Extensions that appear only as paused members: nothing else can reach them."""
    exts = s["config"]["tenants"]["t"]["extensions"]
    reachable = {s["call"]["called"]}
    paused = set()
    for e in exts.values():
        for r in e.get("ranks", []):
            for m in r["members"]:
                if isinstance(m, dict) and not m["active"]:
                    paused.add(m["number"])
                else:
                    reachable.add(m if isinstance(m, str) else m["number"])
        if "forward" in e:
            reachable.add(e["forward"]["to"])
    return paused - reachable


def empty_extensions(s: dict[str, Any]) -> set[str]:
    """Contract section 2, *empty*, computed the naive way: repeat until nothing changes."""
    exts = s["config"]["tenants"]["t"]["extensions"]
    ringing = {n for n, e in exts.items() if e.get("endpoints") and e["type"] != "group"}
    while True:
        more = {
            n
            for n, e in exts.items()
            if any(
                (m if isinstance(m, str) else m["number"]) in ringing
                for r in e.get("ranks", [])
                for m in r["members"]
                if isinstance(m, str) or m["active"]
            )
            or ("forward" in e and e["forward"]["to"] in ringing)
        }
        if more <= ringing:
            return set(exts) - ringing
        ringing |= more


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_routing_invariants(s: dict[str, Any]) -> None:
    out = simulate(s)  # never raises
    if s["call"]["called"] in empty_extensions(s):
        assert out == {"status": "noroute", "result": "noroute", "timeline": []}
        return
    assert out["status"] == "ok"
    assert out["result"] in {"answered", "busy", "unavailable", "noanswer"}
    timeline = out["timeline"]
    rings = Counter(e["ring"] for e in timeline if "ring" in e)
    assert all(c == 1 for c in rings.values()), rings  # no device rings twice in one call
    answers = [i for i, e in enumerate(timeline) if "answer" in e]
    assert len(answers) <= 1
    if answers:
        assert out["result"] == "answered"
        assert not any("ring" in e for e in timeline[answers[0] :])  # nothing rings after an answer
        assert answers[0] == len(timeline) - 1
    stopped = Counter(e["stop"] for e in timeline if "stop" in e)
    assert all(c == 1 and d in rings for d, c in stopped.items())
    for n in paused_only(s):
        assert not any(e.get("ring", "").startswith(f"dev-{n}-") for e in timeline)
    # The call always ends by the horizon: every device that rang is stopped or answered.
    ended = set(stopped) | {timeline[i]["answer"] for i in answers}
    if out["result"] != "answered":
        assert ended == set(rings)
    assert all(e["t"] <= s["horizon_s"] for e in timeline)
