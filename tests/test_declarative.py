"""The declarative file: YAML strictness, typing and whole-file reference rules (no database)."""

from __future__ import annotations

import pytest

from sorcery_backend.declarative import ConfigError, load_config, load_yaml, parse_config


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
            "not a string or number",
        ),
        ("tenants: {a: {domain: same.example}, b: {domain: same.example}}", "SIP domains are unique"),
    ],
)
def test_refusals_name_the_object_and_rule(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse(text)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


# ---------------------------------------------------------------------------------------------
# The operator's file is read as text (load_config): YAML 1.1 conversions and hostile input


def load_file(tmp_path, data: bytes):  # type: ignore[no-untyped-def]
    f = tmp_path / "c.yaml"
    f.write_bytes(data)
    return load_config(f)


def test_scalars_keep_the_text_written(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = load_file(
        tmp_path,
        b"tenants:\n  acme:\n    domain: acme.example\n    endpoints:\n"
        b"      0777: {auth: {password: 0123}, endpoint: {language: no, accountcode: 1:30, dtmf_mode: on}}\n"
        b"    extensions:\n      0777: {type: simple, endpoints: [0777], call_waiting: no, ranks: []}\n",
    )
    tenant = cfg.tenants["acme"]
    assert tenant is not None
    ep = tenant.endpoints["0777"]
    assert ep.auth == {"password": ["0123"]}
    assert ep.endpoint == {"language": ["no"], "accountcode": ["1:30"], "dtmf_mode": ["on"]}
    assert tenant.extensions["0777"].endpoints == ["0777"]
    assert tenant.extensions["0777"].call_waiting is False


@pytest.mark.parametrize(
    ("data", "rule"),
    [
        (b"tenants:\n  ? [a, b]\n  : {domain: a.example}\n", "keys are scalars"),
        (b"tenants: " + b"[" * 5000 + b"]" * 5000, "nesting depth is limited"),
        (b"".join(b" " * i + b"a:\n" for i in range(5000)), "nesting depth is limited"),
        (b"tenants: {acme: {domain: \xff\xfe.example}}", "files are UTF-8"),
        (b"tenants: {acme: {domain: " + b"a" * 200_000 + b".example}}", "values are at most"),
        (b"a: &x [1, 2]\nb: *x\n", "anchors and aliases are not accepted"),
        (b"tenants: !!python/object:os.system {}", "only plain YAML mappings"),
        (b"tenants: {acme: {domain: !!binary YQ==}}", "only plain YAML scalars"),
        (b'tenants: {acme: {domain: a.example, extensions: {"1": {type: simple, name: "A\\r\\nB"}}}}', "line breaks"),
        (b"tenants: {acme: {domain: a.example}, beta: {domain: A.EXAMPLE}}", "compared case-insensitively"),
    ],
)
def test_hostile_files_are_one_line_refusals(tmp_path, data: bytes, rule: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as exc:
        load_file(tmp_path, data)
    assert rule in str(exc.value)
    assert "\n" not in str(exc.value) and len(str(exc.value)) < 300


def test_a_refusal_never_quotes_a_value(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for data in (
        b"tenants: {acme: {domain: a.example, endpoints: {e: {auth: {password: {hunter2: x}}}}}}",
        b'tenants: {acme: {domain: a.example, endpoints: {e: {auth: {password: "hunter2\\t"}}}}}',
        b"tenants: {acme: {domain: a.example, endpoints: {e: {auth: {password: [hunter2}}}}}",
    ):
        with pytest.raises(ConfigError) as exc:
            load_file(tmp_path, data)
        assert "hunter2" not in str(exc.value)


def test_a_delay_beyond_the_databases_integer_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"extension acme/1: forward\.delay_ms"):
        parse(
            "tenants: {acme: {domain: a.example, extensions: "
            "{'1': {type: simple, forward: {mode: always, to: '1', delay_ms: 99999999999999999999}}}}}"
        )
