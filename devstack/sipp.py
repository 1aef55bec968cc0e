"""sipp (Debian's sip-tester) as phones and trunks: run a scenario, read what was exchanged.

Every run gets its own dir with the injection file and the message trace, its own reserved UDP
port (:mod:`devstack.ports`), and a hard timeout; results are read from the trace, never guessed
from timing. :class:`SippProcess` is one sipp in the background; :func:`run_scenario` runs one to
its end.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from devstack.ports import free_port
from pbx_base import resources

__all__ = [
    "Message",
    "SippError",
    "SippProcess",
    "SippResult",
    "answer",
    "call",
    "free_udp_port",
    "read_trace",
    "register",
    "reject_busy",
    "run_scenario",
    "status_code",
    "unregister_all",
]

_HEADER = re.compile(r"^-{5,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\n\w+ message (sent|received)[^\n]*\n\n", re.M)
_STATUS = re.compile(r"SIP/2\.0 (\d{3})")
_IN_USE = "Address already in use"
_BIND_WAIT_S = 5.0
_START_ATTEMPTS = 3


class SippError(OSError):
    """sipp cannot run here (not installed, its port taken); one line."""


@dataclass(frozen=True)
class Message:
    at: float  # epoch seconds
    direction: str  # sent | received
    first_line: str
    headers: Mapping[str, str]  # the first value of each header, names in lower case
    body: str = ""  # after the blank line (a NOTIFY's sipfrag, an SDP)


def read_trace(text: str) -> list[Message]:
    """The messages of a sipp ``-trace_msg`` file, in order."""
    out = []
    heads = list(_HEADER.finditer(text))
    for i, m in enumerate(heads):
        body = text[m.end() : heads[i + 1].start() if i + 1 < len(heads) else len(text)]
        lines = body.strip("\n").splitlines()
        if not lines:
            continue
        headers: dict[str, str] = {}
        end = len(lines)
        for n, line in enumerate(lines[1:], start=1):
            if not line.strip():
                end = n
                break
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), value.strip())
        at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
        out.append(Message(at, m.group(2), lines[0], headers, "\n".join(lines[end + 1 :]).strip()))
    return out


def status_code(first_line: str) -> int | None:
    """The status of a SIP response's first line; None for a request."""
    match = _STATUS.match(first_line)
    return int(match.group(1)) if match else None


def free_udp_port() -> int:
    """A UDP port for a sipp, reserved machine-wide."""
    return free_port("udp")


def _udp_inodes(port: int) -> set[str]:
    inodes = set()
    with open("/proc/net/udp") as fh:
        next(fh)
        for line in fh:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def _owns_socket(pid: int, inodes: set[str]) -> bool:
    wanted = {f"socket:[{inode}]" for inode in inodes}
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if str(fd.readlink()) in wanted:
                return True
        except OSError:
            continue
    return False


@dataclass
class SippProcess:
    """One sipp process (a device or a caller) in its own dir; its message trace is the record.

    ``movable``: the port may change when it turns out taken at start (a caller; not a device that
    registered from its port)."""

    name: str
    port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None
    movable: bool = False
    ip: str = "127.0.0.1"  # the loopback address it binds (a carrier's: 127.0.0.2 and so on)

    @property
    def trace_path(self) -> Path:
        return self.dir / "messages.log"

    @property
    def stderr_path(self) -> Path:
        return self.dir / "stderr.log"

    def start(
        self,
        sip_addr: str,
        xml: str,
        row: Sequence[str],
        timeout_s: float,
        *,
        calls: int = 1,
        extra: Sequence[str] = (),
    ) -> None:
        """``calls``: how many calls this process serves before it exits (a phone: one per play).
        Returns once sipp has bound its port (or ended); a port found taken is retried elsewhere
        when ``movable``."""
        if shutil.which("sipp") is None:
            raise SippError("sipp is not installed: apt-get install sip-tester")
        (self.dir / "scenario.xml").write_text(xml)
        (self.dir / "rows.csv").write_text("SEQUENTIAL\n" + ";".join(row) + "\n")
        for _ in range(_START_ATTEMPTS):
            if self._spawn(sip_addr, timeout_s, calls, extra):
                return
            if not self.movable:
                raise SippError(f"sipp {self.name}: UDP port {self.port} on {self.ip} is taken")
            self.port = free_udp_port()
        raise SippError(f"sipp {self.name}: no UDP port it could bind in {_START_ATTEMPTS} attempts")

    def _spawn(self, sip_addr: str, timeout_s: float, calls: int, extra: Sequence[str]) -> bool:
        """Start sipp; False when it could not bind its port."""
        argv = [
            "sipp", sip_addr, "-sf", "scenario.xml", "-inf", "rows.csv", "-m", str(calls), "-l", str(min(calls, 2000)),
            "-i", self.ip, "-p", str(self.port), "-t", "u1", "-nostdin",
            "-timeout", f"{int(timeout_s)}s", "-trace_msg", "-message_file", "messages.log",
            "-trace_err", "-error_file", "errors.log", *extra,
        ]  # fmt: skip
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                argv, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
            )
        deadline = time.monotonic() + _BIND_WAIT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return _IN_USE not in self.stderr()
            if _owns_socket(self.proc.pid, _udp_inodes(self.port)):
                return True
            time.sleep(0.01)
        return True  # still starting: its own timeout and trace tell the rest

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def messages(self) -> list[Message]:
        return read_trace(self.trace_path.read_text(errors="replace")) if self.trace_path.exists() else []

    def got(self, method: str) -> bool:
        return any(m.direction == "received" and m.first_line.startswith(method + " ") for m in self.messages())

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass
class SippResult:
    returncode: int
    received: list[str] = field(default_factory=list)  # first lines of received messages
    sent: list[str] = field(default_factory=list)
    trace: str = ""
    stderr: str = ""

    @property
    def responses(self) -> list[int]:
        return [code for line in self.received if (code := status_code(line)) is not None]

    @property
    def final(self) -> int | None:
        finals = [c for c in self.responses if c >= 200]
        return finals[-1] if finals else None


def run_scenario(
    sip_addr: str,
    scenario: str,
    row: Sequence[str],
    *,
    timeout: float = 30.0,
    extra: Sequence[str] = (),
    local_port: int | None = None,
) -> SippResult:
    """Run ``scenario`` (a file of devstack/sipp_scenarios) for one call to its end."""
    with tempfile.TemporaryDirectory(prefix="pbx-sipp-") as tmp:
        proc = SippProcess(scenario, local_port or free_udp_port(), Path(tmp), movable=local_port is None)
        proc.start(
            sip_addr, resources.sipp_scenario(scenario).read_text(), row, timeout, extra=["-timeout_error", *extra]
        )
        try:
            code = proc.wait(timeout + 10)
            err = proc.stderr()
        except subprocess.TimeoutExpired:
            proc.stop()
            code, err = -1, f"sipp did not end within {timeout + 10:g}s"
        trace = proc.trace_path.read_text(errors="replace") if proc.trace_path.exists() else ""
    result = SippResult(returncode=code, trace=trace, stderr=err)
    for m in read_trace(trace):
        (result.sent if m.direction == "sent" else result.received).append(m.first_line)
    return result


def _auth(user: str, password: str) -> str:
    return f"[authentication username={user} password={password}]"


def register(
    sip_addr: str,
    user: str,
    domain: str,
    password: str,
    *,
    expires: int = 3600,
    auth_user: str | None = None,
    timeout: float = 15.0,
    local_port: int | None = None,
) -> SippResult:
    """REGISTER user@domain from ``local_port`` (free when not given): the contact a UAS can serve."""
    row = [user, domain, _auth(auth_user or user, password), str(expires)]
    return run_scenario(sip_addr, "register.xml", row, timeout=timeout, local_port=local_port)


def unregister_all(
    sip_addr: str, user: str, domain: str, password: str, *, auth_user: str | None = None, timeout: float = 15.0
) -> SippResult:
    """REGISTER ``Contact: *``, ``Expires: 0``: the node drops every contact of user@domain, from its
    astdb contact cache and from ps_contacts alike (deleting the rows alone would leave the cache)."""
    row = [user, domain, _auth(auth_user or user, password)]
    return run_scenario(sip_addr, "unregister_all.xml", row, timeout=timeout)


def call(
    sip_addr: str,
    user: str,
    domain: str,
    password: str,
    number: str,
    *,
    hold_s: float = 1.0,
    timeout: float = 30.0,
) -> SippResult:
    row = [user, domain, _auth(user, password), number]
    return run_scenario(sip_addr, "uac.xml", row, timeout=timeout, extra=["-d", str(int(hold_s * 1000))])


def answer(sip_addr: str, local_port: int, *, ring_s: float = 0.2, timeout: float = 30.0) -> SippResult:
    """Serve one incoming call on ``local_port``: ring, answer, wait for the BYE."""
    return run_scenario(
        sip_addr,
        "uas_answer.xml",
        ["-"],  # sipp wants an injection row even when the scenario reads none
        timeout=timeout,
        local_port=local_port,
        extra=["-d", str(int(ring_s * 1000))],
    )


def reject_busy(sip_addr: str, local_port: int, *, ring_s: float = 0.2, timeout: float = 30.0) -> SippResult:
    """Serve one incoming call on ``local_port``: ring, then reject it with 486 Busy Here."""
    return run_scenario(
        sip_addr,
        "uas_busy.xml",
        ["-"],
        timeout=timeout,
        local_port=local_port,
        extra=["-d", str(int(ring_s * 1000))],
    )
