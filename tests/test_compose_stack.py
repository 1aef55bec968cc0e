"""compose/docker-compose.yml (the cluster: Postgres, the Kamailio edge, two Asterisk nodes, a
controller per node) brought up with podman-compose, real calls through its edge, brought down.

The images are built from local base images (devstack/images.py) and kept in podman's storage, so
a second run rebuilds only the layers whose sources changed. Every container shares the host's
network: the edge and the nodes listen on loopback addresses no dev stack uses (127.0.0.2x, the
compose file's defaults), on ports this run reserves, under a project name of its own.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator

import asyncpg
import pytest
from compose_build import built_images

from devstack import sipp
from devstack.images import compose_command, containers_env, podman
from devstack.ports import free_port
from devstack.stack import cluster_policy

pytestmark = pytest.mark.stack

EDGE_HOST, NODE_HOSTS = "127.0.0.20", {"node1": "127.0.0.21", "node2": "127.0.0.22"}
DOMAIN = "box.example"
USERS = [str(n) for n in range(1001, 1007)]


def _endpoint(user: str) -> str:
    return f'      "{user}": {{templates: [phone], auth: {{password: pw-{user}}}}}\n'


def _extension(user: str) -> str:
    return f'      "{user}": {{type: simple, name: U{user}, endpoints: ["{user}"]}}\n'


TENANT = f"""
tenants:
  box:
    domain: {DOMAIN}
    templates:
      phone:
        endpoint: {{context: box-internal, allow: "!all,ulaw", direct_media: "no"}}
        aor: {{max_contacts: 1, remove_existing: "yes"}}
    endpoints:
{"".join(_endpoint(u) for u in USERS)}
    extensions:
{"".join(_extension(u) for u in USERS)}
"""


_ASK_EDGE = (
    "import json, pathlib, sys; from sorcery_backend import kamailio_rpc as k\n"
    "try: print(json.dumps(k.dispatcher_destinations(pathlib.Path('/run/pbx-edge/rpc.sock'))))\n"
    "except (k.EdgeUnreachable, k.EdgeRefused): sys.exit(3)"
)


class Compose:
    def __init__(self) -> None:
        self.project = f"pbxtest{os.getpid()}"
        ports = {name: free_port("tcp") for name in ("DB", "ARI", "AMI", "HTTP")}
        self.sip_port = free_port("udp")
        self.env = dict(
            containers_env(),
            **built_images(timeout=1500),
            PBX_DB_ADMIN_PASSWORD=secrets.token_hex(12),
            PBX_ASTERISK_DB_PASSWORD=secrets.token_hex(12),
            PBX_KAMAILIO_DB_PASSWORD=secrets.token_hex(12),
            PBX_ARI_PASSWORD=secrets.token_hex(12),
            PBX_AMI_PASSWORD=secrets.token_hex(12),
            PBX_DB_PORT=str(ports["DB"]),
            PBX_ARI_PORT=str(ports["ARI"]),
            PBX_AMI_PORT=str(ports["AMI"]),
            PBX_HTTP_PORT=str(ports["HTTP"]),
            PBX_SIP_PORT=str(self.sip_port),
            PBX_EDGE_HOST=EDGE_HOST,
            PBX_NODE1_HOST=NODE_HOSTS["node1"],
            PBX_NODE2_HOST=NODE_HOSTS["node2"],
        )
        self.database_url = f"postgresql://pbx_admin:{self.env['PBX_DB_ADMIN_PASSWORD']}@127.0.0.1:{ports['DB']}/pbx"
        self.http_port = ports["HTTP"]
        self.edge = f"{EDGE_HOST}:{self.sip_port}"

    def run(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        argv = [*compose_command(self.project), *args]
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout, check=False)

    def pbxctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, PBX_DATABASE_URL=self.database_url)
        return subprocess.run(
            [sys.executable, "-m", "pbxctl", *args], env=env, capture_output=True, text=True, timeout=120, check=False
        )

    def sql(self, query: str, *args: object) -> list[asyncpg.Record]:
        async def run() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(self.database_url)
            try:
                return list(await conn.fetch(query, *args))
            finally:
                await conn.close()

        return asyncio.run(run())

    def edge_destinations(self) -> dict[str, str] | None:
        """What the edge dispatches to, asked over its RPC socket from a controller's container,
        as `pbxctl nodes add` asks it to reload there; None while it does not answer."""
        done = podman("exec", f"{self.project}_controller-1_1", "python", "-c", _ASK_EDGE, check=False)
        return json.loads(done.stdout) if done.returncode == 0 else None

    def containers(self) -> list[str]:
        label = f"label=io.podman.compose.project={self.project}"
        return podman("ps", "-a", "--filter", label, "--format", "{{.Names}}").stdout.decode().split()

    def volumes(self) -> list[str]:
        return [v for v in podman("volume", "ls", "--format", "{{.Name}}").stdout.decode().split() if self.project in v]

    def logs(self) -> str:
        return self.run("logs", timeout=60).stdout[-4000:]


@pytest.fixture(scope="module")
def compose() -> Iterator[Compose]:
    c = Compose()
    up = c.run("up", "-d")  # the images: built by tests/compose_build.py while the suite ran
    try:
        assert up.returncode == 0, (up.stdout + up.stderr)[-3000:]
        yield c
    finally:
        c.run("down", "-v", timeout=300)


def _wait(what: str, probe: Callable[[], bool], timeout: float, logs: Compose) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(0.5)
    pytest.fail(f"compose: {what} not within {timeout:g}s\n{logs.logs()}")


def _serving(host: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def running(compose: Compose, tmp_path_factory: pytest.TempPathFactory) -> Compose:
    """Every service up: each controller answering, both nodes pushed to, the edge dispatching to
    both; then the tenant, with the Path support the cluster's operator forces on every AOR."""

    def nodes_connected() -> bool:
        p = compose.pbxctl("push", "status", "--json")
        nodes = json.loads(p.stdout)["nodes"] if p.returncode == 0 else []
        return {n["name"] for n in nodes if n["connected"]} == set(NODE_HOSTS)

    want = {f"sip:{host}:{compose.sip_port}" for host in NODE_HOSTS.values()}
    for node, host in NODE_HOSTS.items():
        _wait(f"{node}'s pbxctl serve answering", functools.partial(_serving, host, compose.http_port), 180, compose)
    _wait("the pushers connected to both nodes' AMI", nodes_connected, 120, compose)
    _wait("the edge dispatching to both nodes", lambda: set(compose.edge_destinations() or {}) == want, 60, compose)
    compose.sql(cluster_policy(compose.edge))
    config = tmp_path_factory.mktemp("compose") / "box.yaml"
    config.write_text(TENANT)
    applied = compose.pbxctl("apply", str(config))
    assert applied.returncode == 0, applied.stderr
    return compose


def _homes(c: Compose) -> dict[str, str]:
    """Every user registered through the edge, with the node it landed on (the edge's hash)."""
    for user in USERS:
        r = sipp.register(c.edge, user, DOMAIN, f"pw-{user}")
        assert r.final == 200, (user, r.responses, r.stderr, c.logs())
    rows = c.sql("SELECT endpoint, reg_server FROM ps_contacts WHERE endpoint LIKE $1", f"%@{DOMAIN}")
    return {r["endpoint"].split("@")[0]: r["reg_server"] for r in rows}


def test_a_call_through_the_edge_crosses_nodes_and_is_bridged(running: Compose) -> None:
    home = _homes(running)
    assert set(home) == set(USERS) and set(home.values()) <= set(NODE_HOSTS), home
    caller = USERS[0]
    # Across nodes when the hash put the phones on both (it does for these AORs unless every one
    # landed on one node); otherwise a call within the caller's node, still through the edge.
    callee = next((u for u in USERS if home[u] != home[caller]), USERS[1])
    port = sipp.free_udp_port()
    r = sipp.register(running.edge, callee, DOMAIN, f"pw-{callee}", local_port=port)
    assert r.final == 200, (r.responses, r.stderr)

    async def scenario() -> tuple[sipp.SippResult, sipp.SippResult]:
        answering = asyncio.create_task(asyncio.to_thread(sipp.answer, running.edge, port))
        placed = await asyncio.to_thread(sipp.call, running.edge, caller, DOMAIN, f"pw-{caller}", callee, hold_s=0.5)
        return placed, await asyncio.wait_for(answering, 30)

    placed, answered = asyncio.run(scenario())
    assert placed.final == 200, (placed.responses, placed.stderr, running.logs())
    assert answered.returncode == 0, answered.stderr
    # The caller's hang-up reached the callee: its node's controller bridged the two legs.
    assert [line.split()[0] for line in answered.received] == ["INVITE", "ACK", "BYE"], answered.received
    invite = answered.trace.split("INVITE sip:", 1)[1].split("\n\n", 1)[0]
    # Placed by the caller's node, the one the edge sent the call to (its hash of the caller's AOR).
    # Not through the edge: the controller dials the contact's URI (PJSIP/<endpoint>/<uri>), which
    # leaves Asterisk no contact whose Path to follow; loopback reaches the phone anyway.
    entry = f"{NODE_HOSTS[home[caller]]}:{running.sip_port}"
    assert f"Via: SIP/2.0/UDP {entry};" in invite, invite


def test_the_base_image_names_print_as_exports_for_a_shell(compose: Compose) -> None:
    p = subprocess.run([sys.executable, "-m", "devstack.images"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    names = ("PBX_BOOKWORM_IMAGE", "PBX_ASTERISK_IMAGE")
    assert p.stdout.splitlines() == [f"export {n}={compose.env[n]}" for n in names]


def test_down_leaves_no_container_and_no_volume(compose: Compose) -> None:
    assert compose.containers(), "the stack runs before it is brought down"
    down = compose.run("down", "-v", timeout=300)
    assert down.returncode == 0, (down.stdout + down.stderr)[-3000:]
    assert compose.containers() == [] and compose.volumes() == []
