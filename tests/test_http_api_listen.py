"""Where the API listens: loopback in the clear, anything else over TLS only; /metrics open on
loopback when the setting allows; compose keeps the controller on loopback; the add-party
endpoint rule; the dev stack's exported token."""

from __future__ import annotations

import os
import re
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from ari_app.controller.party import BadPartyEndpoint, ForeignEndpoint, dial_string, party_endpoint
from devstack.settings import StackSettings, read_http_token, write_http_token
from http_api.listen import ListenRefused, client_context, is_loopback, listen_plan
from pbx_base.settings import Settings, get_settings

REPO = Path(__file__).resolve().parent.parent


def _settings(**kw: object) -> Settings:
    return Settings.model_construct(**{**Settings.model_construct().model_dump(), **kw})


def test_loopback_is_served_in_the_clear_and_metrics_open_by_default() -> None:
    plan = listen_plan("127.0.0.1:8090", _settings())
    assert (plan.host, plan.port, plan.ssl_context, plan.open_paths) == ("127.0.0.1", 8090, None, ("/metrics",))
    assert plan.url == "http://127.0.0.1:8090"
    assert listen_plan("127.0.0.1:8090", _settings(metrics_open=False)).open_paths == ()
    assert listen_plan(":8090", _settings()).host == "127.0.0.1"
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.org", ""))


@pytest.mark.parametrize("addr", ["0.0.0.0:8090", "[::]:8090", "192.0.2.1:8090", "pbx.example:8090"])
def test_any_other_address_without_tls_is_refused(addr: str) -> None:
    with pytest.raises(ListenRefused, match=rf"address {re.escape(addr)}: not loopback.*PBX_HTTP_TLS_CERT"):
        listen_plan(addr, _settings())


def test_an_address_without_a_port_is_refused() -> None:
    with pytest.raises(ListenRefused, match=re.escape("address 127.0.0.1: expected HOST:PORT")):
        listen_plan("127.0.0.1", _settings())


def test_a_certificate_without_its_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ListenRefused, match="set both or neither"):
        listen_plan("127.0.0.1:1", _settings(http_tls_cert=tmp_path / "c.pem"))
    with pytest.raises(ListenRefused, match="cannot load"):
        listen_plan("127.0.0.1:1", _settings(http_tls_cert=tmp_path / "c.pem", http_tls_key=tmp_path / "k.pem"))


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_with_tls_the_api_is_https_and_the_cli_context_trusts_its_certificate(tmp_path: Path) -> None:
    from devstack.ports import free_port

    cert, key = _self_signed(tmp_path)
    settings = _settings(http_tls_cert=cert, http_tls_key=key)
    port = free_port()
    plan = listen_plan(f"0.0.0.0:{port}", settings)  # allowed: TLS
    assert plan.ssl_context is not None and plan.open_paths == () and plan.url.startswith("https://")

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/ping", ping)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=plan.ssl_context).start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"https://127.0.0.1:{port}/ping", ssl=client_context(settings)) as resp:
                assert await resp.json() == {"ok": True}
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await http.get(f"https://127.0.0.1:{port}/ping", ssl=ssl.create_default_context())
            with pytest.raises(aiohttp.ClientError):
                await http.get(f"http://127.0.0.1:{port}/ping")
    finally:
        await runner.cleanup()


def test_compose_keeps_the_controllers_on_loopback() -> None:
    compose = yaml.safe_load((REPO / "compose" / "docker-compose.yml").read_text())
    controllers = {name: svc for name, svc in compose["services"].items() if name.startswith("controller")}
    assert len(controllers) == 2, sorted(compose["services"])  # one per node
    for ctl in controllers.values():
        env = ctl.get("environment", {})
        command = ctl.get("command", [])
        addr = (
            command[command.index("--http") + 1] if "--http" in command else env.get("PBX_HTTP_ADDR", "127.0.0.1:8090")
        )
        addr = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", addr)  # a compose variable: its default
        tls = "PBX_HTTP_TLS_CERT" in env and "PBX_HTTP_TLS_KEY" in env
        assert tls or is_loopback(addr.rpartition(":")[0]), addr
    for service in compose["services"].values():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), port


def test_a_party_is_an_endpoint_name_of_the_calls_tenant_and_nothing_else() -> None:
    assert party_endpoint("1003", "a.example") == "1003"
    assert party_endpoint("1003@a.example", "a.example") == "1003"
    assert party_endpoint("alice.b+x_1-2", "a.example") == "alice.b+x_1-2"
    assert dial_string("1003", "a.example") == "PJSIP/1003@1003@a.example"
    with pytest.raises(ForeignEndpoint, match=r"endpoint '1003@b.example': not of the call's tenant"):
        party_endpoint("1003@b.example", "a.example")
    for bad in ["1003@b.example/1003@b.example,", "PJSIP/1003", "1003,b", "1003&1004", "1003\n", "a b", "1003;x", ""]:
        with pytest.raises(BadPartyEndpoint) as err:
            party_endpoint(bad, "a.example")
        assert "\n" not in str(err.value) and "no dial-string syntax" in str(err.value)
    with pytest.raises(BadPartyEndpoint, match=r"'x{80}\.\.\.'"):
        party_endpoint("x" * 500 + "/", "a.example")


def test_the_dev_stack_exports_its_api_address_and_a_private_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PBX_STACKS_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        s = StackSettings(
            name="t", pg_port=1, sip_port=2, http_port=3, ami_port=4, rtp_start=5, rtp_end=6,
            db_password="x", ari_password="y", ami_password="z",
        )  # fmt: skip
        (tmp_path / "t").mkdir()
        assert "PBX_HTTP_TOKEN" not in s.exports() and "PBX_HTTP_ADDR" not in s.exports()
        (tmp_path / "t" / "serve.json").write_text('{"http_port": 8123}')
        (tmp_path / "t" / "http_token").write_text("old\n")
        os.chmod(tmp_path / "t" / "http_token", 0o644)
        write_http_token("t", "pbx_secret")
        assert stat.S_IMODE((tmp_path / "t" / "http_token").stat().st_mode) == 0o600
        assert read_http_token("t") == "pbx_secret"
        exports = s.exports()
        assert (exports["PBX_HTTP_ADDR"], exports["PBX_HTTP_TOKEN"]) == ("127.0.0.1:8123", "pbx_secret")
    finally:
        get_settings.cache_clear()


async def test_dev_up_keeps_its_token_while_valid_and_replaces_a_revoked_one(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncpg

    from devstack.api_token import DEV_TOKEN_NAME, ensure_operator_token
    from http_api.tokens import check_token, revoke_token

    monkeypatch.setenv("PBX_STACKS_DIR", str(tmp_path))
    get_settings.cache_clear()
    (tmp_path / "t").mkdir()
    conn = await asyncpg.connect(db)
    try:
        await ensure_operator_token(conn, "t")
        first = read_http_token("t")
        assert first is not None and (p := await check_token(conn, first)) is not None and p.tenant is None
        await ensure_operator_token(conn, "t")
        assert read_http_token("t") == first
        await revoke_token(conn, DEV_TOKEN_NAME)
        await ensure_operator_token(conn, "t")
        second = read_http_token("t")
        assert second not in (None, first) and await check_token(conn, second or "") is not None
    finally:
        await conn.close()
        get_settings.cache_clear()


def test_serve_refuses_an_address_beyond_loopback_without_tls_before_starting_anything() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PBX_")}
    env["PYTHONPATH"] = str(REPO)
    r = subprocess.run(
        [sys.executable, "-m", "pbxctl", "serve", "--dsn", "postgresql://nobody@127.0.0.1:1/x", "--http", "0.0.0.0:1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("pbxctl: address 0.0.0.0:1: not loopback") and r.stderr.count("\n") == 1, r.stderr
