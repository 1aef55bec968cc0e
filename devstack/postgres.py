"""A private PostgreSQL cluster from Debian's packages: initdb in a state dir, pg_ctl on a free port.

Never the system cluster: every cluster lives in its own directory with its own port and socket
dir, so several stacks (a demo and a test run) coexist on one machine.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from devstack.health import log_tail, wait_healthy
from devstack.ports import port_free
from pbx_base.errors import StackError

__all__ = ["PostgresCluster", "PostgresError", "find_bindir"]


class PostgresError(StackError, RuntimeError):
    """The cluster could not be created or started; the message says why in one line."""


def find_bindir() -> Path:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    if not candidates:
        raise PostgresError("PostgreSQL server binaries not found: apt-get install postgresql")
    return candidates[0].parent


# Written over initdb's when the cluster has a superuser password: nothing is trusted. A local
# user who is not the `postgres` OS user gets nowhere without a role's password.
_HBA = """\
# Written by devstack/postgres.py: no trust. The superuser authenticates with its password over TCP,
# or as the `postgres` OS user on the socket; every other role with its own password.
local   all   postgres                   peer
local   all   all                        scram-sha-256
host    all   all        127.0.0.1/32    scram-sha-256
host    all   all        ::1/128         scram-sha-256
"""


@dataclass
class PostgresCluster:
    """One private cluster. With a ``password`` (the dev stack's) nothing is trusted: the
    superuser logs in over TCP with it (:meth:`dsn` carries it). Without one (a throwaway test
    cluster), the superuser connects over TCP on 127.0.0.1 with trust auth."""

    root: Path
    port: int
    superuser: str = "postgres"
    password: str | None = None

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def sockdir(self) -> Path:
        return self.root / "run"

    @property
    def local_socket(self) -> str:
        """An abstract Unix socket (``@name``, Linux) the server also listens on: a process in the
        Asterisk chroot reaches it without any path into the host, and a statement costs less
        kernel work than over TCP loopback (each REGISTER refresh sends one)."""
        return f"@pbx-pg-{self.port}"

    def local_socket_up(self) -> bool:
        """Whether the running server listens on :attr:`local_socket` (one started by an older
        version of this module does not)."""
        name = f"{self.local_socket}/.s.PGSQL.{self.port}"
        with open("/proc/net/unix") as fh:
            return any(line.rstrip().endswith(" " + name) for line in fh)

    @property
    def logfile(self) -> Path:
        return self.root / "postgres.log"

    def dsn(self, database: str = "postgres", user: str | None = None, password: str | None = None) -> str:
        auth = user or self.superuser
        if user is None and password is None:
            password = self.password
        if password:
            auth += f":{password}"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    # The server refuses to run as root: everything runs as the `postgres` OS user.
    def _as_postgres(self, argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload,no-any-return]

    def _chown(self, *paths: Path) -> None:
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            for p in paths or (self.root, self.sockdir):
                os.chown(p, pw.pw_uid, pw.pw_gid)

    def initialized(self) -> bool:
        return (self.datadir / "PG_VERSION").exists()

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.sockdir.mkdir(exist_ok=True)
        self._chown()
        if self.initialized():
            return
        bindir = find_bindir()
        auth = ["-A", "trust"]
        pwfile = self.root / ".initdb-pw"
        if self.password:
            # Readable by the server's OS user for initdb only, then gone.
            fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(self.password + "\n")
            self._chown(pwfile)
            auth = ["--auth-host=scram-sha-256", "--auth-local=peer", f"--pwfile={pwfile}"]
        try:
            r = self._as_postgres(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(self.datadir),
                    *auth,
                    "-U",
                    self.superuser,
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if r.returncode != 0:
            raise PostgresError(f"initdb failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
        if self.password:
            hba = self.datadir / "pg_hba.conf"
            hba.write_text(_HBA)
            self._chown(hba)

    def running(self) -> bool:
        r = self._as_postgres([str(find_bindir() / "pg_ctl"), "status", "-D", str(self.datadir)])
        return r.returncode == 0

    def start(self, timeout: float = 30.0) -> None:
        self.init()
        if self.running():
            return
        if not port_free(self.port):
            raise PostgresError(f"port {self.port} on 127.0.0.1 is taken: cannot start Postgres there")
        opts = (
            f"-p {self.port} -k {self.sockdir},{self.local_socket} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c log_statement=none -c max_connections=200"
        )
        r = self._as_postgres(
            [
                str(find_bindir() / "pg_ctl"),
                "start",
                "-w",
                "-t",
                str(int(timeout)),
                "-D",
                str(self.datadir),
                "-l",
                str(self.logfile),
                "-o",
                opts,
            ]
        )
        if r.returncode != 0:
            raise PostgresError(f"Postgres did not start on port {self.port}: {self.log_tail()}")
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        def problem() -> str | None:
            r = subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", str(self.port)], capture_output=True)
            return None if r.returncode == 0 else "not accepting connections"

        wait_healthy(f"Postgres on port {self.port}", problem, timeout, log=self.logfile, error=PostgresError)

    def stop(self) -> None:
        if self.initialized() and self.running():
            self._as_postgres([str(find_bindir() / "pg_ctl"), "stop", "-m", "fast", "-w", "-D", str(self.datadir)])

    def psql(self, sql: str, database: str = "postgres") -> str:
        # The password goes by environment: a command line is readable by every local user.
        env = dict(os.environ, PGPASSWORD=self.password) if self.password else None
        r = subprocess.run(
            ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-Atq", self.dsn(database, password=""), "-c", sql],
            capture_output=True,
            text=True,
            check=False,
            env=env,
        )
        if r.returncode != 0:
            raise PostgresError(f"psql failed: {r.stderr.strip()}")
        return r.stdout

    def create_database(self, name: str, owner: str | None = None) -> None:
        exists = self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'").strip()
        if not exists:
            self.psql(f'CREATE DATABASE "{name}"' + (f' OWNER "{owner}"' if owner else ""))

    def log_tail(self, lines: int = 5) -> str:
        return log_tail(self.logfile, lines)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
