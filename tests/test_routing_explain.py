"""`route explain` shows trunk legs: the number sent, the fallbacks, where a DID leads, the timeout."""

from __future__ import annotations

from routing.explain import explain
from routing.model import directory_from_config
from routing.stage1 import CallRequest
from routing_store.render import render_text

EXTS = {
    "1001": {"type": "simple", "name": "Alice", "endpoints": ["1001"], "dialout": True},
    "0": {
        "type": "trunk",
        "name": "Primary",
        "endpoints": ["p"],
        "outbound": {"strip": 1, "prepend": "+49"},
        "fallback": ["8"],
        "dids": [{"prefix": "+4930", "to": "{rest}"}],
    },
    "8": {"type": "trunk", "name": "Backup", "endpoints": ["b"]},
}
D = directory_from_config("t", {"extensions": EXTS, "settings": {"ring_timeout_ms": 25000}})


def test_explain_shows_the_number_sent_and_the_fallbacks() -> None:
    out = explain(D, CallRequest("t", "1001", "0301"))
    assert out["ring_timeout_ms"] == 25000
    assert out["tree"]["dialed"] == "+49301"
    assert [(f["number"], f["name"], f["dialed"]) for f in out["tree"]["fallback"]] == [("0301", "Backup", "0301")]
    assert "fallback:" in render_text(out)


def test_explain_shows_where_a_did_leads() -> None:
    out = explain(D, CallRequest("t", "+4917", "+49301001", endpoint="p"))
    assert out["did_routes_to"] == "1001"
    assert out["tree"]["number"] == "1001"
