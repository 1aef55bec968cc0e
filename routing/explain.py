"""`route explain`: the stage-1 tree of one call as JSON-ready data (routing_store.render draws it)."""

from __future__ import annotations

from typing import Any

from routing.model import Directory
from routing.stage1 import CallRequest, Node, Pruned, Tree, build_tree

__all__ = ["explain", "explain_tree"]


def _node(n: Node) -> dict[str, Any]:
    out: dict[str, Any] = {"number": n.number, "name": n.ext.name, "kind": n.kind, "depth": n.depth}
    if n.replaced:
        out["reached_by_immediate_forward_from"] = n.replaced
    if n.endpoints:
        out["endpoints"] = list(n.endpoints)
    if n.dialed:
        out["dialed"] = n.dialed
    if n.fallbacks:
        out["fallback"] = [_node(f) for f in n.fallbacks]
    if n.cw_off and n.kind != "group":
        out["call_waiting"] = False
    if n.ranks:
        out["ranks"] = [
            {
                "mode": r.mode,
                "delay_ms": r.delay_ms,
                "members": [_node(m) for m in r.members],
                **({"pruned": [_pruned(p) for p in r.pruned]} if r.pruned else {}),
            }
            for r in n.ranks
        ]
    if n.timed_forward:
        out["forward"] = {"mode": "always", "delay_ms": n.timed_forward[0], "to": _node(n.timed_forward[1])}
    elif n.busy_forward:
        out["forward"] = {"mode": "busy", "to": _node(n.busy_forward)}
    elif n.unavailable_forward:
        out["forward"] = {"mode": "unavailable", "to": _node(n.unavailable_forward)}
    if n.pruned:
        out["pruned"] = [_pruned(p) for p in n.pruned]
    return out


def _pruned(p: Pruned) -> dict[str, str]:
    return {"number": p.number, "reason": p.reason}


def explain(d: Directory, call: CallRequest) -> dict[str, Any]:
    return explain_tree(build_tree(d, call), call)


def explain_tree(tree: Tree, call: CallRequest) -> dict[str, Any]:
    out: dict[str, Any] = {"status": tree.status, "tenant": call.tenant, "called": call.called}
    if tree.called and tree.called != call.called:
        out["did_routes_to"] = tree.called
    if tree.status == "ok":
        out["ring_timeout_ms"] = tree.ring_timeout_ms
    if tree.caller is not None:
        out["caller"] = {
            "number": tree.caller.number,
            "name": tree.caller.name,
            "extension": tree.caller.extension,
            "dialout": tree.caller.dialout,
        }
        out["calledname"] = tree.calledname
        if tree.prefix:
            out["callername_prefix"] = f"[{tree.prefix}]"
    if tree.self_call:
        out["result"] = "busy (calling one's own extension)"
    if tree.root is not None:
        out["tree"] = _node(tree.root)
    if tree.pruned:
        out["pruned"] = [_pruned(p) for p in tree.pruned]
    return out
