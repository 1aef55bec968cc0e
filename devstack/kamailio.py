"""The cluster's SIP edge: one Kamailio process of a stack, on the host, with its own dir.

The config (kamailio_conf/kamailio.cfg) is the project's and the same for every stack; what is the
stack's (its address, its database login, its RPC sockets) is rendered next to it as ``edge.cfg``,
#!define lines the config imports. Kamailio runs in the foreground of its own session (``-DD``),
so its pid is the one we started and stopping it stops the process group it forked.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

from devstack.health import log_tail, wait_gone, wait_healthy
from devstack.ports import port_free
from devstack.settings import StackSettings, edge_dir
from pbx_base import resources
from pbx_base.errors import StackError
from sorcery_backend.kamailio_rpc import EdgeRefused, EdgeUnreachable, dispatcher_destinations

__all__ = ["KamailioEdge", "KamailioError", "edge_defines", "kamailio_argv", "render_edge_defines", "write_edge_config"]

CONFIG = "kamailio.cfg"


class KamailioError(StackError, RuntimeError):
    """Kamailio is missing, did not start or did not answer; the message carries the log tail."""


def edge_defines(owner: str, addr: str, db_url: str, rpc_socket: Path, ctl_socket: Path) -> str:
    """edge.cfg: an edge's values (``addr``: HOST:PORT it listens on) as the #!define lines
    kamailio.cfg uses; ``owner`` names the edge in an error."""
    values = {"EDGE_LISTEN": addr, "DB_URL": db_url, "RPC_SOCKET": str(rpc_socket), "CTL_SOCKET": str(ctl_socket)}
    for name, value in values.items():
        if '"' in value or "\n" in value:  # the value is not echoed: DB_URL holds a password
            raise KamailioError(f"{owner}: the edge's {name} cannot be quoted in kamailio.cfg")
    return (
        "# Rendered by devstack/kamailio.py for this edge: the values kamailio.cfg uses.\n"
        f"#!define EDGE_LISTEN udp:{addr}\n"
        f'#!define EDGE_ALIAS "{addr}"\n'
        f'#!define PING_FROM "sip:pbx-edge@{addr}"\n'
        f'#!define RPC_SOCKET "{rpc_socket}"\n'
        f'#!define CTL_SOCKET "unix:{ctl_socket}"\n'
        f'#!define DB_URL "{db_url}"\n'
        f'#!define SQL_CON "pbx=>{db_url}"\n'
    )


def render_edge_defines(settings: StackSettings, db_port: int, rpc_socket: Path, ctl_socket: Path) -> str:
    """edge.cfg of a dev stack's edge."""
    cluster = settings.cluster
    if cluster is None:
        raise KamailioError(f"stack {settings.name} has no cluster: nothing to render for an edge")
    db_url = f"postgres://{cluster.edge_db_user}:{cluster.edge_db_password}@127.0.0.1:{db_port}/{settings.db_name}"
    addr = f"{cluster.edge_host}:{settings.sip_port}"
    return edge_defines(f"stack {settings.name}", addr, db_url, rpc_socket, ctl_socket)


def write_edge_config(directory: Path, defines: str) -> Path:
    """The project's kamailio.cfg and its edge.cfg into ``directory``; returns the config to run."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG).write_text((resources.kamailio_conf_dir() / CONFIG).read_text())
    path = directory / "edge.cfg"
    # It holds the edge's database password.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fd, 0o600)
        fh.write(defines)
    return directory / CONFIG


def kamailio_argv(config: Path) -> list[str]:
    """How an edge runs: in the foreground (``-DD``: its pid is the one started), logging to
    stderr, its runtime files beside its config, small shared and private memory pools."""
    binary = shutil.which("kamailio") or "/usr/sbin/kamailio"
    if not Path(binary).exists():
        raise KamailioError("kamailio is not installed: run devstack/install_host_deps.sh")
    run = config.parent / "run"
    run.mkdir(exist_ok=True)
    return [binary, "-f", str(config), "-DD", "-E", "-Y", str(run), "-m", "32", "-M", "8"]


class KamailioEdge:
    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.dir = edge_dir(settings.cluster.stack if settings.cluster is not None else settings.name)

    @property
    def rpc_socket(self) -> Path:
        return self.dir / "rpc.sock"

    @property
    def ctl_socket(self) -> Path:
        """kamcmd's: `kamcmd -s unix:<this> dispatcher.list`."""
        return self.dir / "ctl.sock"

    @property
    def logfile(self) -> Path:
        return self.dir / "kamailio.log"

    @property
    def pidfile(self) -> Path:
        return self.dir / "kamailio.pid"

    def render(self) -> Path:
        defines = render_edge_defines(self.settings, self.settings.pg_port, self.rpc_socket, self.ctl_socket)
        return write_edge_config(self.dir, defines)

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        # The pid may have been reused since: only our own command line counts.
        return pid if str(self.dir / CONFIG).encode() in cmdline else None

    def running(self) -> bool:
        return self.pid() is not None

    def start(self, timeout: float = 30.0) -> None:
        if self.running():
            return
        cluster = self.settings.cluster
        assert cluster is not None
        if not port_free(self.settings.sip_port, "udp", cluster.edge_host):
            raise KamailioError(
                f"port {self.settings.sip_port} (SIP edge) on {cluster.edge_host} is taken: cannot start Kamailio"
            )
        argv = kamailio_argv(self.render())
        for sock in (self.rpc_socket, self.ctl_socket):
            sock.unlink(missing_ok=True)
        with open(self.logfile, "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pidfile.write_text(str(proc.pid))

        def ended() -> str | None:
            return None if proc.poll() is None else f"exited with {proc.returncode}"

        try:
            wait_healthy("Kamailio", self._health_problem, timeout, log=self.logfile, error=KamailioError, ended=ended)
        except KamailioError:
            self.stop()  # a next `dev up` must start it again, not find a broken one running
            raise

    def _health_problem(self) -> str | None:
        try:
            dispatcher_destinations(self.rpc_socket)
        except (EdgeUnreachable, EdgeRefused) as exc:
            return str(exc)
        return None

    def destinations(self) -> dict[str, str]:
        return dispatcher_destinations(self.rpc_socket)

    def stop(self, timeout: float = 10.0) -> None:
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            wait_gone(pid, self.running, timeout)
            # Its children, forked into the session it leads, when the main process died first.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        self.pidfile.unlink(missing_ok=True)
        for sock in (self.rpc_socket, self.ctl_socket):
            sock.unlink(missing_ok=True)

    def log_tail(self, lines: int = 6) -> str:
        return log_tail(self.logfile, lines)
