"""`route explain`: the stage-1 tree of one call as data, text and an SVG picture."""

from __future__ import annotations

from html import escape
from typing import Any

from routing.model import Directory
from routing.stage1 import CallRequest, Node, Pruned, Tree, build_tree

__all__ = ["explain", "explain_tree", "render_svg", "render_text"]


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


def render_text(tree: dict[str, Any]) -> str:
    lines = [f"{tree['tenant']}: call to {tree['called']}: {tree['status']}"]

    def walk(n: dict[str, Any], indent: str) -> None:
        extra = f" dialed {n['dialed']}" if "dialed" in n else ""
        lines.append(f"{indent}{n['number']} {n['name']!r} ({n['kind']}){extra}")
        for i, r in enumerate(n.get("ranks", [])):
            lines.append(f"{indent}  rank {i}: {r['mode']} after {r['delay_ms'] / 1000:g}s")
            for m in r["members"]:
                walk(m, indent + "    ")
            for p in r.get("pruned", []):
                lines.append(f"{indent}    {p['number']}: pruned ({p['reason']})")
        if "forward" in n:
            f = n["forward"]
            when = f" after {f['delay_ms'] / 1000:g}s" if f.get("delay_ms") else ""
            lines.append(f"{indent}  forward {f['mode']}{when}:")
            walk(f["to"], indent + "    ")
        for f in n.get("fallback", []):
            lines.append(f"{indent}  fallback:")
            walk(f, indent + "    ")
        for p in n.get("pruned", []):
            lines.append(f"{indent}  {p['number']}: pruned ({p['reason']})")

    if "tree" in tree:
        walk(tree["tree"], "  ")
    for p in tree.get("pruned", []):
        lines.append(f"  {p['number']}: pruned ({p['reason']})")
    return "\n".join(lines) + "\n"


def render_svg(tree: dict[str, Any]) -> str:
    """A left-to-right tree: one box per node, edges labelled with rank mode and delay."""
    boxes: list[tuple[int, int, str, str]] = []  # x, y, label, colour
    edges: list[tuple[int, int, int, int, str]] = []
    row = [0]

    def place(n: dict[str, Any], depth: int) -> tuple[int, int]:
        children: list[tuple[dict[str, Any], str]] = []
        for r in n.get("ranks", []):
            for m in r["members"]:
                children.append((m, f"{r['mode']} {r['delay_ms'] / 1000:g}s"))
        if "forward" in n:
            f = n["forward"]
            children.append(
                (f["to"], f"fwd {f['mode']}" + (f" {f['delay_ms'] / 1000:g}s" if f.get("delay_ms") else ""))
            )
        x = 20 + depth * 220
        if not children:
            y = 20 + row[0] * 60
            row[0] += 1
        else:
            ys = []
            for child, label in children:
                cx, cy = place(child, depth + 1)
                ys.append(cy)
                edges.append((x + 160, 0, cx, cy, label))
            y = sum(ys) // len(ys)
            for i in range(len(edges) - len(children), len(edges)):
                x1, _y1, x2, y2, label = edges[i]
                edges[i] = (x1, y + 18, x2, y2 + 18, label)
        colour = {"group": "#dde8ff", "trunk": "#ffe7cc", "multiring": "#e6ffe0"}.get(n["kind"], "#f4f4f4")
        boxes.append((x, y, f"{n['number']} {n['name']}", colour))
        return x, y

    if "tree" in tree:
        place(tree["tree"], 0)
    width = 40 + 220 * (1 + max((b[0] for b in boxes), default=0) // 220)
    height = 40 + 60 * max(row[0], 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        f'font-size="12"><title>{escape(tree["tenant"])}: {escape(tree["called"])} ({escape(tree["status"])})</title>'
    ]
    for x1, y1, x2, y2, label in edges:
        parts.append(f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="#666"/>')
        parts.append(f'<text x="{(x1 + x2) // 2 - 20}" y="{(y1 + y2) // 2 - 4}" fill="#a33">{escape(label)}</text>')
    for x, y, label, colour in boxes:
        parts.append(f'<rect x="{x}" y="{y}" width="160" height="36" rx="6" fill="{colour}" stroke="#333"/>')
        parts.append(f'<text x="{x + 8}" y="{y + 22}">{escape(label[:24])}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
