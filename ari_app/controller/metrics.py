"""Prometheus metrics of the controller, in the text exposition format, without a dependency.

Counters and one summary are all the controller needs; labels are fixed at the call site.
"""

from __future__ import annotations

from collections import defaultdict

__all__ = ["Metrics"]

Labels = tuple[tuple[str, str], ...]


def _fmt(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{v}"' for k, v in labels)
    return "{" + inner + "}"


class Metrics:
    def __init__(self) -> None:
        self._counters: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self._gauges: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self._summaries: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # sum, count
        self._help: dict[str, tuple[str, str]] = {}
        self._declare()

    def _declare(self) -> None:
        for name, kind, text in (
            ("pbx_calls_total", "counter", "Calls that entered Stasis, by result"),
            ("pbx_legs_total", "counter", "Device legs started, by outcome"),
            ("pbx_routing_seconds", "summary", "Time from StasisStart to the first ring commands"),
            ("pbx_failures_total", "counter", "Controller errors, by kind"),
            ("pbx_calls_active", "gauge", "Calls ringing or bridged now"),
            ("pbx_ari_connected", "gauge", "1 while the ARI events WebSocket is up"),
        ):
            self._help[name] = (kind, text)

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        self._counters[name][tuple(sorted(labels.items()))] += value

    def set(self, name: str, value: float, **labels: str) -> None:
        self._gauges[name][tuple(sorted(labels.items()))] = value

    def observe(self, name: str, value: float) -> None:
        s = self._summaries[name]
        s[0] += value
        s[1] += 1

    def value(self, name: str, **labels: str) -> float:
        key = tuple(sorted(labels.items()))
        if name in self._counters:
            return self._counters[name].get(key, 0.0)
        return self._gauges.get(name, {}).get(key, 0.0)

    def render(self) -> str:
        lines: list[str] = []
        for name, (kind, text) in self._help.items():
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            if kind == "summary":
                total, count = self._summaries.get(name, [0.0, 0.0])
                lines += [f"{name}_sum {total:.6f}", f"{name}_count {count:g}"]
                continue
            series = (self._counters if kind == "counter" else self._gauges).get(name, {})
            for labels, value in sorted(series.items()):
                lines.append(f"{name}{_fmt(labels)} {value:g}")
        return "\n".join(lines) + "\n"
