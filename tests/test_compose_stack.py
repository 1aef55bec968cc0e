"""compose/docker-compose.yml brought up with podman-compose, a real call through it, brought down.

The images are built from local base images (devstack/images.py) and kept in podman's storage, so
a second run rebuilds only the layers whose sources changed. Every container shares the host's
network; each run takes free ports and its own project name, so it never meets another stack.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from compose_build import built_images

from devstack import sipp
from devstack.images import compose_command, containers_env
from devstack.ports import free_port
from pbx_base import resources

pytestmark = pytest.mark.stack

TENANT = """
tenants:
  box:
    domain: box.example
    templates:
      phone: {endpoint: {context: box-internal, allow: "!all,ulaw", direct_media: "no"}, aor: {max_contacts: 1}}
    endpoints:
      "1001": {templates: [phone], auth: {password: pw-1001}}
      "1002": {templates: [phone], auth: {password: pw-1002}}
    extensions:
      "1001": {type: simple, name: Alice, endpoints: ["1001"]}
      "1002": {type: simple, name: Bob, endpoints: ["1002"]}
"""


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
            PBX_ARI_PASSWORD=secrets.token_hex(12),
            PBX_AMI_PASSWORD=secrets.token_hex(12),
            PBX_DB_PORT=str(ports["DB"]),
            PBX_ARI_PORT=str(ports["ARI"]),
            PBX_AMI_PORT=str(ports["AMI"]),
            PBX_HTTP_PORT=str(ports["HTTP"]),
            PBX_SIP_PORT=str(self.sip_port),
        )
        self.database_url = f"postgresql://pbx_admin:{self.env['PBX_DB_ADMIN_PASSWORD']}@127.0.0.1:{ports['DB']}/pbx"
        self.http_port = ports["HTTP"]

    def run(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        argv = [*compose_command(self.project), *args]
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout, check=False)

    def pbxctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, PBX_DATABASE_URL=self.database_url)
        return subprocess.run(
            [sys.executable, "-m", "pbxctl", *args], env=env, capture_output=True, text=True, timeout=120, check=False
        )

    def logs(self) -> str:
        return self.run("logs", timeout=60).stdout[-3000:]


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


def test_a_call_through_the_compose_stack_is_answered(compose: Compose, tmp_path: Path) -> None:
    import json
    import urllib.request

    def serving() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{compose.http_port}/metrics", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def node_connected() -> bool:
        p = compose.pbxctl("push", "status", "--json")
        nodes = json.loads(p.stdout)["nodes"] if p.returncode == 0 else []
        return bool(nodes) and all(n["connected"] for n in nodes)

    _wait("pbxctl serve answering", serving, 120, compose)
    _wait("the pusher connected to the node's AMI", node_connected, 120, compose)
    config = tmp_path / "box.yaml"
    config.write_text(TENANT)
    applied = compose.pbxctl("apply", str(config))
    assert applied.returncode == 0, applied.stderr

    sip_addr = f"127.0.0.1:{compose.sip_port}"
    callee = sipp.SippProcess("callee", sipp.free_udp_port(), tmp_path)
    r = sipp.register(sip_addr, "1002", "box.example", "pw-1002", local_port=callee.port)
    assert r.final == 200, (r.responses, r.stderr)
    callee.start(sip_addr, resources.sipp_scenario("uas_answer.xml").read_text(), ["-"], 60)
    try:
        call = sipp.call(sip_addr, "1001", "box.example", "pw-1001", "1002", hold_s=1.0)
        assert call.final == 200, (call.responses, call.stderr, compose.logs())
        assert callee.got("INVITE")
    finally:
        callee.stop()
