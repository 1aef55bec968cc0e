"""The cluster's parts without running them: the node list Kamailio reads (sql/021's view, under its
own role), `pbxctl nodes add --sip`, the per-node and per-edge rendering, the RPC client."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import asyncpg
import pytest

from devstack.asterisk import AsteriskNode
from devstack.kamailio import CONFIG, render_edge_defines
from devstack.settings import EDGE_HOST, StackSettings
from pbx_base import resources
from sorcery_backend.apply import apply_config
from sorcery_backend.declarative import parse_config
from sorcery_backend.kamailio_rpc import EdgeRefused, EdgeUnreachable, dispatcher_destinations, reload_dispatcher
from sorcery_backend.nodes import NodeRefused, add_node

PBXCTL = [sys.executable, "-m", "pbxctl"]


def settings(name: str = "c1") -> StackSettings:
    return StackSettings(
        name=name,
        pg_port=15432,
        sip_port=15060,
        http_port=15088,
        ami_port=15038,
        rtp_start=20000,
        rtp_end=20098,
        db_password="dbpw",
        ari_password="aripw",
        ami_password="amipw",
    )


# --- the stack's shape ---------------------------------------------------------------------------


def test_one_node_is_the_plain_stack_on_127_0_0_1() -> None:
    s = settings().with_nodes(1)
    assert s.cluster is None and s.host == "127.0.0.1" and s.systemname == ""
    assert s.sip_addr == s.node_sip_addr == "127.0.0.1:15060" and s.ari_url == "http://127.0.0.1:15088"
    assert [n.name for n in s.nodes()] == ["c1"]
    assert "PBX_KAMAILIO_RPC" not in s.exports()


def test_a_cluster_puts_each_node_and_the_edge_on_an_address_of_its_own() -> None:
    plain = settings()
    s = plain.with_nodes(3)
    nodes = s.nodes()
    assert [(n.name, n.systemname, n.host) for n in nodes] == [
        ("c1", "c1", "127.0.0.11"),
        ("c1-2", "c1-2", "127.0.0.12"),
        ("c1-3", "c1-3", "127.0.0.13"),
    ]
    # Same port numbers on every address; RTP (bound on every address) apart.
    assert {n.sip_port for n in nodes} == {15060} and len({n.rtp_start for n in nodes}) == 3
    assert s.sip_addr == f"{EDGE_HOST}:15060" and nodes[1].node_sip_addr == "127.0.0.12:15060"
    exports = s.exports()
    assert exports["PBX_SIP_ADDR"] == f"{EDGE_HOST}:15060" and exports["PBX_ARI_URL"] == "http://127.0.0.11:15088"
    assert exports["PBX_KAMAILIO_RPC"].endswith("/c1/kamailio/rpc.sock")
    assert nodes[1].exports()["PBX_KAMAILIO_RPC"] == exports["PBX_KAMAILIO_RPC"]  # the stack's one edge
    # Growing keeps what the database already has; back to one node is the plain stack again.
    grown = s.with_nodes(4)
    assert grown.cluster is not None and s.cluster is not None
    assert grown.cluster.edge_db_password == s.cluster.edge_db_password
    assert grown.cluster.node_rtp[:2] == s.cluster.node_rtp
    assert s.with_nodes(1).model_dump() == plain.model_dump()
    with pytest.raises(ValueError, match="--nodes must be 1 to 9"):
        s.with_nodes(10)


def test_each_node_renders_its_own_address_and_systemname(tmp_path: Path) -> None:
    for s, host, systemname in (
        (settings(), "127.0.0.1", ""),
        (settings().with_nodes(2).nodes()[1], "127.0.0.12", "c1-2"),
    ):
        node = AsteriskNode(tmp_path, s)
        node.render()
        etc = node.dir / "etc"
        assert f"bind = {host}:15060" in (etc / "pjsip.conf").read_text()
        assert f"bindaddr = {host}" in (etc / "http.conf").read_text()
        assert f"bindaddr = {host}" in (etc / "manager.conf").read_text()
        assert f"systemname = {systemname}\n" in (etc / "asterisk.conf").read_text()
        assert "load => res_pjsip_path.so" in (etc / "modules.conf").read_text()


def test_edge_defines_carry_the_stacks_values(tmp_path: Path) -> None:
    s = settings().with_nodes(2)
    assert s.cluster is not None
    text = render_edge_defines(s, 15432, tmp_path / "rpc.sock", tmp_path / "ctl.sock")
    assert f"#!define EDGE_LISTEN udp:{EDGE_HOST}:15060\n" in text
    assert f'#!define DB_URL "postgres://kamailio:{s.cluster.edge_db_password}@127.0.0.1:15432/pbx"' in text
    assert f'#!define RPC_SOCKET "{tmp_path}/rpc.sock"' in text
    assert f'#!define PING_FROM "sip:pbx-edge@{EDGE_HOST}:15060"' in text  # the probes' From: no endpoint


@pytest.mark.skipif(shutil.which("kamailio") is None, reason="kamailio is not installed")
def test_kamailio_accepts_the_rendered_config(tmp_path: Path) -> None:
    s = settings().with_nodes(2)
    (tmp_path / CONFIG).write_text((resources.kamailio_conf_dir() / CONFIG).read_text())
    (tmp_path / "edge.cfg").write_text(render_edge_defines(s, 15432, tmp_path / "rpc.sock", tmp_path / "ctl.sock"))
    r = subprocess.run(["kamailio", "-c", "-f", str(tmp_path / CONFIG)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "config file ok" in r.stdout + r.stderr, r.stderr[-2000:]


# --- the node list the edge reads ----------------------------------------------------------------


async def test_the_dispatcher_view_lists_nodes_with_a_sip_address(db: str) -> None:
    conn = await asyncpg.connect(db)
    try:
        await add_node(conn, "ast-1", "127.0.0.11:5038", "pbx", "s1", sip="127.0.0.11:5060")
        await add_node(conn, "ast-2", "127.0.0.12:5038", "pbx", "s2", sip="127.0.0.12:5060")
        await add_node(conn, "ami-only", "127.0.0.13:5038", "pbx", "s3")
        rows = await conn.fetch(
            "SELECT setid, destination, flags, priority, attrs FROM kamailio.dispatcher ORDER BY destination"
        )
        assert [tuple(r) for r in rows] == [
            (1, "sip:127.0.0.11:5060", 0, 0, "duid=ast-1"),
            (1, "sip:127.0.0.12:5060", 0, 0, "duid=ast-2"),
        ]
        # Kamailio reads them as DB1_INT: int4 columns, and a version row for the table as configured.
        types = await conn.fetch(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'kamailio' AND table_name = 'dispatcher' "
            "AND column_name IN ('id', 'setid', 'flags', 'priority')"
        )
        assert {r["data_type"] for r in types} == {"integer"}
        assert (
            await conn.fetchval("SELECT table_version FROM kamailio.version WHERE table_name = 'kamailio.dispatcher'")
            == 4
        )
        await conn.execute("DELETE FROM pbx.nodes WHERE name = 'ast-2'")
        assert await conn.fetchval("SELECT count(*) FROM kamailio.dispatcher") == 1
    finally:
        await conn.close()


async def test_the_edge_role_reads_its_views_and_nothing_else(db: str) -> None:
    admin = await asyncpg.connect(db)
    role = "kam_" + db.rsplit("/", 1)[1]
    await add_node(admin, "ast-1", "127.0.0.11:5038", "pbx", "amisecret", sip="127.0.0.11:5060")
    await admin.execute(f"CREATE ROLE {role} LOGIN IN ROLE pbx_kamailio")
    edge = await asyncpg.connect(db.replace("postgres@", f"{role}@"))
    try:
        assert await edge.fetchval("SELECT destination FROM kamailio.dispatcher") == "sip:127.0.0.11:5060"
        assert await edge.fetchval("SELECT count(*) FROM kamailio.version") == 1
        assert await edge.fetchval("SELECT count(*) FROM kamailio.carriers") == 0
        for sql in ("SELECT ami_secret FROM pbx.nodes", "SELECT * FROM ps_contacts", "DELETE FROM kamailio.dispatcher"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await edge.execute(sql)
    finally:
        await edge.close()
        await admin.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
        await admin.close()


async def test_a_sip_address_that_is_not_host_port_is_refused(db: str) -> None:
    conn = await asyncpg.connect(db)
    try:
        for bad in ("127.0.0.11", "127.0.0.11:0", "a;b:5060", "x@y:5060"):
            with pytest.raises(NodeRefused, match=r"^node ast-1: SIP address"):
                await add_node(conn, "ast-1", "127.0.0.11:5038", "pbx", "s", sip=bad)
        assert await conn.fetchval("SELECT count(*) FROM pbx.nodes") == 0
    finally:
        await conn.close()


def _pbxctl(dsn: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PBX_")}
    return subprocess.run(
        [*PBXCTL, *args],
        capture_output=True,
        text=True,
        env={**clean, "PBX_DATABASE_URL": dsn, "PBX_AMI_PASSWORD": "s", **env},
        timeout=120,
    )


def test_nodes_add_with_sip_and_a_missing_edge_socket(db: str, tmp_path: Path) -> None:
    p = _pbxctl(
        db, "nodes", "add", "ast-1", "--ami", "127.0.0.11:5038", "--user", "pbx", "--sip", "127.0.0.11:5060", "--json"
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["sip_addr"] == "127.0.0.11:5060"
    bad = _pbxctl(db, "nodes", "add", "ast-2", "--ami", "127.0.0.12:5038", "--user", "pbx", "--sip", "nope")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "node ast-2: SIP address 'nope'" in bad.stderr
    # The node is removed; the edge that should reload is not there: said, exit 3.
    gone = _pbxctl(db, "nodes", "remove", "ast-1", PBX_KAMAILIO_RPC=str(tmp_path / "none.sock"))
    assert gone.returncode == 3, gone.stderr
    assert "node ast-1 removed, but the SIP edge did not reload its node list" in gone.stderr
    listed = _pbxctl(db, "nodes", "list", "--json")
    assert json.loads(listed.stdout)["nodes"] == []


# --- the RPC client --------------------------------------------------------------------------------


def _fake_edge(path: Path, answer: dict[str, object]) -> threading.Thread:
    """A datagram socket that answers one JSON-RPC request as Kamailio's jsonrpcs does."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))

    def serve() -> None:
        with server:
            data, sender = server.recvfrom(65536)
            request = json.loads(data)
            server.sendto(json.dumps({"jsonrpc": "2.0", "id": request["id"], **answer}).encode(), sender)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def test_rpc_reads_the_dispatcher_list_and_reports_errors(tmp_path: Path) -> None:
    listing = {
        "RECORDS": [
            {"SET": {"ID": 1, "TARGETS": [{"DEST": {"URI": "sip:127.0.0.11:5060", "FLAGS": "AX"}}]}},
        ]
    }
    t = _fake_edge(tmp_path / "a.sock", {"result": listing})
    assert dispatcher_destinations(tmp_path / "a.sock") == {"sip:127.0.0.11:5060": "AX"}
    t.join(5)
    t = _fake_edge(tmp_path / "b.sock", {"error": {"code": 500, "message": "Error while reloading"}})
    with pytest.raises(EdgeRefused, match=r"dispatcher\.reload: 500 Error while reloading"):
        reload_dispatcher(tmp_path / "b.sock")
    t.join(5)
    with pytest.raises(EdgeUnreachable):
        reload_dispatcher(tmp_path / "missing.sock")


CARRIERS = {
    "tenants": {
        "t": {
            "domain": "t.example",
            "endpoints": {
                "carrier": {"identify": {"match": ["127.0.0.3", "10.1.2.0/24"]}},
            },
        }
    }
}


async def test_the_edge_names_a_carrier_by_its_networks_and_only_nodes_see_the_header(db: str) -> None:
    conn = await asyncpg.connect(db)
    try:
        await apply_config(conn, parse_config(CARRIERS))
        token = await conn.fetchval("SELECT token FROM pbx.edge_token")
        assert len(token) == 64
        carriers = await conn.fetch("SELECT host(net) AS net, masklen(net) AS bits, carrier FROM kamailio.carriers")
        assert sorted((r["net"], r["bits"], r["carrier"]) for r in carriers) == [
            ("10.1.2.0", 24, f"{token} carrier@t.example"),
            ("127.0.0.3", 32, f"{token} carrier@t.example"),
        ]
        node = {r["id"]: r["match_header"] for r in await conn.fetch("SELECT * FROM ps_node_endpoint_id_ips")}
        assert node["carrier@t.example"] == f"X-PBX-Carrier: {token} carrier@t.example"
        # What everyone else reads (export, the flattened rows) is what the operator wrote.
        plain = await conn.fetchval("SELECT match_header FROM ps_endpoint_id_ips WHERE id = 'carrier@t.example'")
        assert plain is None
    finally:
        await conn.close()
