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


# --- trunks: number rules, fallbacks, static contacts, ring timeout ---------------------------------

TRUNKS = ["0", "80", "81", "82"]  # "0" owns the called numbers; the others are only fallbacks


@st.composite
def trunk_scenarios(draw: st.DrawFn) -> dict[str, Any]:
    exts: dict[str, Any] = {"1001": {"type": "simple", "name": "Alice", "endpoints": ["1001"], "dialout": True}}
    endpoints: dict[str, Any] = {"1001": {}}
    regs: dict[str, list[str]] = {"1001": ["dev-1001"]}
    for i, number in enumerate(TRUNKS):
        ep = f"ep{number}"
        how = draw(st.sampled_from(["static", "static", "registered", "none"]))
        endpoints[ep] = {"aor": {"contact": [f"sip:127.0.0.{i + 2}:5070"]}} if how == "static" else {}
        if how == "registered":
            regs[ep] = [f"dev-{ep}"]
        ext: dict[str, Any] = {"type": "trunk", "name": f"T{number}", "endpoints": [ep]}
        if draw(st.booleans()):
            ext["outbound"] = {"strip": draw(st.integers(0, 3)), "prepend": draw(st.sampled_from(["", "+", "+49"]))}
        # Fallbacks only to later trunks: no cycle (the configuration refuses them).
        ext["fallback"] = draw(st.lists(st.sampled_from(TRUNKS[i + 1 :] or ["0"]), unique=True, max_size=2))
        if not TRUNKS[i + 1 :]:
            ext["fallback"] = []
        exts[number] = ext
    devices = [f"ep{n}/1" for n in TRUNKS] + [d for ds in regs.values() for d in ds]
    behaviour = {
        d: {kind: draw(st.integers(0, 30))} if kind != "busy" else {"busy": True}
        for d in devices
        if (kind := draw(st.sampled_from(["ring", "answer_at", "reject_at", "busy"]))) != "ring"
    }
    tenant: dict[str, Any] = {"domain": "t.example", "endpoints": endpoints, "extensions": exts}
    if draw(st.booleans()):
        tenant["settings"] = {"ring_timeout_ms": draw(st.sampled_from([5000, 20000]))}
    return {
        "config": {"tenants": {"t": tenant}},
        "registrations": regs,
        "behaviour": behaviour,
        "horizon_s": 60,
        "call": {"tenant": "t", "caller": "1001", "called": "0" + draw(st.text("0123456789", min_size=1, max_size=6))},
    }


def trunk_of(device: str) -> str:
    return device.split("/")[0].removeprefix("dev-").removeprefix("ep")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trunk_scenarios())
def test_trunk_invariants(s: dict[str, Any]) -> None:
    from routing.model import directory_from_config

    out = simulate(s)
    tenant = s["config"]["tenants"]["t"]
    d = directory_from_config("t", tenant)
    called = s["call"]["called"]
    if "0" in d.empty:
        assert out["status"] == "noroute"
        return
    assert out["status"] == "ok"
    timeline = out["timeline"]
    # Every trunk leg sends the number its own trunk's rules make of the number as dialed.
    for e in timeline:
        if "ring" in e:
            assert e["dialed"] == d.extensions[trunk_of(e["ring"])].dialed(called)
            assert e["originally_called"] == called
    # Trunks are tried in fallback order, and the next only after every earlier one was unavailable.
    chain = ["0"] + [t.number for t in d.fallback_chain(d.extensions["0"]) if t.number not in d.empty]
    tried = []
    for e in timeline:
        trunk = e["refused"] if "refused" in e else trunk_of(e["ring"]) if "ring" in e else None
        if trunk is not None and trunk not in tried:
            tried.append(trunk)
    assert tried == chain[: len(tried)]
    for earlier in tried[:-1]:
        assert {"t": 0, "refused": earlier, "error": "offline"} in timeline
    timeout = tenant.get("settings", {}).get("ring_timeout_ms", 180000) / 1000
    assert all(e["t"] <= timeout for e in timeline)
    if any(e.get("why") == "timeout" for e in timeline):
        assert out["result"] == "noanswer"


@st.composite
def did_rules(draw: st.DrawFn) -> list[Any]:
    from routing.model import DidRule

    matches = draw(st.lists(st.text("0123", min_size=1, max_size=4), max_size=6))
    return [
        DidRule(draw(st.sampled_from(["{rest}", "1001"])), prefix=m)
        if draw(st.booleans())
        else DidRule("1002", number=m)
        for m in matches
    ]


@settings(max_examples=300, deadline=None)
@given(did_rules(), st.text("0123", max_size=5))
def test_did_the_longest_matching_rule_wins_exact_before_prefix(rules: list[Any], called: str) -> None:
    from routing.model import Extension

    target = Extension("0", "trunk", dids=tuple(rules)).did_target(called)
    exact = [r for r in rules if r.number == called]
    prefixes = [r for r in rules if r.prefix is not None and called.startswith(r.prefix)]
    if not rules:
        assert target == called
    elif exact:
        assert target == exact[0].to  # as long as the number itself: no matching prefix is longer
    elif prefixes:
        best = max(len(r.prefix) for r in prefixes)
        tos = {called[best:] if r.to == "{rest}" else r.to for r in prefixes if len(r.prefix) == best}
        assert target in tos
    else:
        assert target is None
