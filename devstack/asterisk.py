"""One Asterisk process of a stack, inside the shared chroot, with its own dirs and -C file (a
cluster stack has several: devstack/settings.py StackSettings.nodes)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from devstack.health import log_tail, wait_gone, wait_healthy
from devstack.ports import port_free
from devstack.settings import StackSettings
from pbx_base import resources
from pbx_base.errors import StackError
from sorcery_backend.ami import AmiSession, AmiUnreachable

__all__ = ["AsteriskError", "AsteriskNode"]

# Included by the rendered extensions.conf: test contexts a production node must not have.
DEV_DIALPLAN = "extensions_dev.conf"


PORT_WAIT_S = 15.0


class AsteriskError(StackError, RuntimeError):
    """Asterisk did not start or answer; the message says what, with the log tail."""


class AsteriskNode:
    def __init__(self, chroot: Path, settings: StackSettings) -> None:
        self.chroot = chroot
        self.settings = settings
        self.inner_dir = f"/stacks/{settings.name}"  # as Asterisk sees it
        self.dir = chroot / "stacks" / settings.name

    @property
    def conf(self) -> str:
        return f"{self.inner_dir}/etc/asterisk.conf"

    @property
    def logfile(self) -> Path:
        return self.dir / "log" / "console.log"

    @property
    def pidfile(self) -> Path:
        return self.dir / "run" / "asterisk.pid"

    def render(self, db_host: str = "127.0.0.1") -> None:
        s = self.settings
        values = s.model_dump() | {"stack_dir": self.inner_dir, "db_host": db_host, "db_port": s.pg_port}
        for sub in ("etc", "lib", "spool", "run", "log"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        etc = self.dir / "etc"
        for src in sorted(resources.asterisk_conf_dir().iterdir(), key=lambda t: t.name):
            if src.name.endswith(".conf"):
                (etc / src.name).write_text(src.read_text().format(**values))
        dev = resources.dev_asterisk_conf_dir() / DEV_DIALPLAN
        (etc / DEV_DIALPLAN).write_text(dev.read_text().format(**values))
        with open(etc / "extensions.conf", "a") as fh:
            fh.write(f"\n#include {DEV_DIALPLAN}\n")
        packaged = self.chroot / "etc" / "asterisk" / "indications.conf"
        if packaged.exists():  # ringback tones per country, as the package ships them
            shutil.copy(packaged, self.dir / "etc" / "indications.conf")

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except OSError:
            return None
        return pid

    def running(self) -> bool:
        return self.pid() is not None

    def start(self, timeout: float = 60.0) -> None:
        if self.running():
            return
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        for port, kind in ((self.settings.http_port, "ARI/HTTP"), (self.settings.ami_port, "AMI")):
            # A node stopped just before may still hold its ports for a moment (a restart).
            deadline = time.monotonic() + PORT_WAIT_S
            while not port_free(port, host=self.settings.host):
                if time.monotonic() > deadline:
                    raise AsteriskError(f"port {port} ({kind}) on {self.settings.host} is taken: cannot start Asterisk")
                time.sleep(0.1)
        with open(self.logfile, "ab") as log:
            proc = subprocess.Popen(
                ["chroot", str(self.chroot), "/usr/sbin/asterisk", "-f", "-n", "-C", self.conf],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # unixODBC's driver and DSN files, per node (devstack/odbc.py; unused unless loaded).
                env=os.environ | {"ODBCSYSINI": f"{self.inner_dir}/etc"},
            )
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        self.pidfile.write_text(str(proc.pid))
        self.wait_healthy(timeout, proc)

    def wait_healthy(self, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
        def ended() -> str | None:
            return None if proc is None or proc.poll() is None else f"exited with {proc.returncode}"

        wait_healthy(
            "Asterisk", self._health_problem, timeout, log=self.logfile, error=AsteriskError, ended=ended, interval=0.2
        )

    def _health_problem(self) -> str | None:
        s = self.settings
        req = urllib.request.Request(f"{s.ari_url}/ari/asterisk/info", headers={"Authorization": _basic(s)})
        try:
            with urllib.request.urlopen(req, timeout=2) as resp:
                if resp.status != 200:
                    return f"ARI answered {resp.status}"
        except (urllib.error.URLError, OSError) as exc:
            return f"ARI: {exc}"
        return asyncio.run(_ami_problem(s))

    def rx(self, command: str, timeout: float = 30.0) -> str:
        r = subprocess.run(
            ["chroot", str(self.chroot), "/usr/sbin/asterisk", "-C", self.conf, "-rx", command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if r.returncode != 0:
            raise AsteriskError(f"asterisk -rx {command!r} failed: {(r.stderr or r.stdout).strip()}")
        return r.stdout

    def stop(self, timeout: float = 20.0) -> None:
        pid = self.pid()
        if pid is None:
            return
        try:
            self.rx("core stop now", timeout=10)
        except (AsteriskError, subprocess.TimeoutExpired):
            pass
        wait_gone(pid, self.running, timeout)
        self.pidfile.unlink(missing_ok=True)

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL, as a crash would end it (no BYE, no unregister, nothing flushed); ``start``
        brings it back."""
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGKILL)
        # Started by this process, it stays a zombie (and pid() alive) until reaped.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        wait_gone(pid, self.running, timeout)
        self.pidfile.unlink(missing_ok=True)

    def log_tail(self, lines: int = 6) -> str:
        return log_tail(self.logfile, lines)


async def _ami_problem(s: StackSettings) -> str | None:
    session = AmiSession(s.host, s.ami_port, s.ami_user, s.ami_password)
    try:
        await session.connect(timeout=2)
    except AmiUnreachable as exc:
        return str(exc)
    session.close("health check done")
    return None


def _basic(s: StackSettings) -> str:
    return "Basic " + base64.b64encode(f"{s.ari_user}:{s.ari_password}".encode()).decode()
