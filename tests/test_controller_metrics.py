from prometheus_client.parser import text_string_to_metric_families

from ari_app.controller.metrics import Metrics


def test_text_exposition() -> None:
    m = Metrics()
    m.inc("pbx_calls_total", result="answered")
    m.inc("pbx_calls_total", result="answered")
    m.inc("pbx_legs_total", outcome="rejected")
    m.set("pbx_calls_active", 3)
    m.observe("pbx_routing_seconds", 0.002)
    text = m.render()
    assert 'pbx_calls_total{result="answered"} 2.0' in text
    assert 'pbx_legs_total{outcome="rejected"} 1.0' in text
    assert "pbx_calls_active 3.0" in text
    assert "pbx_routing_seconds_count 1.0" in text and "pbx_routing_seconds_sum 0.002" in text
    assert "# TYPE pbx_calls_total counter" in text
    assert "_created" not in text
    assert m.value("pbx_calls_total", result="answered") == 2
    assert m.value("pbx_failures_total", kind="lookup") == 0


def test_every_metric_is_declared_before_it_is_used() -> None:
    families = {f.name: f.type for f in text_string_to_metric_families(Metrics().render())}
    assert families == {
        "pbx_calls": "counter",
        "pbx_legs": "counter",
        "pbx_failures": "counter",
        "pbx_transfers": "counter",
        "pbx_calls_active": "gauge",
        "pbx_ari_connected": "gauge",
        "pbx_ari_peer_connected": "gauge",
        "pbx_routing_seconds": "summary",
        "pbx_call_records_written": "counter",
        "pbx_call_records_dropped": "counter",
        "pbx_call_records_buffered": "gauge",
    }


def test_label_values_are_escaped() -> None:
    m = Metrics()
    m.inc("pbx_failures_total", kind='a "quoted"\nkind\\')
    samples = [
        s for f in text_string_to_metric_families(m.render()) for s in f.samples if s.name == "pbx_failures_total"
    ]
    assert [s.labels for s in samples] == [{"kind": 'a "quoted"\nkind\\'}]


def test_two_controllers_keep_their_own_counts() -> None:
    a, b = Metrics(), Metrics()
    a.inc("pbx_calls_total", result="answered")
    assert b.value("pbx_calls_total", result="answered") == 0
