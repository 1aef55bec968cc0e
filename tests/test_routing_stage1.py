"""routing.stage1: the reach (what a store loads for one call), calls from outside through a trunk, DIDs,
trunk legs and empty extensions."""

from __future__ import annotations

from typing import Any

from routing.model import directory_from_config
from routing.stage1 import MAX_DEPTH, CallRequest, Node, build_tree, reachable


def _chain(n: int) -> dict[str, dict[str, object]]:
    """100 -> 101 -> ... by busy forwards, each extension with an endpoint of its own."""
    chain: dict[str, dict[str, object]] = {
        str(100 + i): {"type": "simple", "name": f"C{i}", "endpoints": [f"e{i}"]} for i in range(n)
    }
    for i in range(n - 1):
        chain[str(100 + i)]["forward"] = {"mode": "busy", "to": str(101 + i)}
    return chain


def test_reach_goes_one_step_past_the_depth_limit_from_every_seed() -> None:
    exts = _chain(MAX_DEPTH + 4)
    exts["9"] = {"type": "trunk", "name": "GW", "endpoints": ["gw"]}
    exts["7"] = {"type": "simple", "name": "Side", "endpoints": ["side"], "forward": {"mode": "busy", "to": "300"}}
    exts["300"] = {"type": "simple", "name": "Behind side", "endpoints": ["s2"]}
    exts["400"] = {"type": "group", "name": "Caller's group", "ranks": [{"members": ["401"]}]}
    exts["401"] = {"type": "simple", "name": "Member", "endpoints": ["m"]}
    exts["500"] = {"type": "simple", "name": "Unrelated", "endpoints": ["u"]}
    d = directory_from_config("t", {"extensions": exts})
    got = reachable(d, "400", "100", ["7"])
    # The called number is depth 0: depths 0..MAX_DEPTH + 1 of the chain, no further.
    assert {n for n in got if n.startswith("1")} == {str(100 + i) for i in range(MAX_DEPTH + 2)}
    assert {"9", "7", "300", "400", "401"} <= got
    assert "500" not in got
    assert reachable(d, "nobody", "nothing") == {"9"}  # numbers that are no extension are no seeds


def test_the_tree_reads_nothing_outside_the_reach() -> None:
    d = directory_from_config("t", {"extensions": _chain(MAX_DEPTH + 4)})
    got = reachable(d, "x", "100")
    tree = build_tree(d, CallRequest("t", "x", "100", endpoint=None))
    seen: list[str] = []

    def walk(n: Node) -> None:
        seen.append(n.number)
        if n.busy_forward is not None:
            walk(n.busy_forward)

    assert tree.root is not None
    walk(tree.root)
    assert set(seen) <= got and len(seen) == MAX_DEPTH + 1


EXTS: dict[str, Any] = {
    "1001": {"type": "simple", "name": "Alice", "endpoints": ["1001"], "dialout": True},
    "1002": {"type": "simple", "name": "Bob", "endpoints": ["1002"], "ring_timeout_ms": 15000},
    "1003": {"type": "simple", "name": "Nobody"},
    "2000": {"type": "group", "name": "Sales", "short_name": "SALES", "ranks": [{"members": ["1002", "1003"]}]},
    "2001": {"type": "group", "name": "Ghosts", "ranks": [{"members": ["1003"]}]},
    "0": {
        "type": "trunk",
        "name": "Carrier",
        "endpoints": ["carrier"],
        "outbound": {"strip": 1, "prepend": "+49"},
        "fallback": ["8", "7"],
        "dids": [{"number": "+4930100", "to": "2000"}, {"prefix": "+4930", "to": "{rest}"}],
    },
    "8": {"type": "trunk", "name": "Backup", "endpoints": ["backup"]},
    "7": {"type": "trunk", "name": "Empty"},
    "5": {"type": "trunk", "name": "Open", "endpoints": ["open"]},
}
D = directory_from_config("t", {"extensions": EXTS, "settings": {"ring_timeout_ms": 40000}})


def call(caller: str, called: str, **kw: Any) -> Any:
    return build_tree(D, CallRequest("t", caller, called, **kw))


def test_a_call_through_a_trunk_is_from_outside_with_the_carriers_name() -> None:
    tree = call("+49170", "+4930100", endpoint="carrier", callername="Jane Roe")
    assert tree.status == "ok"
    assert (tree.caller.number, tree.caller.name, tree.caller.extension, tree.caller.trunk) == (
        "+49170",
        "Jane Roe",
        None,
        "0",
    )
    assert tree.called == "2000" and tree.calledname == "Sales" and tree.prefix == "SALES"
    assert call("+49170", "+4930100", endpoint="carrier").caller.name == "Carrier"


def test_dids_map_exact_numbers_and_ranges_and_nothing_else() -> None:
    assert call("+49170", "+49301002", endpoint="carrier").called == "1002"
    assert call("+49170", "+4940", endpoint="carrier").status == "noroute"


def test_a_trunk_without_dids_routes_the_called_number_as_it_is() -> None:
    tree = call("+49170", "1002", endpoint="open")
    assert tree.status == "ok" and tree.root is not None and tree.root.number == "1002"


def test_a_trunk_leg_carries_the_number_sent_and_its_fallbacks() -> None:
    tree = call("1001", "0301234")
    root = tree.root
    assert isinstance(root, Node) and root.kind == "trunk" and root.dialed == "+49301234"
    # 7 has nothing to ring: left out. 8 has no rules: the number as dialed.
    assert [(f.ext.number, f.dialed) for f in root.fallbacks] == [("8", "0301234")]


def test_dial_out_permission_is_checked_before_any_trunk() -> None:
    assert call("1002", "0301234").status == "error:forbidden"


def test_ring_timeout_the_dialed_extensions_beats_the_tenants() -> None:
    assert call("1001", "1002").ring_timeout_ms == 15000
    assert call("1001", "2000").ring_timeout_ms == 40000


def test_an_empty_extension_called_directly_is_not_routed() -> None:
    for number in ("1003", "2001", "7123"):
        tree = call("1001", number)
        assert tree.status == "noroute" and tree.root is None, number


def test_an_empty_member_is_left_out_as_if_absent() -> None:
    root = call("1001", "2000").root
    assert isinstance(root, Node)
    assert [m.number for m in root.ranks[0].members] == ["1002"]
    assert [(p.number, p.reason) for p in root.ranks[0].pruned] == [("1003", "empty")]


def test_forwards_to_an_empty_extension_are_left_out() -> None:
    exts = {
        **EXTS,
        "1004": {"type": "simple", "name": "D", "endpoints": ["1004"], "forward": {"mode": "always", "to": "1003"}},
        "1005": {
            "type": "simple",
            "name": "E",
            "endpoints": ["1005"],
            "forward": {"mode": "always", "to": "2001", "delay_ms": 5000},
        },
    }
    d = directory_from_config("t", {"extensions": exts})
    immediate = build_tree(d, CallRequest("t", "1001", "1004")).root
    assert isinstance(immediate, Node) and immediate.number == "1004" and not immediate.replaced
    timed = build_tree(d, CallRequest("t", "1001", "1005")).root
    assert isinstance(timed, Node) and timed.timed_forward is None
    assert [(p.number, p.reason) for p in timed.pruned] == [("2001", "empty")]
