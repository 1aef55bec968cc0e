"""The declarative file: YAML strictness, typing and whole-file reference rules (no database)."""

from __future__ import annotations

import pytest

from sorcery_backend.declarative import ConfigError, load_yaml, parse_config


def parse(text: str):  # type: ignore[no-untyped-def]
    return parse_config(load_yaml(text))


def test_duplicate_keys_are_refused() -> None:
    with pytest.raises(ConfigError, match="duplicate key 'acme' at line 4"):
        load_yaml("tenants:\n  acme:\n    domain: a.example\n  acme:\n    domain: b.example\n")


def test_malformed_yaml_is_one_line() -> None:
    with pytest.raises(ConfigError) as exc:
        load_yaml("tenants: [unclosed\n")
    assert "\n" not in str(exc.value) and "malformed YAML" in str(exc.value)


def test_numbers_and_booleans_become_strings() -> None:
    cfg = parse(
        """
tenants:
  acme:
    domain: acme.example
    endpoints:
      1001: {aor: {max_contacts: 1, remove_existing: yes}, endpoint: {set_var: [A=1, B=2]}}
    extensions:
      1001: {type: simple, endpoints: [1001], outgoing_number: 2999}
"""
    )
    tenant = cfg.tenants["acme"]
    assert tenant is not None
    ep = tenant.endpoints["1001"]
    assert ep.aor == {"max_contacts": ["1"], "remove_existing": ["yes"]}
    assert ep.endpoint["set_var"] == ["A=1", "B=2"]
    assert tenant.extensions["1001"].outgoing_number == "2999"


def test_null_tenant_means_delete() -> None:
    assert parse("tenants: {oldco: null}").tenants == {"oldco": None}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tenants: {Acme: {domain: a.example}}", "tenant 'Acme': name must match"),
        (
            "tenants: {acme: {domain: a.example, endpoints: {e: {templates: [nope]}}}}",
            "endpoint acme/e: unknown template 'nope'",
        ),
        (
            "tenants: {acme: {domain: a.example, endpoints: {e: {templates: [g]}}}, "
            "beta: {domain: b.example, templates: {g: {}}}}",
            "it exists in tenant beta: references across tenants are refused",
        ),
        ("tenants: {acme: {domain: a.example, templates: {t: {templates: [x]}}}}", "'templates' is not a template key"),
        ("tenants: {acme: {domain: a.example, endpoints: {'a@b': {}}}}", "endpoint acme/a@b: name must match"),
        (
            "tenants: {acme: {domain: a.example, extensions: {'1': {type: simple, endpoints: [x]}}}}",
            "extension acme/1: unknown endpoint 'x'",
        ),
        (
            "tenants: {acme: {domain: a.example, extensions: {'1': {type: group, ranks: [{members: ['2']}]}}}}",
            "extension acme/1: unknown extension '2'",
        ),
        ("tenants: {acme: {domain: a.example, extensions: {'1': {type: weird}}}}", "extension acme/1: type"),
        ("tenants: {acme: {domain: a.example, bogus: 1}}", "tenant acme: bogus: unknown key"),
        (
            "tenants: {acme: {domain: a.example, endpoints: {e: {aor: {max_contacts: {x: 1}}}}}}",
            "is not a string or number",
        ),
        ("tenants: {a: {domain: same.example}, b: {domain: same.example}}", "SIP domains are unique"),
    ],
)
def test_refusals_name_the_object_and_rule(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse(text)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)
