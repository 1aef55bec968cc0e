"""sipp (Debian's sip-tester) as phones and trunks: run a scenario, read what was exchanged.

Every run gets its own temp dir with the injection file and the message trace, its own free UDP
port, and a hard timeout; results are read from the trace, never guessed from timing.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pbx_base import resources

__all__ = [
    "SippResult",
    "answer",
    "call",
    "free_udp_port",
    "register",
    "reject_busy",
    "run_scenario",
    "unregister_all",
]

_BLOCK = re.compile(r"^-{5,} .*?(sent|received).*?\n\n(.*?)(?=^-{5,} |\Z)", re.M | re.S)


@dataclass
class SippResult:
    returncode: int
    received: list[str] = field(default_factory=list)  # first lines of received messages
    sent: list[str] = field(default_factory=list)
    trace: str = ""
    stderr: str = ""

    @property
    def responses(self) -> list[int]:
        return [int(m.group(1)) for line in self.received if (m := re.match(r"SIP/2\.0 (\d{3})", line))]

    @property
    def final(self) -> int | None:
        finals = [c for c in self.responses if c >= 200]
        return finals[-1] if finals else None


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_scenario(
    sip_addr: str,
    scenario: str,
    rows: list[list[str]],
    *,
    timeout: float = 30.0,
    extra: list[str] | None = None,
    local_port: int | None = None,
) -> SippResult:
    if shutil.which("sipp") is None:
        raise RuntimeError("sipp is not installed: apt-get install sip-tester")
    with tempfile.TemporaryDirectory(prefix="pbx-sipp-") as tmp:
        inf = Path(tmp) / "rows.csv"
        inf.write_text("SEQUENTIAL\n" + "".join(";".join(r) + "\n" for r in rows))
        msg = Path(tmp) / "messages.log"
        argv = [
            "sipp",
            sip_addr,
            "-sf",
            str(resources.sipp_scenario(scenario)),
            "-inf",
            str(inf),
            "-m",
            str(len(rows)),
            "-l",
            "1",
            "-i",
            "127.0.0.1",
            "-p",
            str(local_port or _free_udp_port()),
            "-t",
            "u1",
            "-nostdin",
            "-timeout",
            f"{int(timeout)}s",
            "-timeout_error",
            "-trace_msg",
            "-message_file",
            str(msg),
            *(extra or []),
        ]
        try:
            p = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout + 10, cwd=tmp, stdin=subprocess.DEVNULL
            )
            code, err = p.returncode, p.stderr
        except subprocess.TimeoutExpired:
            code, err = -1, f"sipp did not end within {timeout + 10:g}s"
        trace = msg.read_text(errors="replace") if msg.exists() else ""
    result = SippResult(returncode=code, trace=trace, stderr=err)
    for m in _BLOCK.finditer(trace):
        first = m.group(2).strip().splitlines()[0] if m.group(2).strip() else ""
        (result.sent if m.group(1) == "sent" else result.received).append(first)
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
    return run_scenario(sip_addr, "register.xml", [row], timeout=timeout, local_port=local_port)


def unregister_all(
    sip_addr: str, user: str, domain: str, password: str, *, auth_user: str | None = None, timeout: float = 15.0
) -> SippResult:
    """REGISTER ``Contact: *``, ``Expires: 0``: the node drops every contact of user@domain, from its
    astdb contact cache and from ps_contacts alike (deleting the rows alone would leave the cache)."""
    row = [user, domain, _auth(auth_user or user, password)]
    return run_scenario(sip_addr, "unregister_all.xml", [row], timeout=timeout)


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
    return run_scenario(sip_addr, "uac.xml", [row], timeout=timeout, extra=["-d", str(int(hold_s * 1000))])


def answer(sip_addr: str, local_port: int, *, ring_s: float = 0.2, timeout: float = 30.0) -> SippResult:
    """Serve one incoming call on ``local_port``: ring, answer, wait for the BYE."""
    return run_scenario(
        sip_addr,
        "uas_answer.xml",
        [["-"]],  # sipp wants an injection row even when the scenario reads none
        timeout=timeout,
        local_port=local_port,
        extra=["-d", str(int(ring_s * 1000))],
    )


def reject_busy(sip_addr: str, local_port: int, *, ring_s: float = 0.2, timeout: float = 30.0) -> SippResult:
    """Serve one incoming call on ``local_port``: ring, then reject it with 486 Busy Here."""
    return run_scenario(
        sip_addr,
        "uas_busy.xml",
        [["-"]],
        timeout=timeout,
        local_port=local_port,
        extra=["-d", str(int(ring_s * 1000))],
    )


def free_udp_port() -> int:
    return _free_udp_port()
