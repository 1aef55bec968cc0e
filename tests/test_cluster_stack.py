"""The cluster for real: two Asterisk nodes behind the Kamailio SIP edge, one Postgres.

Phones register and call through the edge only. Which node a phone lands on is the edge's hash of
its AOR: the same for a given AOR and node list, so the tests read it from ps_contacts.reg_server
instead of assuming it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from stack import apply_yaml, pbxctl
from test_controller_stack import wait_for

from ari_app.ari import AriClient, HttpAriTransport
from devstack import sipp
from devstack.services import ServeProcess
from devstack.settings import StackSettings
from devstack.stack import Stack, allow_lab_contexts, run_sql

pytestmark = pytest.mark.stack

DOMAIN = "clu.example"
USERS = [str(n) for n in range(2001, 2009)]  # context pbx-dial-test: a plain Dial() on the entry node
ROUTED = [str(n) for n in range(2101, 2107)]  # the tenant's own context: the entry node's controller routes


def _endpoint(user: str, template: str) -> str:
    return f'      "{user}": {{templates: [{template}], auth: {{password: pw-{user}}}}}\n'


def _extension(user: str) -> str:
    return f'      "{user}": {{type: simple, name: U{user}, endpoints: ["{user}"]}}\n'


PHONES = f"""
tenants:
  clu:
    domain: {DOMAIN}
    templates:
      base:
        transport: transport-udp
        endpoint: {{allow: "!all,ulaw", direct_media: "no", context: pbx-dial-test}}
        aor: {{max_contacts: 1, remove_existing: "yes"}}
      routed: {{parents: [base], endpoint: {{context: clu-internal}}}}
    endpoints:
{"".join(_endpoint(u, "base") for u in USERS)}{"".join(_endpoint(u, "routed") for u in ROUTED)}
    extensions:
{"".join(_extension(u) for u in USERS)}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    st = Stack.named(f"test-{os.getpid()}-clu", nodes=2)
    try:
        st.up()
        allow_lab_contexts(st)
        apply_yaml(st, PHONES, tmp_path_factory.mktemp("clu"))
        yield st
    finally:
        st.destroy()


def contacts(st: Stack) -> dict[str, tuple[str, str, str]]:
    """AOR user -> (uri, path, reg_server) of its contact."""
    rows = run_sql(st, "SELECT endpoint, uri, path, reg_server FROM ps_contacts WHERE endpoint LIKE $1", f"%@{DOMAIN}")
    return {r["endpoint"].split("@")[0]: (r["uri"], r["path"], r["reg_server"]) for r in rows}


def register(st: Stack, user: str, port: int | None = None) -> None:
    r = sipp.register(st.settings.sip_addr, user, DOMAIN, f"pw-{user}", local_port=port)
    assert r.final == 200, (user, r.responses, r.stderr)


def homes(st: Stack, users: list[str] = USERS) -> dict[str, str]:
    """Every user of ``users`` registered through the edge, with the node it landed on."""
    for user in users:
        register(st, user)
    return {user: c[2] for user, c in contacts(st).items() if user in users}


def call_across(st: Stack, caller: str, callee: str) -> tuple[sipp.SippResult, sipp.SippResult]:
    """``callee`` registers from a port where it answers the call ``caller`` places to it."""
    port = sipp.free_udp_port()
    register(st, callee, port)
    addr = st.settings.sip_addr

    async def scenario() -> tuple[sipp.SippResult, sipp.SippResult]:
        answering = asyncio.create_task(asyncio.to_thread(sipp.answer, addr, port))
        placed = await asyncio.to_thread(sipp.call, addr, caller, DOMAIN, f"pw-{caller}", callee, hold_s=0.3)
        return placed, await asyncio.wait_for(answering, 30)

    placed, answered = asyncio.run(scenario())
    assert placed.returncode == 0 and 200 in placed.responses, (placed.responses, placed.stderr)
    assert answered.returncode == 0, answered.stderr
    # The caller's hang-up reached the callee: the two legs were bridged on the entry node.
    assert [line.split()[0] for line in answered.received] == ["INVITE", "ACK", "BYE"], answered.received
    return placed, answered


def test_register_through_the_edge_lands_with_path_and_reg_server(cluster: Stack) -> None:
    edge = f"{cluster.settings.sip_addr}^3Blr"  # realtime-encoded ';lr'
    names = [n.name for n in cluster.settings.nodes()]
    first = homes(cluster)
    assert set(first) == set(USERS)
    assert {c[1] for c in contacts(cluster).values()} == {f"<sip:{edge}>"}
    # Spread over both nodes (the edge hashes the AOR), and a refresh lands where it did before.
    assert set(first.values()) == set(names), first
    assert homes(cluster) == first
    status = subprocess.run(
        [sys.executable, "-m", "pbxctl", "dev", "status", "--json"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PBX_STACK=cluster.settings.name),
        timeout=60,
    )
    shown = json.loads(status.stdout)
    assert [(n["name"], n["asterisk"]) for n in shown["nodes"]] == [(n, "running") for n in names]
    assert shown["edge"]["kamailio"] == "running" and len(shown["edge"]["dispatching_to"]) == 2


def test_a_call_across_nodes_rings_through_the_edge_and_is_bridged(cluster: Stack) -> None:
    home = homes(cluster)
    caller = USERS[0]
    callee = next(u for u in USERS if home[u] != home[caller])
    entry = {n.name: n for n in cluster.settings.nodes()}[home[caller]]
    addr = cluster.settings.sip_addr
    _, answered = call_across(cluster, caller, callee)
    invite = answered.trace.split("INVITE sip:", 1)[1].split("\n\n", 1)[0]
    # Placed by the entry node (the caller's: the edge hashes the From AOR), not the callee's, and
    # relayed by the edge (the contact's Path).
    assert f"Via: SIP/2.0/UDP {addr};" in invite and f"Via: SIP/2.0/UDP {entry.node_sip_addr};" in invite, invite
    assert f"Record-Route: <sip:{addr};lr" in invite, invite
    assert entry.name != home[callee]


def test_routed_calls_entering_either_node_ring_a_phone_of_the_other(cluster: Stack) -> None:
    """Each node's own controller routes the calls that enter it (the stack's serve on node 1, a
    controller-only serve on each other node)."""
    callers = homes(cluster, ROUTED)
    home = homes(cluster)
    for node in {n.name for n in cluster.settings.nodes()}:
        caller = next(u for u in ROUTED if callers[u] == node)
        callee = next(u for u in USERS if home[u] != node)
        call_across(cluster, caller, callee)


# --- cluster-wide in-use state (issue 18 item 3: ari_app/controller/peers.py) -----------------------


def _serve_of(st: Stack, node: str) -> ServeProcess:
    return next(s for s in [st.serve, *st.node_serves] if s.settings.name == node)


def _metric(serve: ServeProcess, line: str) -> bool:
    url = f"http://127.0.0.1:{serve.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return line in resp.read().decode().splitlines()


def _channels_on(node: StackSettings, endpoint: str) -> tuple[str, ...]:
    async def get() -> tuple[str, ...]:
        async with HttpAriTransport(node.ari_url, node.ari_user, node.ari_password) as t:
            return (await AriClient(t, "pbx-test").endpoints.get("PJSIP", endpoint)).channel_ids

    return asyncio.run(get())


def test_a_phone_on_a_call_on_another_node_is_busy_without_call_waiting(
    cluster: Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A phone homed on node B talks (bridged on B); a caller entering node A calls it through an
    extension without call waiting: busy (486), and through one with a busy forward: the target
    rings instead. Node A's controller knows only through its feed of B's ARI."""
    callers = homes(cluster, ROUTED)
    home = homes(cluster)
    nodes = {n.name: n for n in cluster.settings.nodes()}
    caller = ROUTED[0]
    a = callers[caller]
    b = next(n for n in nodes if n != a)
    busy = next(u for u in USERS if home[u] == b)
    talks_to, forward_to = [u for u in USERS if u != busy][:2]
    extra = (
        f'      "2150": {{type: simple, name: NoWait, endpoints: ["{busy}"], call_waiting: false}}\n'
        f'      "2151": {{type: simple, name: NoWaitFwd, endpoints: ["{busy}"], call_waiting: false, '
        f'forward: {{mode: busy, to: "{forward_to}"}}}}\n'
    )
    apply_yaml(cluster, PHONES + extra, tmp_path_factory.mktemp("clu-busy"))
    serve_a = _serve_of(cluster, a)
    wait_for("node A's feed of node B", lambda: _metric(serve_a, f'pbx_ari_peer_connected{{node="{b}"}} 1.0'), 30)
    addr = cluster.settings.sip_addr
    talk_port, fwd_port = sipp.free_udp_port(), sipp.free_udp_port()
    register(cluster, talks_to, talk_port)
    register(cluster, forward_to, fwd_port)

    async def scenario() -> tuple[sipp.SippResult, sipp.SippResult, sipp.SippResult, sipp.SippResult]:
        answering = asyncio.create_task(asyncio.to_thread(sipp.answer, addr, talk_port))
        # A plain Dial() on the busy phone's own node (context pbx-dial-test): its channel is on B.
        talking = asyncio.create_task(
            asyncio.to_thread(sipp.call, addr, busy, DOMAIN, f"pw-{busy}", talks_to, hold_s=12)
        )
        await asyncio.to_thread(
            wait_for, "the call bridged on B", lambda: len(_channels_on(nodes[b], f"{busy}@{DOMAIN}")) == 1
        )
        refused = await asyncio.to_thread(sipp.call, addr, caller, DOMAIN, f"pw-{caller}", "2150", hold_s=0.3)
        forwarded = asyncio.create_task(asyncio.to_thread(sipp.answer, addr, fwd_port))
        taken = await asyncio.to_thread(sipp.call, addr, caller, DOMAIN, f"pw-{caller}", "2151", hold_s=0.3)
        await asyncio.wait_for(forwarded, 30)
        return refused, taken, await asyncio.wait_for(talking, 30), await asyncio.wait_for(answering, 30)

    refused, taken, talked, answered = asyncio.run(scenario())
    assert refused.final == 486, (refused.responses, refused.stderr)
    assert taken.final == 200, (taken.responses, taken.stderr)
    # The busy phone's call was up on B the whole time: answered, then ended by its BYE.
    assert talked.final == 200, (talked.responses, talked.stderr)
    assert [line.split()[0] for line in answered.received] == ["INVITE", "ACK", "BYE"], answered.received


# --- end of cluster-wide in-use state ---------------------------------------------------------------


def test_nodes_remove_and_add_reload_the_edges_node_list(cluster: Stack) -> None:
    second = cluster.settings.nodes()[1]
    edge = cluster.edge
    assert edge is not None
    p = pbxctl(cluster, "nodes", "remove", second.name)
    assert p.returncode == 0 and "SIP edge reloaded its node list" in p.stderr, p.stderr
    assert list(edge.destinations()) == [f"sip:{cluster.settings.node_sip_addr}"]
    # Every REGISTER now lands on the one node left.
    assert set(homes(cluster).values()) == {cluster.settings.name}
    # Unregistered there: a node's astdb still holds the contacts it took before, which would keep
    # a second row per AOR once the AOR moves back (a stale copy; issue #18's failover part).
    for user in USERS:
        assert sipp.unregister_all(cluster.settings.sip_addr, user, DOMAIN, f"pw-{user}").final == 200
    p = pbxctl(
        cluster, "nodes", "add", second.name, "--ami", second.ami_addr, "--user", second.ami_user, "--sip",
        second.node_sip_addr, "--ari", f"{second.host}:{second.http_port}",
    )  # fmt: skip
    assert p.returncode == 0 and "SIP edge reloaded its node list" in p.stderr, p.stderr
    assert sorted(edge.destinations()) == sorted(f"sip:{n.node_sip_addr}" for n in cluster.settings.nodes())
    assert set(homes(cluster).values()) == {n.name for n in cluster.settings.nodes()}


def test_down_leaves_no_process_and_destroy_no_dir(cluster: Stack) -> None:
    name = cluster.settings.name
    cluster.down()
    leftovers = subprocess.run(["pgrep", "-af", f"stacks/{name}"], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", leftovers.stdout
    cluster.destroy()
    assert not cluster.state_dir.exists() and not any(Path(a.dir).exists() for a in cluster.asterisks)
