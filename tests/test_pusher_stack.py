"""The change push on the real stack: Sorcery memory caches in Asterisk 22, `pbxctl serve`'s pusher,
sipp. Every check waits for the node's pending deliveries to reach zero (or for the state it expects),
never for a fixed time."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from pathlib import Path

import asyncpg
import pytest
from stack import apply_yaml, pbxctl, wait_delivered, wait_for, wait_routable

from devstack import sipp
from devstack.stack import Stack, run_sql
from sorcery_backend.ami import AmiSession

pytestmark = pytest.mark.stack


def tenant(name: str, endpoints: int, *, context: str = "pbx-dial-test", allow: str = "!all,ulaw") -> str:
    lines = [
        "tenants:",
        f"  {name}:",
        f"    domain: {name}.example",
        "    templates:",
        "      base:",
        "        transport: transport-udp",
        f'        endpoint: {{allow: "{allow}", direct_media: "no", context: {context}, callerid: "Base <0>"}}',
        '        aor: {max_contacts: 1, remove_existing: "yes"}',
        "    endpoints:",
    ]
    lines += [f'      "{1000 + i}": {{templates: [base], auth: {{password: pw-{1000 + i}}}}}' for i in range(endpoints)]
    return "\n".join(lines) + "\n"


def set_option(stack: Stack, tenant_name: str, obj: str, section: str, option: str, value: str) -> None:
    """Set one option of a template or endpoint by plain SQL (insert or update)."""
    run_sql(
        stack,
        "INSERT INTO pbx.object_options (object_id, section, option, value) "
        "SELECT e.id, $3, $4, ARRAY[$5] FROM pbx.objects e JOIN pbx.tenants t ON t.id = e.tenant_id "
        "WHERE t.name = $1 AND e.name = $2 "
        "ON CONFLICT (object_id, section, option) DO UPDATE SET value = excluded.value",
        tenant_name,
        obj,
        section,
        option,
        value,
    )


def node_counters(stack: Stack) -> tuple[int, int, int]:
    """(pending rows, actions sent, rows delivered) of the stack's own node."""
    r = run_sql(
        stack,
        "SELECT (SELECT count(*) FROM pbx.push_pending WHERE node_id = n.id), s.actions_sent, s.rows_delivered "
        "FROM pbx.nodes n JOIN pbx.node_state s ON s.node_id = n.id WHERE n.name = $1",
        stack.settings.name,
    )[0]
    return int(r[0]), int(r[1]), int(r[2])


def cached(stack: Stack, cache: str) -> int:
    shown = stack.asterisk.rx(f"sorcery memory cache show {cache}")
    m = re.search(r"Number of objects within cache: (\d+)", shown)
    assert m, shown
    return int(m.group(1))


async def ami_session(stack: Stack) -> AmiSession:
    s = stack.settings
    session = AmiSession("127.0.0.1", s.ami_port, s.ami_user, s.ami_password)
    await session.connect()
    return session


async def expire_cache(stack: Stack, cache: str) -> None:
    session = await ami_session(stack)
    try:
        await session.send({"Action": "SorceryMemoryCacheExpire", "Cache": cache})
    finally:
        session.close()


async def callerids(stack: Stack, endpoint_ids: list[str]) -> dict[str, str]:
    """What Asterisk itself holds for each endpoint (PJSIPShowEndpoint, pipelined on one session)."""
    session = await ami_session(stack)
    window = asyncio.Semaphore(32)

    async def one(eid: str) -> tuple[str, str]:
        async with window:
            msgs = await session.send_list({"Action": "PJSIPShowEndpoint", "Endpoint": eid}, timeout=60)
        detail = next(m for m in msgs if m.get("Event") == "EndpointDetail")
        return eid, str(detail["Callerid"])

    try:
        return dict(await asyncio.gather(*(one(e) for e in endpoint_ids)))
    finally:
        session.close()


def test_password_change_in_sql_refuses_the_old_and_accepts_the_new_on_the_next_register(
    stack: Stack, tmp_path: Path
) -> None:
    apply_yaml(stack, tenant("pwd", 2), tmp_path)
    addr = stack.settings.sip_addr
    assert sipp.register(addr, "1000", "pwd.example", "pw-1000").final == 200
    assert cached(stack, "res_pjsip/auth") >= 1  # the auth is served from the cache from now on
    set_option(stack, "pwd", "1000", "auth", "password", "fresh-1000")
    wait_delivered(stack)
    assert sipp.register(addr, "1000", "pwd.example", "pw-1000").final == 401
    assert sipp.register(addr, "1000", "pwd.example", "fresh-1000").final == 200
    assert "module reload" not in stack.serve.log_text()


def test_codec_change_is_seen_in_the_sdp_of_the_next_invite(stack: Stack, tmp_path: Path) -> None:
    apply_yaml(stack, tenant("codec", 2), tmp_path)
    addr = stack.settings.sip_addr

    def invite_sdp_to_1001() -> list[str]:
        port = sipp.free_udp_port()
        assert sipp.register(addr, "1001", "codec.example", "pw-1001", local_port=port).final == 200

        async def scenario() -> sipp.SippResult:
            callee = asyncio.create_task(asyncio.to_thread(sipp.answer, addr, port))
            caller = await asyncio.to_thread(sipp.call, addr, "1000", "codec.example", "pw-1000", "1001", hold_s=0.2)
            assert 200 in caller.responses, (caller.responses, caller.stderr)
            return await asyncio.wait_for(callee, 30)

        callee = asyncio.run(scenario())
        invite = callee.trace.split("INVITE sip:", 1)[1].split("\n\n\n", 1)[0]
        return re.findall(r"a=rtpmap:\d+ (\w+)/", invite)

    assert "PCMA" not in invite_sdp_to_1001()
    set_option(stack, "codec", "1001", "endpoint", "allow", "!all,ulaw,alaw")
    wait_delivered(stack)
    assert "PCMA" in invite_sdp_to_1001()


def test_deleted_endpoint_is_refused_and_created_one_accepted(stack: Stack, tmp_path: Path) -> None:
    apply_yaml(stack, tenant("life", 2), tmp_path)
    addr = stack.settings.sip_addr
    assert sipp.register(addr, "1001", "life.example", "pw-1001").final == 200
    assert sipp.register(addr, "1002", "life.example", "pw-1002").final != 200  # not created yet
    # Plain SQL, as an admin would: delete 1001, then create 1002 by copying 1000.
    run_sql(
        stack,
        "DELETE FROM pbx.objects e USING pbx.tenants t "
        "WHERE t.id = e.tenant_id AND t.name = 'life' AND e.name = '1001'",
    )
    wait_delivered(stack)
    assert sipp.register(addr, "1001", "life.example", "pw-1001").final != 200
    apply_yaml(stack, tenant("life", 3), tmp_path)
    wait_delivered(stack)
    assert sipp.register(addr, "1002", "life.example", "pw-1002").final == 200


def test_template_edit_reaching_500_endpoints_names_exactly_them_and_all_take_effect(
    stack: Stack, tmp_path: Path
) -> None:
    apply_yaml(stack, tenant("big", 500), tmp_path)
    ids = [f"{1000 + i}@big.example" for i in range(500)]
    addr = stack.settings.sip_addr
    # Start from a cache holding exactly these 500 (other tests' endpoints would tip the choice).
    asyncio.run(expire_cache(stack, "res_pjsip/endpoint"))
    for n in ("1000", "1250", "1499"):
        assert sipp.register(addr, n, "big.example", f"pw-{n}").final == 200
    assert set((asyncio.run(callerids(stack, ids))).values()) == {'"Base" <0>'}  # every one cached now
    wait_delivered(stack)
    _, actions_before, _ = node_counters(stack)

    async def edit() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(stack.settings.database_url())
        try:
            async with conn.transaction():
                await conn.execute(
                    "UPDATE pbx.object_options o SET value = ARRAY['\"Big\" <9>'] FROM pbx.objects e "
                    "JOIN pbx.tenants t ON t.id = e.tenant_id WHERE o.object_id = e.id AND t.name = 'big' "
                    "AND e.name = 'base' AND o.option = 'callerid'"
                )
                await conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
                return list(
                    await conn.fetch("SELECT view, object_id, op FROM pbx.outbox WHERE xid = pg_current_xact_id()")
                )
        finally:
            await conn.close()

    change_set = asyncio.run(edit())
    assert {r["view"] for r in change_set} == {"ps_endpoints"} and {r["op"] for r in change_set} == {"changed"}
    assert sorted(r["object_id"] for r in change_set) == sorted(ids)
    wait_delivered(stack)
    seen = asyncio.run(callerids(stack, ids))
    assert set(seen.values()) == {'"Big" <9>'}, {k: v for k, v in seen.items() if v != '"Big" <9>'}
    # All 500 were cached, so one whole-cache expiry was cheaper than 500 per-object ones.
    _, actions_after, _ = node_counters(stack)
    assert actions_after - actions_before == 1, stack.serve.log_tail()


def edit_many(
    stack: Stack, tenant_name: str, endpoints: int, edits: int, progress: list[int], editors: int = 3
) -> None:
    """``edits`` separate transactions, the i-th changing endpoint 1000 + i % endpoints's callerid
    to "E<i>" <i>; ``editors`` connections at once (several admins), each with its own endpoints,
    so every endpoint's edits still commit in order."""

    async def editor(k: int) -> None:
        conn = await asyncpg.connect(stack.settings.database_url())
        try:
            for i in range(edits):
                if i % endpoints % editors != k:
                    continue
                await conn.execute(
                    "INSERT INTO pbx.object_options (object_id, section, option, value) "
                    "SELECT e.id, 'endpoint', 'callerid', ARRAY[$3] FROM pbx.objects e JOIN pbx.tenants t "
                    "ON t.id = e.tenant_id WHERE t.name = $1 AND e.name = $2 "
                    "ON CONFLICT (object_id, section, option) DO UPDATE SET value = excluded.value",
                    tenant_name,
                    str(1000 + i % endpoints),
                    f'"E{i}" <{i}>',
                )
                progress[0] += 1
        finally:
            await conn.close()

    async def run() -> None:
        await asyncio.gather(*(editor(k) for k in range(editors)))

    asyncio.run(run())


def expected_callerids(tenant_name: str, endpoints: int, edits: int) -> dict[str, str]:
    last = {1000 + i % endpoints: i for i in range(edits)}
    return {f"{n}@{tenant_name}.example": f'"E{i}" <{i}>' for n, i in last.items()}


def test_asterisk_down_during_1000_edits_then_back_every_edit_applied_once(stack: Stack, tmp_path: Path) -> None:
    apply_yaml(stack, tenant("drop", 100, context="drop-internal"), tmp_path)
    wait_delivered(stack)
    _, actions0, rows0 = node_counters(stack)
    progress = [0]
    editor = threading.Thread(target=edit_many, args=(stack, "drop", 100, 1000, progress))
    editor.start()
    try:
        wait_for("300 edits committed", lambda: progress[0] >= 300)
        stack.asterisk.stop()
        wait_for("the pusher to notice the node is gone", lambda: not node_connected(stack), 30)
    finally:
        editor.join(300)
    assert progress[0] == 1000
    assert node_counters(stack)[0] > 0  # undelivered while the node is down
    stack.asterisk.start()
    wait_delivered(stack, 120)
    _, actions1, rows1 = node_counters(stack)
    assert rows1 - rows0 == 1000  # each edit's row acknowledged exactly once: none lost
    assert actions1 - actions0 < 1000  # coalesced: nothing pushed per edit while it could be merged
    want = expected_callerids("drop", 100, 1000)
    assert asyncio.run(callerids(stack, sorted(want))) == want
    # The restarted node got its endpoint context back.
    assert "Goto(pbx-stasis" in stack.asterisk.rx("dialplan show drop-internal")


def node_connected(stack: Stack) -> bool:
    return bool(
        run_sql(
            stack,
            "SELECT s.connected FROM pbx.node_state s JOIN pbx.nodes n ON n.id = s.node_id WHERE n.name = $1",
            stack.settings.name,
        )[0][0]
    )


def test_pusher_killed_9_while_delivering_then_restarted_loses_nothing(stack: Stack, tmp_path: Path) -> None:
    apply_yaml(stack, tenant("kill", 300), tmp_path)
    wait_delivered(stack)
    _, _, rows0 = node_counters(stack)
    progress = [0]
    editor = threading.Thread(target=edit_many, args=(stack, "kill", 300, 1000, progress))
    editor.start()
    try:
        wait_for("400 edits committed", lambda: progress[0] >= 400)
        stack.serve.kill()
        assert not stack.serve.running()
    finally:
        editor.join(300)
    assert progress[0] == 1000
    stack.serve.start()
    wait_delivered(stack, 120)
    _, _, rows1 = node_counters(stack)
    assert rows1 - rows0 == 1000
    want = expected_callerids("kill", 300, 1000)
    assert asyncio.run(callerids(stack, sorted(want))) == want


async def dialplan_steps_of_a_call(stack: Stack, caller: str, domain: str, password: str, number: str) -> list[str]:
    """Place a call and return the dialplan steps Asterisk reports for it (AMI Newexten events, as
    "context:application"), up to and including Stasis. Whatever answers in Stasis (the stack's own
    controller, or nobody) decides the SIP outcome; reaching Stasis is what is checked."""
    s = stack.settings
    reader, writer = await asyncio.open_connection("127.0.0.1", s.ami_port)
    steps: list[str] = []
    try:
        await reader.readline()
        writer.write(
            f"Action: Login\r\nUsername: {s.ami_user}\r\nSecret: {s.ami_password}\r\nEvents: dialplan\r\n\r\n".encode()
        )
        call = asyncio.create_task(asyncio.to_thread(sipp.call, s.sip_addr, caller, domain, password, number))
        async with asyncio.timeout(30):
            while not any(step.endswith(":Stasis") for step in steps):
                block = (await reader.readuntil(b"\r\n\r\n")).decode(errors="replace")
                fields = dict(line.split(": ", 1) for line in block.strip().split("\r\n") if ": " in line)
                if fields.get("Event") == "Newexten" and f"/{caller}@{domain}-" in fields.get("Channel", ""):
                    steps.append(f"{fields['Context']}:{fields['Application']}")
        await asyncio.wait_for(call, 60)
    finally:
        writer.close()
    return steps


def test_endpoint_context_is_created_on_the_node_and_leads_to_stasis(stack: Stack, tmp_path: Path) -> None:
    apply_yaml(stack, tenant("ctx", 1, context="acme-internal"), tmp_path)
    wait_delivered(stack)
    shown = stack.asterisk.rx("dialplan show acme-internal")
    assert "Goto(pbx-stasis,${EXTEN},1)" in shown and "'h' =>" in shown, shown
    steps = asyncio.run(dialplan_steps_of_a_call(stack, "1000", "ctx.example", "pw-1000", "2000"))
    # pbx-stasis sets PJSIP_TRANSFER_HANDLING before Stasis (transfers go to the controller).
    assert steps == ["acme-internal:Goto", "pbx-stasis:Set", "pbx-stasis:Stasis"], steps
    # A context that appears later is created as it appears.
    set_option(stack, "ctx", "base", "endpoint", "context", "acme-later")
    wait_delivered(stack)
    steps = asyncio.run(dialplan_steps_of_a_call(stack, "1000", "ctx.example", "pw-1000", "2000"))
    assert steps == ["acme-later:Goto", "pbx-stasis:Set", "pbx-stasis:Stasis"], steps
    # An endpoint that names no context is in Asterisk's default one, which leads to Stasis too.
    run_sql(
        stack,
        "DELETE FROM pbx.object_options o USING pbx.objects e, pbx.tenants t "
        "WHERE o.object_id = e.id AND e.tenant_id = t.id AND t.name = 'ctx' AND o.option = 'context'",
    )
    wait_delivered(stack)
    steps = asyncio.run(dialplan_steps_of_a_call(stack, "1000", "ctx.example", "pw-1000", "2000"))
    assert steps == ["default:Goto", "pbx-stasis:Set", "pbx-stasis:Stasis"], steps
    # Contexts of the node's own dialplan are never touched.
    assert "Goto(" not in stack.asterisk.rx("dialplan show pbx-dial-test")


def test_a_burst_on_one_object_is_pushed_once(stack: Stack, tmp_path: Path) -> None:
    apply_yaml(stack, tenant("burst", 1), tmp_path)
    wait_delivered(stack)

    async def burst(tag: str) -> None:
        conn = await asyncpg.connect(stack.settings.database_url())
        try:
            for i in range(100):
                await conn.execute(
                    "UPDATE pbx.object_options o SET value = ARRAY[$1] FROM pbx.objects e JOIN pbx.tenants t "
                    "ON t.id = e.tenant_id WHERE o.object_id = e.id AND t.name = 'burst' AND e.name = 'base' "
                    "AND o.option = 'callerid'",
                    f'"{tag}{i}" <{i}>',
                )
        finally:
            await conn.close()

    # 100 commits while the pusher is down: one action delivers all of them.
    stack.serve.stop()
    _, actions0, rows0 = node_counters(stack)
    asyncio.run(burst("C"))
    stack.serve.start()
    wait_delivered(stack)
    _, actions1, rows1 = node_counters(stack)
    assert (actions1 - actions0, rows1 - rows0) == (1, 100)
    assert asyncio.run(callerids(stack, ["1000@burst.example"])) == {"1000@burst.example": '"C99" <99>'}

    # 100 commits while it runs: commits less than 25 ms apart are held together (at most 1 s).
    t0 = time.monotonic()
    asyncio.run(burst("B"))
    elapsed = time.monotonic() - t0
    wait_delivered(stack)
    _, actions2, rows2 = node_counters(stack)
    assert rows2 - rows1 == 100
    if elapsed < 0.9:  # only a burst this fast is promised to coalesce (each commit runs the flush)
        assert actions2 - actions1 <= 2, (actions2 - actions1, elapsed)
    assert asyncio.run(callerids(stack, ["1000@burst.example"])) == {"1000@burst.example": '"B99" <99>'}


def test_an_unreachable_node_shows_in_push_status_and_catches_up(stack: Stack, tmp_path: Path) -> None:
    from stack import pbxctl

    apply_yaml(stack, tenant("away", 1), tmp_path)
    wait_delivered(stack)
    name, port = stack.settings.name, stack.settings.ami_port
    dead = sipp.free_udp_port()  # nothing listens on it over TCP either

    def move_node(to: int) -> None:
        run_sql(stack, "UPDATE pbx.nodes SET ami_port = $2 WHERE name = $1", name, to)
        run_sql(stack, "SELECT pg_notify('pbx_nodes', $1)", name)

    move_node(dead)
    try:
        wait_for("the pusher to give up on the moved node", lambda: not node_connected(stack), 30)
        set_option(stack, "away", "1000", "endpoint", "callerid", "Away <7>")
        p = pbxctl(stack, "push", "status", "--json")
        assert p.returncode == 0, p.stderr
        mine = next(n for n in json.loads(p.stdout)["nodes"] if n["name"] == name)
        assert mine["connected"] is False and mine["undelivered"] >= 1, mine
        assert f"127.0.0.1:{dead}" in (mine["last_error"] or ""), mine
    finally:
        move_node(port)
    wait_delivered(stack)
    assert asyncio.run(callerids(stack, ["1000@away.example"])) == {"1000@away.example": '"Away" <7>'}


def test_an_object_the_node_refuses_is_reported_and_holds_back_nothing(stack: Stack, tmp_path: Path) -> None:
    """The probe's 1,100-character context (before the fences refused it at input) made
    DialplanExtensionAdd fail on every round, so no tenant's change reached Asterisk. The pusher
    now records such a refusal per object and delivers the rest."""
    apply_yaml(stack, tenant("refuse", 2), tmp_path)
    wait_delivered(stack)
    long_context = "x" * 1100
    # Written behind the fences, as data from before them would be: the flat row and its change.
    run_sql(stack, "UPDATE pbx.rt_ps_endpoints SET context = $1 WHERE id = '1000@refuse.example'", long_context)
    run_sql(
        stack, "INSERT INTO pbx.outbox (view, object_id, op) VALUES ('ps_endpoints', '1000@refuse.example', 'changed')"
    )
    set_option(stack, "refuse", "1001", "endpoint", "callerid", "After <1001>")
    wait_delivered(stack)
    assert asyncio.run(callerids(stack, ["1001@refuse.example"])) == {"1001@refuse.example": '"After" <1001>'}
    status = pbxctl(stack, "push", "status", "--json")
    assert status.returncode == 0, status.stderr
    [node] = json.loads(status.stdout)["nodes"]
    assert node["connected"] and node["undelivered"] == 0
    assert list(node["refused"]) == [f"context:{long_context}"], node["refused"]
    assert node["refused"][f"context:{long_context}"].startswith("DialplanExtensionAdd: ")


BOOT_TENANT = """
tenants:
  boot:
    domain: boot.example
    templates:
      base: {transport: transport-udp, endpoint: {context: pbx-dial-test, allow: "!all,ulaw"}, aor: {max_contacts: 1}}
    endpoints:
      "1000": {templates: [base], auth: {password: pw-boot}}
%s
"""
BOOT_TRUNK = '      gw: {templates: [base], aor: {contact: ["sip:127.0.0.9:5999"], qualify_frequency: 1}}'


def test_a_restarted_node_loads_its_trunks_and_no_phone_and_phones_still_register(stack: Stack, tmp_path: Path) -> None:
    apply_yaml(stack, BOOT_TENANT % BOOT_TRUNK, tmp_path)
    wait_delivered(stack)
    node = stack.asterisk
    wait_for(
        "the trunk in the node's boot set",
        lambda: "/pbx_boot/endpoint/gw@boot.example" in node.rx("database show pbx_boot"),
    )
    node.stop()
    node.start()
    aors = node.rx("pjsip show aors")
    assert "gw@boot.example" in aors
    assert "1000@boot.example" not in aors  # a phone is read when it is used, not at boot
    # Qualified from boot on, as when Asterisk read every AOR: nothing answers at that address.
    wait_for("the trunk's contact qualified", lambda: "Unavail" in node.rx("pjsip show aor gw@boot.example"), 30)
    assert sipp.register(stack.settings.sip_addr, "1000", "boot.example", "pw-boot").final == 200
    apply_yaml(stack, BOOT_TENANT % "", tmp_path)
    wait_delivered(stack)
    wait_for("the trunk gone from the boot set", lambda: "gw@boot.example" not in node.rx("database show pbx_boot"))


def test_a_node_restarted_after_a_long_outage_gets_its_tenant_contexts_back_within_seconds(
    stack: Stack, tmp_path: Path
) -> None:
    """A restart loses the contexts the pusher added over AMI; until it reconnects, a call from one
    gets 404. Its AMI backoff is capped short, whatever climbed during the outage."""
    apply_yaml(stack, tenant("back", 1, context="back-internal"), tmp_path)
    wait_routable(stack, "back-internal")
    node, failed = stack.asterisk, f"node {stack.settings.name}: AMI "
    logged = len(stack.serve.log_text())
    node.stop()
    try:
        # Seven refused reconnects: a backoff capped at 10 s would now wait 10 s before the next.
        wait_for("seven refused AMI reconnects", lambda: stack.serve.log_text()[logged:].count(failed) >= 7, 30)
    finally:
        node.start()
    wait_routable(stack, "back-internal", timeout=4)
