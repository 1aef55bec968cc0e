"""routing.model: number rules, DID matching, static contacts after rule R, empty extensions."""

from __future__ import annotations

from typing import Any

from routing.model import (
    DEFAULT_RING_TIMEOUT_MS,
    DidRule,
    Extension,
    Outbound,
    StaticContact,
    directory_from_config,
    static_contacts_from_config,
)


def test_outbound_strips_then_prepends() -> None:
    assert Outbound(2, "+49").apply("0030123456") == "+4930123456"
    assert Outbound(0, "").apply("0301") == "0301"
    assert Outbound(9, "x").apply("0301") == "x"  # more stripped than there is: only the prepend
    assert Extension("0", "trunk").dialed("0301") == "0301"  # no rules: sent as dialed


DIDS = (
    DidRule("2000", number="+4930123456100"),
    DidRule("{rest}", prefix="+4930123456"),
    DidRule("1999", prefix="+49301234561"),
    DidRule("3000", prefix="+4930123456100"),
)


def trunk(*dids: DidRule) -> Extension:
    return Extension("0", "trunk", dids=dids)


def test_longest_did_rule_wins_and_an_exact_one_beats_a_prefix_of_its_length() -> None:
    t = trunk(*DIDS)
    assert t.did_target("+4930123456100") == "2000"  # exact beats the prefix of the same length
    assert t.did_target("+49301234561005") == "3000"  # longest prefix
    assert t.did_target("+4930123456101") == "1999"
    assert t.did_target("+49301234562") == "2"  # {rest}
    assert t.did_target("+4940") is None  # a trunk with dids routes only what they map


def test_rule_order_in_the_file_does_not_matter() -> None:
    assert trunk(*reversed(DIDS)).did_target("+4930123456100") == "2000"


def test_a_trunk_without_dids_routes_the_number_as_it_is() -> None:
    assert trunk().did_target("+4930") == "+4930"


def test_rest_of_a_prefix_that_is_the_whole_number_is_empty() -> None:
    assert trunk(DidRule("{rest}", prefix="+49")).did_target("+49") == ""


def test_static_contacts_follow_rule_r() -> None:
    config: dict[str, Any] = {
        "templates": {
            "base": {"aor": {"contact": ["sip:a@127.0.0.2"], "qualify_frequency": 30}},
            "other": {"aor": {"contact": "sip:b@127.0.0.3, sip:c@127.0.0.4"}},
            "noqualify": {"parents": ["base"], "aor": {"qualify_frequency": "0"}},
        },
        "endpoints": {
            "inherits": {"templates": ["base"]},
            "last_parent_wins": {"templates": ["base", "other"]},  # a per-level list: the last level's whole list
            "own_wins": {"templates": ["base"], "aor": {"contact": ["sip:own@127.0.0.9"]}},
            "unqualified": {"templates": ["noqualify"]},
            "phone": {"auth": {"password": "x"}},
        },
    }
    got = static_contacts_from_config(config)
    assert got == {
        "inherits": (StaticContact("sip:a@127.0.0.2", True),),
        "last_parent_wins": (StaticContact("sip:b@127.0.0.3", True), StaticContact("sip:c@127.0.0.4", True)),
        "own_wins": (StaticContact("sip:own@127.0.0.9", True),),
        "unqualified": (StaticContact("sip:a@127.0.0.2", False),),
    }


def test_static_contacts_survive_a_template_cycle() -> None:
    config = {
        "templates": {"a": {"parents": ["b"], "aor": {"contact": ["sip:x@h"]}}, "b": {"parents": ["a"]}},
        "endpoints": {"e": {"templates": ["a"]}},
    }
    assert static_contacts_from_config(config) == {"e": (StaticContact("sip:x@h"),)}


def test_ring_timeout_of_the_tenant_and_its_default() -> None:
    assert directory_from_config("t", {}).ring_timeout_ms == DEFAULT_RING_TIMEOUT_MS
    assert directory_from_config("t", {"settings": {"ring_timeout_ms": 20000}}).ring_timeout_ms == 20000


def test_empty_extensions() -> None:
    exts = {
        "1001": {"type": "simple", "endpoints": ["1001"]},
        "1002": {"type": "simple"},  # no endpoint: empty
        "2000": {"type": "group", "ranks": [{"members": ["1002"]}]},  # only an empty member
        "2001": {"type": "group", "ranks": [{"members": [{"number": "1001", "active": False}]}]},  # paused only
        "2002": {"type": "group", "ranks": [{"members": ["2000", "1001"]}]},
        "2003": {"type": "group", "ranks": [{"members": ["2004"]}]},  # a loop of groups: nothing rings
        "2004": {"type": "group", "ranks": [{"members": ["2003"]}]},
        "1003": {"type": "simple", "forward": {"mode": "always", "to": "1001"}},  # a forward to someone
        "1004": {"type": "simple", "forward": {"mode": "busy", "to": "1002"}},  # a forward to nothing
        "0800": {"type": "external"},  # no trunk owns it
        "9": {"type": "trunk", "endpoints": ["gw"]},
        "9123": {"type": "external"},
        "7": {"type": "trunk"},  # no endpoint
        "8": {"type": "trunk", "fallback": ["9"]},  # nothing of its own, but a fallback
    }
    d = directory_from_config("t", {"extensions": exts})
    assert d.empty == {"1002", "2000", "2001", "2003", "2004", "1004", "0800", "7"}


def test_fallback_chain_is_depth_first_once_each_and_trunks_only() -> None:
    exts = {
        "0": {"type": "trunk", "fallback": ["8", "9"]},
        "8": {"type": "trunk", "fallback": ["7", "0"]},
        "7": {"type": "trunk", "fallback": ["9"]},
        "9": {"type": "trunk", "fallback": ["2000"]},
        "2000": {"type": "group"},
    }
    d = directory_from_config("t", {"extensions": exts})
    assert [t.number for t in d.fallback_chain(d.extensions["0"])] == ["8", "7", "9"]
