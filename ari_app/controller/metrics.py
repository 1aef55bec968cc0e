"""Prometheus metrics of the controller, on prometheus_client (text format, label escaping).

Each :class:`Metrics` has a registry of its own, so two controllers in one process (tests) never
share or clash over a series. Call sites name a metric and its labels; the kind and the label
names are fixed here.
"""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Summary, generate_latest

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST

# Without this every counter also exposes a `*_created` timestamp series: noise for these metrics.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._counters = {
            "pbx_calls_total": Counter(
                "pbx_calls_total", "Calls that entered Stasis, by result", ["result"], registry=r
            ),
            "pbx_legs_total": Counter("pbx_legs_total", "Device legs started, by outcome", ["outcome"], registry=r),
            "pbx_failures_total": Counter("pbx_failures_total", "Controller errors, by kind", ["kind"], registry=r),
            "pbx_call_records_written_total": Counter(
                "pbx_call_records_written_total", "Call records written to the database", registry=r
            ),
            "pbx_call_records_dropped_total": Counter(
                "pbx_call_records_dropped_total",
                "Call records dropped: the database was away longer than the buffer holds",
                registry=r,
            ),
            "pbx_transfers_total": Counter(
                "pbx_transfers_total", "REFER transfers, by kind and result", ["kind", "result"], registry=r
            ),
        }
        self._gauges = {
            "pbx_calls_active": Gauge("pbx_calls_active", "Calls ringing or bridged now", registry=r),
            "pbx_ari_connected": Gauge("pbx_ari_connected", "1 while the ARI events WebSocket is up", registry=r),
            "pbx_ari_peer_connected": Gauge(
                "pbx_ari_peer_connected",
                "1 while the read-only events feed of a peer node is up and seeded (cluster-wide in-use state)",
                ["node"],
                registry=r,
            ),
            "pbx_call_records_buffered": Gauge(
                "pbx_call_records_buffered", "Call records waiting in memory for the database", registry=r
            ),
        }
        self._summaries = {
            "pbx_routing_seconds": Summary(
                "pbx_routing_seconds", "Time from StasisStart to the first ring commands", registry=r
            ),
        }

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        counter = self._counters[name]
        (counter.labels(**labels) if labels else counter).inc(value)

    def set(self, name: str, value: float, **labels: str) -> None:
        gauge = self._gauges[name]
        (gauge.labels(**labels) if labels else gauge).set(value)

    def observe(self, name: str, value: float) -> None:
        self._summaries[name].observe(value)

    def value(self, name: str, **labels: str) -> float:
        """The current value of one series; 0 for a series never touched."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def render(self) -> str:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry).decode()
