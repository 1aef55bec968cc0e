"""The one decoder: rows in any order give the same directory; contacts come by id with URIs."""

from __future__ import annotations

import random

from routing.model import DidRule, Forward, Member, Outbound, Rank, StaticContact
from routing_store.decode import decode_contacts, decode_directory

EXTENSIONS = [
    # number, name, forward mode, to, delay, then the plain columns (type, short_name, ...), then
    # the trunk keys (jsonb: asyncpg's text, or already decoded)
    ("10", "Ten", None, None, 0, "simple", None, True, False, None, None, None, None, None),
    ("9", "Nine", "busy", "10", 0, "simple", "N", False, True, "99", "Out", "tone-de", "de", '{"ring_timeout_ms": 5}'),
    ("200", "Group", None, None, 0, "group", None, True, False, None, None, None, None, None),
]
ENDPOINTS = [("10", 1, "shared"), ("10", 0, "ten"), ("9", 0, "shared")]
RANKS = [("200", 1, "next", 500), ("200", 0, "default", 0)]
MEMBERS = [("200", 0, 1, "10", False), ("200", 0, 0, "9", True), ("200", 1, 0, "10", True)]


def test_rows_in_any_order_decode_to_the_same_directory() -> None:
    first = decode_directory("t", EXTENSIONS, ENDPOINTS, RANKS, MEMBERS)
    rng = random.Random(3)
    for _ in range(20):
        rows = [list(r) for r in (EXTENSIONS, ENDPOINTS, RANKS, MEMBERS)]
        for r in rows:
            rng.shuffle(r)
        again = decode_directory("t", *rows)
        assert list(again.extensions) == ["9", "10", "200"]  # shortest number first
        assert again == first
    nine = first.extensions["9"]
    assert (nine.forward, nine.short_name, nine.call_waiting, nine.dialout, nine.language) == (
        Forward("busy", "10", 0),
        "N",
        False,
        True,
        "de",
    )
    assert first.extensions["10"].endpoints == ("ten", "shared")
    # An endpoint listed twice belongs to the first extension in the decoder's order.
    assert first.endpoint_owner["shared"] == "9"
    assert first.extensions["200"].ranks == (
        Rank("default", 0, (Member("9"), Member("10", False))),
        Rank("next", 500, (Member("10"),)),
    )


def test_contacts_by_id_with_their_uris() -> None:
    rows = [("e1@t.example", "b", "sip:b"), ("e2@t.example", "a", "sip:a"), ("e1@t.example", "a0", "sip:a0")]
    contacts, uris = decode_contacts([*rows, (None, None, None)], "t.example")
    assert contacts == {"e1": ["a0", "b"], "e2": ["a"]}
    assert uris == {"a": "sip:a", "a0": "sip:a0", "b": "sip:b"}


def test_trunk_keys_static_contacts_and_settings() -> None:
    keys = {"outbound": {"strip": 1, "prepend": "+49"}, "fallback": ["8"], "dids": [{"prefix": "0301", "to": "{rest}"}]}
    trunk = ("0", "Carrier", None, None, 0, "trunk", None, True, False, None, None, None, None, keys)
    static = [("gw", '{"aor": {"contact": ["sip:127.0.0.2:5070"], "qualify_frequency": "30"}}'), ("x", {"aor": {}})]
    d = decode_directory("t", [trunk], [("0", 0, "gw")], [], [], static, '{"ring_timeout_ms": 20000}')
    t = d.extensions["0"]
    assert (t.outbound, t.fallback, t.dids) == (Outbound(1, "+49"), ("8",), (DidRule("{rest}", prefix="0301"),))
    assert d.static_contacts == {"gw": (StaticContact("sip:127.0.0.2:5070", qualified=True),)}
    assert d.ring_timeout_ms == 20000
    assert decode_directory("t", [], [], [], [], [], None).ring_timeout_ms == 180_000
