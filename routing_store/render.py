"""An explained call tree (routing.explain) drawn for people: indented text, and an SVG picture.

Here, not in the pure engine, so that the CLI and the HTTP API can both draw it.
"""

from __future__ import annotations

from html import escape
from typing import Any

__all__ = ["render_svg", "render_text"]


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
