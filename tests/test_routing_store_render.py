"""An explained tree drawn as text and as SVG."""

from __future__ import annotations

from routing.explain import explain
from routing.model import directory_from_config
from routing.stage1 import CallRequest
from routing_store.render import render_svg, render_text

TENANT = {
    "extensions": {
        "1001": {"type": "simple", "name": "Alice", "endpoints": ["1001"]},
        "1002": {"type": "simple", "name": "Bob <&>", "endpoints": ["1002"]},
        "1003": {"type": "simple", "name": "Carol", "endpoints": ["1003"], "forward": {"mode": "busy", "to": "1001"}},
        "2000": {
            "type": "group",
            "name": "Team",
            "ranks": [
                {"members": ["1002", {"number": "1001", "active": False}]},
                {"mode": "next", "delay_ms": 1500, "members": ["1003"]},
            ],
        },
    }
}


def _tree() -> dict[str, object]:
    return explain(directory_from_config("t", TENANT), CallRequest("t", "1001", "2000"))


def test_text_shows_ranks_forwards_and_pruned_branches() -> None:
    assert render_text(_tree()).splitlines() == [
        "t: call to 2000: ok",
        "  2000 'Team' (group)",
        "    rank 0: default after 0s",
        "      1002 'Bob <&>' (user)",
        "      1001: pruned (paused)",
        "    rank 1: next after 1.5s",
        "      1003 'Carol' (user)",
        "        1001: pruned (loop)",
    ]


def test_svg_has_a_box_per_node_and_escapes_names() -> None:
    svg = render_svg(_tree())
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert svg.count("<rect") == 3 and "Bob &lt;&amp;&gt;" in svg and "next 1.5s" in svg
