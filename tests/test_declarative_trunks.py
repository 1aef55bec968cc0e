"""The declarative file's trunk keys and tenant settings, without a database."""

from __future__ import annotations

from typing import Any

import pytest

from sorcery_backend.declarative import ConfigError, parse_config


def tenant(extensions: dict[str, Any], **extra: Any) -> dict[str, Any]:
    base = {
        "1001": {"type": "simple", "name": "A"},
        "0": {"type": "trunk", "name": "C"},
        "8": {"type": "trunk", "name": "B"},
    }
    return {"tenants": {"t": {"domain": "t.example", "extensions": {**base, **extensions}, **extra}}}


def test_trunk_keys_and_settings_are_read() -> None:
    cfg = parse_config(
        tenant(
            {
                "0": {
                    "type": "trunk",
                    "outbound": {"strip": 2, "prepend": 49},  # a YAML number becomes its text
                    "fallback": [8],
                    "dids": [{"number": 4930, "to": 1001}, {"prefix": "+49", "to": "{rest}"}],
                    "ring_timeout_ms": 5000,
                }
            },
            settings={"ring_timeout_ms": 30000},
        )
    )
    t = cfg.tenants["t"]
    assert t is not None and t.settings is not None and t.settings.ring_timeout_ms == 30000
    trunk = t.extensions["0"]
    assert trunk.outbound is not None and (trunk.outbound.strip, trunk.outbound.prepend) == (2, "49")
    assert trunk.fallback == ["8"]
    assert [d.key for d in trunk.dids] == [("number", "4930"), ("prefix", "+49")]
    assert trunk.ring_timeout_ms == 5000


@pytest.mark.parametrize(
    ("extensions", "extra", "message"),
    [
        (
            {
                "0": {"type": "trunk", "dids": [{"number": "1", "to": "1001"}]},
                "8": {"type": "trunk", "dids": [{"number": "1", "to": "1001"}]},
            },
            {},
            "also claimed by extension t/0",
        ),
        (
            {"0": {"type": "trunk", "dids": [{"prefix": "1", "to": "1001"}, {"prefix": "1", "to": "1001"}]}},
            {},
            "also claimed",
        ),
        (
            {"0": {"type": "trunk", "dids": [{"number": "1", "to": "4711"}]}},
            {},
            "extension t/0: DID number 1 maps to unknown extension '4711'",
        ),
        ({"0": {"type": "trunk", "dids": [{"to": "1001"}]}}, {}, "exactly one of number and prefix"),
        ({"0": {"type": "trunk", "dids": [{"number": "a b", "to": "1001"}]}}, {}, "DID numbers"),
        (
            {"0": {"type": "trunk", "fallback": ["8"]}, "8": {"type": "trunk", "fallback": ["0"]}},
            {},
            "fallback cycle 0 -> 8 -> 0",
        ),
        ({"0": {"type": "trunk", "fallback": ["0"]}}, {}, "fallback cycle 0 -> 0"),
        ({"0": {"type": "trunk", "fallback": ["1001"]}}, {}, "fallback '1001' is a simple extension"),
        ({"0": {"type": "trunk", "fallback": ["8", "8"]}}, {}, "listed twice"),
        ({"0": {"type": "trunk", "outbound": {"strip": -1}}}, {}, "extension t/0: outbound.strip"),
        ({"0": {"type": "trunk", "outbound": {"prepend": "<sip>"}}}, {}, "request-URI user part"),
        ({"0": {"type": "trunk", "outbound": {"prepend": "1" * 41}}}, {}, "longer than 40"),
        ({"0": {"type": "trunk", "outbound": {"dial": "x"}}}, {}, "outbound.dial: unknown key"),
        ({"1001": {"type": "simple", "dids": [{"number": "1", "to": "1001"}]}}, {}, "dids is only valid on a trunk"),
        ({"1001": {"type": "simple", "fallback": ["0"]}}, {}, "fallback is only valid on a trunk"),
        ({"1001": {"type": "simple", "ring_timeout_ms": 0}}, {}, "extension t/1001: ring_timeout_ms"),
        ({}, {"settings": {"ring_timeout_ms": 86_400_001}}, "tenant t: settings.ring_timeout_ms"),
        ({}, {"settings": {"ringtimeout": 1000}}, "tenant t: settings.ringtimeout: unknown key"),
    ],
)
def test_refusals_name_the_object_and_the_rule(extensions: dict[str, Any], extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(tenant(extensions, **extra))
    assert message in str(info.value)
    assert "\n" not in str(info.value)
