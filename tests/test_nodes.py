"""`pbxctl nodes` and `pbxctl push status` on a real Postgres (no Asterisk): the node rows, the
pending deliveries the outbox trigger queues per node, refusals."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import asyncpg

from devstack.ports import free_port
from sorcery_backend.schema import ensure_login

PBXCTL = [sys.executable, "-m", "pbxctl"]

CONFIG = """
tenants:
  acme:
    domain: acme.example
    templates:
      phone: {transport: transport-udp, endpoint: {context: acme-internal, allow: "!all,ulaw"}, aor: {max_contacts: 1}}
    endpoints:
      "1001": {templates: [phone], auth: {password: a}}
      "1002": {templates: [phone], auth: {password: b}}
"""


def pbxctl(dsn: str, *args: str, secret: str | None = "s3cret") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PBX_DATABASE_URL=dsn)
    env.pop("PBX_AMI_PASSWORD", None)
    if secret is not None:
        env["PBX_AMI_PASSWORD"] = secret
    return subprocess.run([*PBXCTL, *args], capture_output=True, text=True, env=env, timeout=120)


def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


def execute(dsn: str, sql: str) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


def apply(dsn: str, tmp_path: Path, text: str) -> None:
    f = tmp_path / "config.yaml"
    f.write_text(textwrap.dedent(text))
    p = pbxctl(dsn, "apply", str(f))
    assert p.returncode == 0, p.stderr


def test_add_list_remove(db: str) -> None:
    p = pbxctl(db, "nodes", "add", "ast-1", "--ami", "10.0.0.5:5038", "--user", "pbx", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"name": "ast-1", "ami_addr": "10.0.0.5:5038", "ami_user": "pbx"}
    assert pbxctl(db, "nodes", "add", "ast-2", "--ami", "10.0.0.6:5038", "--user", "pbx").returncode == 0
    listed = pbxctl(db, "nodes", "list", "--json")
    assert listed.returncode == 0 and "s3cret" not in listed.stdout  # the secret stays in the database
    assert [n["name"] for n in json.loads(listed.stdout)["nodes"]] == ["ast-1", "ast-2"]
    assert fetch(db, "SELECT ami_secret FROM pbx.nodes WHERE name = 'ast-1'")[0][0] == "s3cret"
    assert pbxctl(db, "nodes", "remove", "ast-1").returncode == 0
    assert [n["name"] for n in json.loads(pbxctl(db, "nodes", "list", "--json").stdout)["nodes"]] == ["ast-2"]


def test_replace_gives_an_existing_node_the_new_address_and_secret(db: str) -> None:
    assert pbxctl(db, "nodes", "add", "ast-1", "--ami", "127.0.0.1:5038", "--user", "pbx").returncode == 0
    p = pbxctl(db, "nodes", "add", "ast-1", "--ami", "127.0.0.2:5039", "--user", "ops", "--replace", secret="new")
    assert p.returncode == 0, p.stderr
    (row,) = fetch(db, "SELECT ami_host, ami_port, ami_user, ami_secret FROM pbx.nodes")
    assert tuple(row) == ("127.0.0.2", 5039, "ops", "new")
    assert pbxctl(db, "nodes", "add", "ast-2", "--ami", "127.0.0.3:5038", "--user", "pbx", "--replace").returncode == 0
    assert len(fetch(db, "SELECT 1 FROM pbx.nodes")) == 2


def test_migrate_provisions_the_asterisk_and_edge_logins_and_waits_for_the_database(db: str) -> None:
    env = dict(
        os.environ,
        PBX_DATABASE_URL=db,
        PBX_ASTERISK_DB_USER="ast node",
        PBX_ASTERISK_DB_PASSWORD="p'w",
        PBX_KAMAILIO_DB_USER="edge node",
        PBX_KAMAILIO_DB_PASSWORD="e'pw",
    )
    p = subprocess.run([*PBXCTL, "db", "migrate"], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "p'w" not in p.stdout + p.stderr and "e'pw" not in p.stdout + p.stderr
    assert "login role edge node is ready for the SIP edge" in p.stderr
    query = "SELECT rolcanlogin, pg_has_role(rolname, $2, 'MEMBER') FROM pg_roles WHERE rolname = $1"
    for user, group in (("ast node", "pbx_asterisk"), ("edge node", "pbx_kamailio")):
        (role,) = fetch(db, query, user, group)
        assert tuple(role) == (True, True), user
    gone = dict(env, PBX_DATABASE_URL=f"postgresql://nobody@127.0.0.1:{free_port()}/pbx")
    started = time.monotonic()
    p = subprocess.run(
        [*PBXCTL, "db", "migrate", "--wait", "1.5"], capture_output=True, text=True, env=gone, timeout=60
    )
    assert p.returncode == 3, p.stderr  # unreachable, after waiting
    assert time.monotonic() - started >= 1.5


def test_controllers_starting_together_provision_one_login_without_error(db: str) -> None:
    """Two `pbxctl db migrate` at once (a compose cluster's controllers): one creates the role."""
    user = f"login_{os.getpid()}_{time.monotonic_ns()}"

    async def both() -> None:
        conns = [await asyncpg.connect(db) for _ in range(2)]
        try:
            await asyncio.gather(*(ensure_login(c, user, "pw", "pbx_asterisk") for c in conns))
            await conns[0].execute(f'DROP ROLE "{user}"')
        finally:
            for c in conns:
                await c.close()

    for _ in range(3):
        asyncio.run(both())


def test_refusals_are_one_line_exit_1_and_change_nothing(db: str) -> None:
    assert pbxctl(db, "nodes", "add", "ast-1", "--ami", "127.0.0.1:5038", "--user", "pbx").returncode == 0
    cases = [
        (("nodes", "add", "ast-1", "--ami", "127.0.0.1:5039", "--user", "pbx"), "node ast-1: already exists"),
        (("nodes", "add", "bad name", "--ami", "127.0.0.1:5038", "--user", "pbx"), "node bad name: names are"),
        (("nodes", "add", "ast-9", "--ami", "127.0.0.1", "--user", "pbx"), "node ast-9: AMI address"),
        (("nodes", "add", "ast-9", "--ami", "127.0.0.1:99999", "--user", "pbx"), "node ast-9: AMI address"),
        (("nodes", "remove", "nope"), "node nope: no such node"),
    ]
    for argv, message in cases:
        p = pbxctl(db, *argv)
        assert p.returncode == 1, (argv, p.stderr)
        assert p.stderr.strip().count("\n") == 0 and message in p.stderr, p.stderr
    no_secret = pbxctl(db, "nodes", "add", "ast-9", "--ami", "127.0.0.1:5038", "--user", "pbx", secret=None)
    assert no_secret.returncode == 1 and "PBX_AMI_PASSWORD" in no_secret.stderr
    assert [r["name"] for r in fetch(db, "SELECT name FROM pbx.nodes")] == ["ast-1"]


def test_usage_and_unreachable_database_exit_codes(db: str) -> None:
    assert pbxctl(db, "nodes", "add", "ast-1").returncode == 2  # --ami and --user are required
    down = pbxctl("postgresql://postgres@127.0.0.1:1/none", "push", "status")
    assert down.returncode == 3, down.stderr


def test_every_change_is_queued_for_every_node_in_the_same_transaction(db: str, tmp_path: Path) -> None:
    apply(db, tmp_path, CONFIG)  # before any node: nothing is queued (a new node starts with a full expiry)
    assert fetch(db, "SELECT count(*) FROM pbx.push_pending")[0][0] == 0
    for name in ("ast-1", "ast-2"):
        assert pbxctl(db, "nodes", "add", name, "--ami", "127.0.0.1:5038", "--user", "pbx").returncode == 0
    apply(db, tmp_path, CONFIG.replace("password: a", "password: changed"))
    pending = fetch(
        db,
        "SELECT n.name, o.view, o.object_id, o.op FROM pbx.push_pending q JOIN pbx.nodes n ON n.id = q.node_id "
        "JOIN pbx.outbox o ON o.seq = q.seq ORDER BY n.name",
    )
    assert [tuple(r) for r in pending] == [
        ("ast-1", "ps_auths", "1001@acme.example", "changed"),
        ("ast-2", "ps_auths", "1001@acme.example", "changed"),
    ]
    # A rolled-back edit queues nothing.
    execute(db, "BEGIN; UPDATE pbx.object_options SET value = ARRAY['x'] WHERE option = 'password'; ROLLBACK")
    assert fetch(db, "SELECT count(*) FROM pbx.push_pending")[0][0] == 2

    status = pbxctl(db, "push", "status", "--json")
    assert status.returncode == 0, status.stderr
    nodes = {n["name"]: n for n in json.loads(status.stdout)["nodes"]}
    assert nodes["ast-1"]["undelivered"] == 1 and nodes["ast-1"]["connected"] is False
    assert nodes["ast-1"]["lag_s"] >= 0 and nodes["ast-1"]["last_error"] is None
    human = pbxctl(db, "push", "status")
    assert human.returncode == 0 and "ast-2\tno\t1\t" in human.stdout
    # Removing a node drops its queue, not the others'.
    assert pbxctl(db, "nodes", "remove", "ast-1").returncode == 0
    assert fetch(db, "SELECT count(*) FROM pbx.push_pending")[0][0] == 1


def test_the_identify_cache_keeper_row_is_invisible_to_export_and_flush(db: str, tmp_path: Path) -> None:
    keeper = fetch(db, "SELECT id, endpoint, match FROM public.ps_endpoint_id_ips")
    assert [tuple(r) for r in keeper] == [("~pbx-keep-cache-filled", "~none", "255.255.255.255/32")]
    apply(db, tmp_path, CONFIG)
    out = json.loads(pbxctl(db, "export", "--json").stdout)
    assert "ps_endpoint_id_ips" not in out["tenants"]["acme"]["endpoints"]["1001"]
    apply(db, tmp_path, "tenants:\n  acme: null\n")
    assert len(fetch(db, "SELECT 1 FROM public.ps_endpoint_id_ips")) == 1


def test_delivered_outbox_rows_are_trimmed_after_the_retention_and_pending_ones_kept(db: str, tmp_path: Path) -> None:
    assert pbxctl(db, "nodes", "add", "ast-1", "--ami", "127.0.0.1:5038", "--user", "pbx").returncode == 0
    apply(db, tmp_path, CONFIG)
    total = fetch(db, "SELECT count(*) FROM pbx.outbox")[0][0]
    assert total > 0
    assert fetch(db, "SELECT pbx.trim_outbox('0')")[0][0] == 0  # all still pending for ast-1
    # ast-1 confirmed the rows of endpoint 1001: they are history now.
    execute(
        db,
        "DELETE FROM pbx.push_pending q USING pbx.outbox o WHERE o.seq = q.seq AND o.object_id = '1001@acme.example'",
    )
    delivered = fetch(db, "SELECT count(*) FROM pbx.outbox WHERE object_id = '1001@acme.example'")[0][0]
    assert delivered > 0
    assert fetch(db, "SELECT pbx.trim_outbox('1 hour')")[0][0] == 0  # younger than the retention
    assert fetch(db, "SELECT pbx.trim_outbox('0')")[0][0] == delivered
    left = fetch(db, "SELECT DISTINCT object_id FROM pbx.outbox ORDER BY 1")
    assert [r[0] for r in left] == ["1002@acme.example"]


def test_the_pusher_trims_the_outbox_and_the_audit_with_their_retention(db: str, tmp_path: Path) -> None:
    from sorcery_backend.pusher import Pusher, PusherSettings

    apply(db, tmp_path, CONFIG)  # no node: nothing pending, every row is history at once
    assert fetch(db, "SELECT count(*) FROM pbx.outbox")[0][0] > 0
    assert fetch(db, "SELECT count(*) FROM pbx.audit")[0][0] > 0

    async def run() -> int:
        stop = asyncio.Event()
        task = asyncio.create_task(Pusher(db, PusherSettings(outbox_keep_s=0, audit_keep_s=0)).run(stop))
        conn = await asyncpg.connect(db)
        try:
            async with asyncio.timeout(20):
                left_query = "SELECT (SELECT count(*) FROM pbx.outbox) + (SELECT count(*) FROM pbx.audit)"
                while (left := await conn.fetchval(left_query)) > 0:
                    await asyncio.sleep(0.05)  # polling the table the pusher empties, with a deadline
            return int(left)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
            await conn.close()

    assert asyncio.run(run()) == 0


def test_a_pusher_that_may_not_trim_the_outbox_keeps_running(db: str, caplog: Any) -> None:
    from sorcery_backend.pusher import Pusher, PusherSettings

    role = "no_trim_" + db.rsplit("/", 1)[1]  # roles are per cluster, databases per test
    execute(
        db,
        f"CREATE ROLE {role} LOGIN; GRANT USAGE ON SCHEMA pbx TO {role}; GRANT SELECT ON pbx.nodes TO {role}; "
        "REVOKE EXECUTE ON FUNCTION pbx.trim_outbox FROM PUBLIC",
    )
    limited = f"postgresql://{role}@" + db.split("@", 1)[1]

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(Pusher(limited, PusherSettings(outbox_keep_s=0, idle_check_s=0.05)).run(stop))
        async with asyncio.timeout(20):
            while not any("not trimmed" in r.getMessage() for r in caplog.records):
                await asyncio.sleep(0.05)  # polling the log for the pusher's warning, with a deadline
        stop.set()
        await asyncio.wait_for(task, 10)

    with caplog.at_level("WARNING", logger="pbx.pusher"):
        asyncio.run(run())
    messages = [r.getMessage() for r in caplog.records]
    assert any("permission denied for function trim_outbox" in m for m in messages), messages
    assert not any("retrying" in m for m in messages), messages  # the listener never started over


def test_a_nodes_ari_address_is_what_the_other_controllers_watch(db: str) -> None:
    from ari_app.controller.peer_nodes import read_peers

    add = ["nodes", "add", "ast-1", "--ami", "127.0.0.11:5038", "--user", "pbx"]
    p = pbxctl(db, *add, "--ari", "127.0.0.11:8088", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["ari_addr"] == "127.0.0.11:8088"
    for bad, rule in (("8088", "must be HOST:PORT"), ("a/b:8088", "must not contain")):
        refused = pbxctl(db, "nodes", "add", "ast-2", "--ami", "127.0.0.12:5038", "--user", "pbx", "--ari", bad)
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
        assert f"node ast-2: ARI address {bad!r}" in refused.stderr and rule in refused.stderr
    assert pbxctl(db, "nodes", "add", "ast-2", "--ami", "127.0.0.12:5038", "--user", "pbx").returncode == 0
    third = pbxctl(db, "nodes", "add", "ast-3", "--ami", "127.0.0.13:5038", "--user", "pbx", "--ari", "127.0.0.13:8088")
    assert third.returncode == 0, third.stderr
    listed = pbxctl(db, "nodes", "list").stdout.splitlines()
    assert [line.split("\t")[-1] for line in listed] == ["127.0.0.11:8088", "-", "127.0.0.13:8088"]

    async def peers(own: str) -> dict[str, str]:
        conn = await asyncpg.connect(db)
        try:
            return await read_peers(conn, own)
        finally:
            await conn.close()

    # A node without an ARI address is not watched, and a controller does not watch its own node.
    assert asyncio.run(peers("127.0.0.11:8088")) == {"ast-3": "127.0.0.13:8088"}
    # Re-added without --ari (--replace: the new addresses), it is no longer watched.
    assert pbxctl(db, *add, "--replace").returncode == 0
    assert asyncio.run(peers("127.0.0.13:8088")) == {}


async def test_the_peer_list_follows_node_changes_as_they_are_notified(db: str) -> None:
    from ari_app.controller.peer_nodes import follow_peers
    from sorcery_backend.nodes import add_node, remove_node

    seen: asyncio.Queue[dict[str, str]] = asyncio.Queue()

    async def update(peers: Any) -> None:
        seen.put_nowait(dict(peers))

    task = asyncio.create_task(follow_peers(db, "127.0.0.11:8088", update))
    conn = await asyncpg.connect(db)
    try:
        assert await asyncio.wait_for(seen.get(), 10) == {}
        await add_node(conn, "ast-2", "127.0.0.12:5038", "pbx", "s", ari="127.0.0.12:8088")
        assert await asyncio.wait_for(seen.get(), 10) == {"ast-2": "127.0.0.12:8088"}
        await remove_node(conn, "ast-2")
        assert await asyncio.wait_for(seen.get(), 10) == {}
    finally:
        task.cancel()
        await conn.close()
