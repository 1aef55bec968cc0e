from ari_app.controller.metrics import Metrics


def test_text_exposition() -> None:
    m = Metrics()
    m.inc("pbx_calls_total", result="answered")
    m.inc("pbx_calls_total", result="answered")
    m.inc("pbx_legs_total", outcome="rejected")
    m.set("pbx_calls_active", 3)
    m.observe("pbx_routing_seconds", 0.002)
    text = m.render()
    assert 'pbx_calls_total{result="answered"} 2' in text
    assert 'pbx_legs_total{outcome="rejected"} 1' in text
    assert "pbx_calls_active 3" in text
    assert "pbx_routing_seconds_count 1" in text and "pbx_routing_seconds_sum 0.002000" in text
    assert "# TYPE pbx_calls_total counter" in text
    assert m.value("pbx_calls_total", result="answered") == 2
