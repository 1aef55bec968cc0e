"""The project's own services in a stack: `python -m pbxctl serve` as a background process.

The process gets the stack's exports as its environment, logs to ``serve.log`` and keeps its pid
in ``serve.pid`` in the stack's state dir. It counts as healthy when its HTTP port answers and its
pusher has logged in to the stack's Asterisk, which :func:`register_node` makes a node in the DB.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import asyncpg

from devstack.health import log_tail, wait_gone, wait_healthy
from devstack.ports import free_port, port_free
from devstack.settings import StackSettings, serve_port
from pbx_base.errors import StackError

__all__ = ["ServeProcess", "ServicesError", "register_node", "wait_delivered", "wait_pushed"]

# Popen objects of the processes this Python process started: reaped on stop, so a killed one is
# not mistaken for a live zombie.
_children: dict[int, subprocess.Popen[bytes]] = {}


class ServicesError(StackError, RuntimeError):
    """`pbxctl serve` did not start or become healthy; the message carries the log tail."""


def register_node(settings: StackSettings) -> None:
    """Make a stack's Asterisk a node (named like it), with its current AMI credentials, its ARI
    address (the other nodes' controllers watch its calls there) and, in a cluster, the SIP address
    the edge dispatches to."""
    asyncio.run(_register_node(settings))


async def _register_node(s: StackSettings) -> None:
    from sorcery_backend.nodes import add_node

    sip = (s.host, s.sip_port) if s.cluster is not None else (None, None)
    ari = (s.host, s.http_port)
    conn = await asyncpg.connect(s.database_url())
    try:
        row = await conn.fetchrow(
            "SELECT ami_host, ami_port, ami_user, ami_secret, sip_host, sip_port, ari_host, ari_port "
            "FROM pbx.nodes WHERE name = $1",
            s.name,
        )
        if row is None:
            await add_node(
                conn,
                s.name,
                s.ami_addr,
                s.ami_user,
                s.ami_password,
                sip=s.node_sip_addr if sip[0] else None,
                ari=f"{s.host}:{s.http_port}",
            )
        elif tuple(row) != (s.host, s.ami_port, s.ami_user, s.ami_password, *sip, *ari):
            await conn.execute(
                "UPDATE pbx.nodes SET ami_host = $2, ami_port = $3, ami_user = $4, ami_secret = $5, sip_host = $6, "
                "sip_port = $7, ari_host = $8, ari_port = $9 WHERE name = $1",
                s.name,
                s.host,
                s.ami_port,
                s.ami_user,
                s.ami_password,
                *sip,
                *ari,
            )
            await conn.execute("SELECT pg_notify('pbx_nodes', $1)", s.name)
    finally:
        await conn.close()


class ServeProcess:
    """``push``: False for a cluster's nodes 2..N, whose `pbxctl serve` is their ARI controller (and
    API) only: the stack's own one pushes changes to every node."""

    def __init__(self, state_dir: Path, settings: StackSettings, *, push: bool = True) -> None:
        self.state_dir = state_dir
        self.settings = settings
        self.push = push

    @property
    def pidfile(self) -> Path:
        return self.state_dir / "serve.pid"

    @property
    def logfile(self) -> Path:
        return self.state_dir / "serve.log"

    @property
    def infofile(self) -> Path:
        return self.state_dir / "serve.json"

    @property
    def http_port(self) -> int | None:
        return serve_port(self.settings.name)

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        child = _children.get(pid)
        if child is not None:
            return pid if child.poll() is None else None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        # The pid may have been reused since: only our own command counts.
        return pid if b"pbxctl" in cmdline and b"serve" in cmdline else None

    def running(self) -> bool:
        return self.pid() is not None

    def start(self, timeout: float = 60.0) -> None:
        if self.running():
            return
        port = self.http_port
        if port is None or not port_free(port):
            port = free_port()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.infofile.write_text(json.dumps({"http_port": port}))
        # A killed process never said it went away: health must be shown by the new one. (Not by a
        # controller-only one: the node's connection is the stack's pusher's.)
        if self.push:
            asyncio.run(_mark_disconnected(self.settings))
        env = dict(os.environ, **self.settings.exports())
        with open(self.logfile, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pbxctl", "serve", "--http", f"127.0.0.1:{port}"]
                + ([] if self.push else ["--no-push"]),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        _children[proc.pid] = proc
        self.pidfile.write_text(str(proc.pid))
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = 60.0) -> None:
        wait_healthy(
            "pbxctl serve",
            self._health_problem,
            timeout,
            log=self.logfile,
            error=ServicesError,
            ended=lambda: None if self.running() else "exited",
        )

    def _health_problem(self) -> str | None:
        port = self.http_port
        try:
            with socket.create_connection(("127.0.0.1", port or 0), timeout=1):
                pass
        except OSError as exc:
            return f"HTTP port {port}: {exc}"
        connected = asyncio.run(_node_connected(self.settings))
        return None if connected else f"pusher not connected to node {self.settings.name} yet"

    def stop(self, timeout: float = 15.0) -> None:
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """kill -9, as a crash would: nothing is cleaned up by the process itself."""
        self._signal(signal.SIGKILL, 10.0)

    def restart(self, timeout: float = 60.0) -> None:
        self.stop()
        self.start(timeout)

    def _signal(self, sig: signal.Signals, timeout: float) -> None:
        pid = self.pid()
        if pid is None:
            self.pidfile.unlink(missing_ok=True)
            return
        os.kill(pid, sig)
        wait_gone(pid, self.running, timeout)
        child = _children.pop(pid, None)
        if child is not None:
            child.wait()
        self.pidfile.unlink(missing_ok=True)

    def log_text(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 6) -> str:
        return log_tail(self.logfile, lines)


def wait_pushed(settings: StackSettings, timeout: float = 30.0) -> None:
    """Block until every committed change has been delivered to the stack's Asterisk."""

    async def wait() -> None:
        conn = await asyncpg.connect(settings.database_url(), timeout=10)
        try:
            await wait_delivered(conn, timeout, node=settings.name)
        finally:
            await conn.close()

    asyncio.run(wait())


# A node with changes not delivered yet: the one named $1, or without a name any connected one.
_UNDELIVERED = (
    "SELECT n.name FROM pbx.push_pending p JOIN pbx.nodes n ON n.id = p.node_id "
    "LEFT JOIN pbx.node_state s ON s.node_id = p.node_id "
    "WHERE n.name = $1 OR ($1::text IS NULL AND s.connected) LIMIT 1"
)


async def wait_delivered(conn: asyncpg.Connection, timeout: float = 30.0, *, node: str | None = None) -> None:
    """Until ``node`` (or every connected node) has every committed change: with Sorcery caches
    on, a change takes effect when the pusher has expired it, a few tens of ms after commit."""
    deadline = time.monotonic() + timeout
    while (late := await conn.fetchval(_UNDELIVERED, node)) is not None:
        if time.monotonic() > deadline:
            raise ServicesError(f"changes not delivered to node {late} within {timeout:g}s")
        await asyncio.sleep(0.01)


async def _mark_disconnected(s: StackSettings) -> None:
    conn = await asyncpg.connect(s.database_url(), timeout=10)
    try:
        await conn.execute(
            "UPDATE pbx.node_state SET connected = false FROM pbx.nodes n WHERE n.id = node_id AND n.name = $1", s.name
        )
    finally:
        await conn.close()


async def _node_connected(s: StackSettings) -> bool:
    try:
        conn = await asyncpg.connect(s.database_url(), timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    try:
        return bool(
            await conn.fetchval(
                "SELECT s.connected FROM pbx.nodes n JOIN pbx.node_state s ON s.node_id = n.id WHERE n.name = $1",
                s.name,
            )
        )
    finally:
        await conn.close()
