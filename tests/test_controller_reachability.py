"""Static contacts' reachability from Asterisk's reports: per contact when an event named it, else
by the endpoint's state."""

from __future__ import annotations

from ari_app.ari import ContactStatusChange, parse_event
from ari_app.controller.reachability import ContactReachability

URI = "sip:127.0.0.2:5070"


def test_contact_reports_beat_the_endpoint_state() -> None:
    r = ContactReachability()
    view = r.of_domain("t.example")
    assert view.reachable("carrier", URI)  # nothing reported: not offline
    r.endpoint_state("carrier@t.example", "offline")
    assert not view.reachable("carrier", URI)
    r.endpoint_state("carrier@t.example", "online")
    r.contact_status("carrier@t.example", URI, "Unreachable")
    assert not view.reachable("carrier", URI)
    assert view.reachable("carrier", "sip:127.0.0.2:5071")  # another contact of the online endpoint
    r.contact_status("carrier@t.example", URI, "Reachable")
    assert view.reachable("carrier", URI)
    r.contact_status("carrier@t.example", URI, "Removed")
    r.reset([("carrier@t.example", "offline"), ("other@t.example", "online")])
    assert not view.reachable("carrier", URI) and r.of_domain("t.example").reachable("other", URI)
    assert r.of_domain("u.example").reachable("carrier", URI)  # tenants apart


def test_contact_status_change_event_parses() -> None:
    ev = parse_event(
        {
            "type": "ContactStatusChange",
            "application": "pbx",
            "endpoint": {"technology": "PJSIP", "resource": "carrier@t.example", "state": "offline"},
            "contact_info": {"uri": URI, "contact_status": "Unreachable", "aor": "carrier@t.example"},
        }
    )
    assert isinstance(ev, ContactStatusChange)
    assert (ev.endpoint.resource, ev.contact_info.uri, ev.contact_info.contact_status) == (
        "carrier@t.example",
        URI,
        "Unreachable",
    )
