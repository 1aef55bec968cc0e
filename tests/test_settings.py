"""pbx_base.settings: every variable typed, with a default; the README's table is the rendered one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.ports import free_port
from pbx_base.retry import Backoff
from pbx_base.settings import DEFAULTS, Settings, SettingsError, get_settings, markdown_table

README = Path(__file__).resolve().parent.parent / "README.md"
REPO = README.parent


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """A clean PBX_* environment; the cached settings are reread before and after."""
    for name in list(os.environ):
        if name.startswith("PBX_"):
            monkeypatch.delenv(name)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_readme_table_is_the_rendered_one() -> None:
    text = README.read_text()
    m = re.search(r"<!-- settings-table:[^\n]*-->\n(.*?)<!-- settings-table: end -->", text, re.S)
    assert m is not None, "README.md lost its settings-table markers"
    assert m.group(1) == markdown_table(), "README.md's table is stale: python -m pbx_base.settings renders it"


def test_every_variable_the_product_reads_is_a_field() -> None:
    """No PBX_* name in the product's code that the settings do not know (the dev stack's export
    lines included): a new variable must come with a default and a meaning."""
    known = {f"PBX_{name.upper()}" for name in Settings.model_fields}
    channel_variables = {
        "PBX_CALL_ID",
        "PBX_CALLED_NAME",
        "PBX_ORIGINALLY_CALLED",
        "PBX_EXTENSION",
    }  # set on legs, not read
    # Read by compose/docker-compose.yml and its images (build arguments, the Postgres container's
    # first start), never by Python: compose/README in the project README names them.
    compose_only = {"PBX_ASTERISK_IMAGE", "PBX_BOOKWORM_IMAGE", "PBX_DB_ADMIN_PASSWORD"}
    found: set[str] = set()
    for package in (
        "pbx_base",
        "pbxctl",
        "sorcery_backend",
        "ari_app",
        "routing",
        "routing_store",
        "http_api",
        "devstack",
        "compose",
    ):
        for path in (REPO / package).rglob("*.py"):
            found |= set(re.findall(r"\bPBX_[A-Z0-9_]+\b", path.read_text()))
    assert found - known - channel_variables - compose_only == set()


def test_defaults(env: pytest.MonkeyPatch) -> None:
    s = get_settings()
    assert s.http_addr == "127.0.0.1:8090"
    assert s.pool_size == 4
    assert s.outbox_keep_s == 86400
    assert s.database_url is None and s.ari_url is None
    assert s.cache_dir == Path.home() / ".cache" / "pbx"
    assert s.ari_retry_max_s == 2.0 < Backoff.maximum
    assert s.ami_retry_max_s == 1.0 < s.db_retry_max_s
    assert DEFAULTS.pool_size == s.pool_size


def test_the_environment_sets_fields_and_empty_means_unset(env: pytest.MonkeyPatch) -> None:
    env.setenv("PBX_POOL_SIZE", "9")
    env.setenv("PBX_HTTP_ADDR", "0.0.0.0:9000")
    env.setenv("PBX_ARI_PASSWORD", "s3cret")
    env.setenv("PBX_CACHE_DIR", "")
    s = get_settings()
    assert (s.pool_size, s.http_addr) == (9, "0.0.0.0:9000")
    assert s.ari_password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)
    assert s.cache_dir == Path.home() / ".cache" / "pbx"


@pytest.mark.parametrize(
    ("name", "value", "rule"),
    [
        ("PBX_POOL_SIZE", "many", "valid integer"),
        ("PBX_POOL_SIZE", "0", "greater than or equal to 1"),
        ("PBX_HTTP_ADDR", "localhost", "HOST:PORT"),
        ("PBX_SIP_PORT", "70000", "less than or equal to 65535"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(env: pytest.MonkeyPatch, name: str, value: str, rule: str) -> None:
    env.setenv(name, value)
    with pytest.raises(SettingsError) as exc:
        get_settings()
    message = str(exc.value)
    assert name in message and rule in message and "\n" not in message
    assert value not in message.replace(name, "")  # values may be secrets: never echoed


def _pbxctl(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PBX_")}
    return subprocess.run(
        [sys.executable, "-m", "pbxctl", *args],
        env={**clean, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_cli_defaults_from_the_settings() -> None:
    port = free_port()  # nothing listens there
    r = _pbxctl("call", "list", PBX_HTTP_ADDR=f"127.0.0.1:{port}")
    assert r.returncode == 3 and f"127.0.0.1:{port}" in r.stderr, r.stderr
    assert f"127.0.0.1:{port + 1}" in _pbxctl("call", "list", "--http", f"127.0.0.1:{port + 1}").stderr


def test_a_bad_variable_stops_the_cli_with_one_line() -> None:
    r = _pbxctl("call", "list", PBX_HTTP_ADDR="nowhere")
    assert r.returncode == 1
    assert r.stderr == "pbxctl: environment variable PBX_HTTP_ADDR: Value error, expected HOST:PORT\n"
