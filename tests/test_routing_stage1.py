"""Stage 1's reach: which extensions a call's tree may read (what a store loads for one call)."""

from __future__ import annotations

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
