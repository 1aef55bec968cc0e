"""The embedded stack, for real: Asterisk reads endpoints from Postgres, sipp registers and calls."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest
from stack import apply_yaml, no_controller, wait_delivered

from devstack import sipp
from devstack.stack import Stack, run_sql

pytestmark = pytest.mark.stack

PHONES = """
tenants:
  acme:
    domain: acme.example
    templates:
      phone: {transport: transport-udp, endpoint: {context: pbx-stasis, allow: "!all,ulaw"},
              aor: {max_contacts: 2, remove_existing: "yes"}}
    endpoints:
      "1001": {templates: [phone], auth: {password: acme-1001}}
  beta:
    domain: beta.example
    templates:
      phone: {transport: transport-udp, endpoint: {context: pbx-stasis, allow: "!all,ulaw"},
              aor: {max_contacts: 2, remove_existing: "yes"}}
    endpoints:
      "1001": {templates: [phone], auth: {password: beta-1001}}
"""


@pytest.fixture
def phones(stack: Stack, tmp_path: Path) -> Stack:
    apply_yaml(stack, PHONES, tmp_path)
    return stack


async def contacts(stack: Stack) -> list[tuple[str, str]]:
    conn = await asyncpg.connect(stack.settings.database_url())
    try:
        return [(r["id"], r["endpoint"]) for r in await conn.fetch("SELECT id, endpoint FROM ps_contacts ORDER BY id")]
    finally:
        await conn.close()


def test_phone_registers_with_digest_auth_to_an_endpoint_defined_only_in_postgres(phones: Stack) -> None:
    r = sipp.register(phones.settings.sip_addr, "1001", "acme.example", "acme-1001")
    assert r.responses == [401, 200], (r.responses, r.stderr)
    rows = asyncio.run(contacts(phones))
    assert any(ep == "1001@acme.example" and cid.startswith("1001@acme.example^3B@") for cid, ep in rows), rows


def test_asterisk_reaches_postgres_over_the_servers_local_socket(phones: Stack) -> None:
    status = phones.asterisk.rx("realtime show pgsql status")
    assert f"@{phones.postgres.local_socket}, port {phones.settings.pg_port}" in status, status


def test_two_tenants_with_the_same_user_register_each_to_their_own(phones: Stack) -> None:
    addr = phones.settings.sip_addr
    assert sipp.register(addr, "1001", "beta.example", "beta-1001").final == 200
    # The other tenant's password is refused: the identity is user@domain, not just the user.
    assert sipp.register(addr, "1001", "beta.example", "acme-1001").final == 401
    assert sipp.register(addr, "1001", "acme.example", "acme-1001").final == 200
    endpoints = {ep for _cid, ep in asyncio.run(contacts(phones))}
    assert {"1001@acme.example", "1001@beta.example"} <= endpoints


def test_contacts_live_in_postgres_with_the_nodes_astdb_as_their_cache(phones: Stack) -> None:
    addr, port = phones.settings.sip_addr, sipp.free_udp_port()
    pattern = "1001@acme.example^3B@%"
    assert sipp.unregister_all(addr, "1001", "acme.example", "acme-1001").final == 200  # earlier tests' phones
    assert sipp.register(addr, "1001", "acme.example", "acme-1001", local_port=port).final == 200
    [row] = run_sql(phones, "SELECT id, expiration_time FROM ps_contacts WHERE id LIKE $1", pattern)
    assert phones.asterisk.rx("database show registrar/contact").count("1001@acme.example;@") == 1

    # A row lost in Postgres (by hand here; an unlogged table after a crash) comes back on the next
    # refresh, which the node answers from its astdb cache with an UPDATE that misses and creates.
    run_sql(phones, "DELETE FROM ps_contacts WHERE id LIKE $1", pattern)
    assert sipp.register(addr, "1001", "acme.example", "acme-1001", local_port=port).final == 200
    again = run_sql(phones, "SELECT id, expiration_time FROM ps_contacts WHERE id LIKE $1", pattern)
    assert [r["id"] for r in again] == [row["id"]]

    # Contact: * drops the contact from both, through Asterisk's own registrar.
    assert sipp.unregister_all(addr, "1001", "acme.example", "acme-1001").final == 200
    assert run_sql(phones, "SELECT id FROM ps_contacts WHERE id LIKE $1", pattern) == []
    assert "1001@acme.example;@" not in phones.asterisk.rx("database show registrar/contact")


def test_template_edit_in_sql_is_seen_by_the_next_request_without_reload(phones: Stack) -> None:
    async def set_password(pw: str) -> None:
        conn = await asyncpg.connect(phones.settings.database_url())
        try:
            await conn.execute(
                "UPDATE pbx.object_options o SET value = ARRAY[$1] FROM pbx.objects e JOIN pbx.tenants t "
                "ON t.id = e.tenant_id WHERE o.object_id = e.id AND t.name = 'acme' AND e.name = '1001' "
                "AND o.section = 'auth' AND o.option = 'password'",
                pw,
            )
        finally:
            await conn.close()

    addr = phones.settings.sip_addr
    asyncio.run(set_password("changed-1001"))
    wait_delivered(phones, 30)  # Sorcery caches: effective once the pusher expired the auth
    assert sipp.register(addr, "1001", "acme.example", "acme-1001").final == 401
    assert sipp.register(addr, "1001", "acme.example", "changed-1001").final == 200
    assert "changed-1001" not in phones.asterisk.rx("pjsip show endpoint 1001@acme.example")  # never printed
    asyncio.run(set_password("acme-1001"))
    wait_delivered(phones, 30)


def test_call_without_a_connected_app_fails_cleanly(phones: Stack) -> None:
    with no_controller(phones):
        r = sipp.call(phones.settings.sip_addr, "1001", "acme.example", "acme-1001", "2000")
    assert r.final == 503, (r.responses, r.stderr)


def test_call_enters_stasis_and_the_controller_refuses_an_unknown_number(phones: Stack) -> None:
    # acme has no extension 2000: the controller (pbxctl serve) routes it to nothing -> 404.
    r = sipp.call(phones.settings.sip_addr, "1001", "acme.example", "acme-1001", "2000")
    assert r.final == 404, (r.responses, r.stderr)


def test_dev_up_is_idempotent_and_down_leaves_no_process(stack: Stack) -> None:
    name = f"{stack.settings.name}-cli"
    env = dict(os.environ, PBX_STACK=name)
    cmd = [sys.executable, "-m", "pbxctl", "dev"]
    try:
        first = subprocess.run([*cmd, "up"], capture_output=True, text=True, env=env, timeout=300)
        assert first.returncode == 0, first.stderr
        other = Stack.named(name)
        pid = other.asterisk.pid()
        second = subprocess.run([*cmd, "up"], capture_output=True, text=True, env=env, timeout=300)
        assert second.returncode == 0 and second.stdout == first.stdout
        assert other.asterisk.pid() == pid
        # Both stacks run at once on their own ports; the session's stack is untouched.
        assert other.settings.sip_port != stack.settings.sip_port and stack.asterisk.running()
        assert "PBX_DATABASE_URL" in first.stdout and first.stdout.startswith("export ")
        # The API's address and an operator token, kept private in the stack's state, work as exported.
        exported = dict(shlex.split(line)[1].split("=", 1) for line in first.stdout.splitlines())
        assert exported["PBX_HTTP_TOKEN"].startswith("pbx_") and exported["PBX_HTTP_ADDR"].startswith("127.0.0.1:")
        assert stat.S_IMODE((other.state_dir / "http_token").stat().st_mode) == 0o600
        listed = subprocess.run(
            [sys.executable, "-m", "pbxctl", "call", "list"],
            capture_output=True,
            text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("PBX_")} | exported,
            timeout=60,
        )
        assert listed.returncode == 0 and json.loads(listed.stdout) == {"ringing": [], "conferences": []}, listed.stderr
        down = subprocess.run([*cmd, "down"], capture_output=True, text=True, env=env, timeout=120)
        assert down.returncode == 0, down.stderr
        assert not other.asterisk.running() and not other.postgres.running()
        leftovers = subprocess.run(["pgrep", "-f", f"stacks/{name}/"], capture_output=True, text=True)
        assert leftovers.stdout.strip() == "", leftovers.stdout
        assert stack.asterisk.running()
    finally:
        Stack.named(name).destroy()


def test_port_taken_is_a_one_line_error(stack: Stack) -> None:
    name = f"{stack.settings.name}-busy"
    other = Stack.named(name)
    env = dict(os.environ, PBX_STACK=name)
    try:
        with socket.socket() as squat:
            squat.bind(("127.0.0.1", other.settings.ami_port))
            squat.listen()
            p = subprocess.run(
                [sys.executable, "-m", "pbxctl", "dev", "up"], capture_output=True, text=True, env=env, timeout=300
            )
        assert p.returncode == 3
        assert p.stderr.strip().count("\n") == 0 and f"port {other.settings.ami_port}" in p.stderr, p.stderr
    finally:
        other.destroy()


DIALING = """
tenants:
  dial:
    domain: dial.example
    templates:
      base:
        transport: transport-udp
        endpoint: {allow: "!all,ulaw", direct_media: "no"}
        aor: {max_contacts: 1, remove_existing: "yes"}
      office: {parents: [base], endpoint: {context: pbx-dial-test, callerid: '"Office" <0>'}}
    endpoints:
      "1001": {templates: [office], auth: {password: d-1001}}
      "1002": {templates: [office], auth: {password: d-1002}}
"""


def call_registered_callee(
    stack: Stack, tmp_path: Path, serve: Callable[[str, int], sipp.SippResult]
) -> tuple[sipp.SippResult, sipp.SippResult]:
    """1002 registers from a port where ``serve`` then takes the call 1001 places to it."""
    apply_yaml(stack, DIALING, tmp_path)
    addr = stack.settings.sip_addr
    port = sipp.free_udp_port()
    assert sipp.register(addr, "1002", "dial.example", "d-1002", local_port=port).final == 200

    async def scenario() -> tuple[sipp.SippResult, sipp.SippResult]:
        callee = asyncio.create_task(asyncio.to_thread(serve, addr, port))
        caller = await asyncio.to_thread(sipp.call, addr, "1001", "dial.example", "d-1001", "1002", hold_s=0.3)
        return caller, await asyncio.wait_for(callee, 30)

    return asyncio.run(scenario())


def test_endpoints_defined_through_templates_call_each_other(stack: Stack, tmp_path: Path) -> None:
    caller, callee = call_registered_callee(stack, tmp_path, sipp.answer)
    assert 200 in caller.responses and caller.returncode == 0, (caller.responses, caller.stderr)
    assert callee.returncode == 0 and any(r.startswith("INVITE sip:1002@") for r in callee.received), callee.received


def test_template_option_changed_in_sql_shows_in_pjsip_show_endpoint(stack: Stack, tmp_path: Path) -> None:
    apply_yaml(stack, DIALING, tmp_path)
    assert "<0>" in stack.asterisk.rx("pjsip show endpoint 1002@dial.example")

    async def edit() -> None:
        conn = await asyncpg.connect(stack.settings.database_url())
        try:
            await conn.execute(
                "UPDATE pbx.object_options o SET value = ARRAY[$1] FROM pbx.objects t "
                "JOIN pbx.tenants n ON n.id = t.tenant_id WHERE o.object_id = t.id AND n.name = 'dial' "
                "AND t.name = 'office' AND o.option = 'callerid'",
                '"Front desk" <4242>',
            )
        finally:
            await conn.close()

    asyncio.run(edit())
    wait_delivered(stack, 30)
    shown = stack.asterisk.rx("pjsip show endpoint 1002@dial.example")
    assert '"Front desk" <4242>' in shown, shown


def test_a_busy_phone_makes_the_caller_see_busy(stack: Stack, tmp_path: Path) -> None:
    caller, callee = call_registered_callee(stack, tmp_path, sipp.reject_busy)
    assert caller.final == 486, (caller.responses, caller.stderr)
    assert callee.returncode == 0, callee.stderr
