"""Shared by bench/push.py and bench/register.py: a stack with N template-based endpoints in
Postgres, and a second Asterisk with the SAME N endpoints in a static pjsip.conf (the baseline)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench._common import LAB_POLICY
from devstack.asterisk import AsteriskNode
from devstack.ports import free_port
from devstack.settings import StackSettings
from devstack.stack import Stack, run_sql

__all__ = ["SippRun", "StaticNode", "apply_config", "config_yaml", "endpoint_ids", "sipp_register_load"]

SCENARIO = Path(__file__).resolve().parent / "sipp" / "register_strict.xml"


def config_yaml(tenant: str, n: int, callerid: str = "Base <0>") -> str:
    lines = [
        "tenants:",
        f"  {tenant}:",
        f"    domain: {tenant}.example",
        "    templates:",
        "      base:",
        "        transport: transport-udp",
        f'        endpoint: {{allow: "!all,ulaw", context: pbx-dial-test, callerid: "{callerid}"}}',
        '        aor: {max_contacts: 1, remove_existing: "yes"}',
        "    endpoints:",
    ]
    lines += [f'      "{100000 + i}": {{templates: [base], auth: {{password: pw{i}}}}}' for i in range(n)]
    return "\n".join(lines) + "\n"


def apply_config(stack: Stack, text: str) -> None:
    """`pbxctl apply` of a YAML text to the stack's database, as an admin would."""
    run_sql(stack, LAB_POLICY)
    with tempfile.TemporaryDirectory(prefix="pbx-bench-") as tmp:
        f = Path(tmp) / "config.yaml"
        f.write_text(text)
        env = dict(os.environ, **stack.settings.exports())
        p = subprocess.run(
            [sys.executable, "-m", "pbxctl", "apply", str(f)], capture_output=True, text=True, env=env, timeout=600
        )
    if p.returncode != 0:
        raise RuntimeError(f"pbxctl apply failed: {p.stderr.strip()}")


def endpoint_ids(tenant: str, n: int) -> list[str]:
    return [f"{100000 + i}@{tenant}.example" for i in range(n)]


class StaticNode:
    """An Asterisk of its own (ports, dirs) whose PJSIP objects all come from pjsip.conf."""

    def __init__(self, stack: Stack, tenant: str, n: int) -> None:
        s = stack.settings
        self.settings = StackSettings(
            name=f"{s.name}-static",
            pg_port=s.pg_port,
            sip_port=free_port("both"),
            http_port=free_port(),
            ami_port=free_port(),
            rtp_start=s.rtp_start,
            rtp_end=s.rtp_end,
            db_password=s.db_password,
            ari_password=s.ari_password,
            ami_password=s.ami_password,
        )
        self.node = AsteriskNode(stack.chroot, self.settings)
        self.tenant = tenant
        self.n = n

    @property
    def sip_addr(self) -> str:
        return self.settings.sip_addr

    def write_pjsip(self, callerid: str) -> None:
        t, d = self.tenant, f"{self.tenant}.example"
        out = [
            "[global]\ntype = global\nuser_agent = pbx-asterisk\nendpoint_identifier_order = username,ip,anonymous\n",
            f"[transport-udp]\ntype = transport\nprotocol = udp\nbind = 127.0.0.1:{self.settings.sip_port}\n",
            "[base](!)\ntype = endpoint\ntransport = transport-udp\nallow = !all,ulaw\ncontext = pbx-dial-test\n"
            f"callerid = {callerid}\n",
            "[aorbase](!)\ntype = aor\nmax_contacts = 1\nremove_existing = yes\n",
        ]
        for i in range(self.n):
            eid = f"{100000 + i}@{d}"
            out.append(f"[{eid}](base)\nauth = {eid}\naors = {eid}\n")
            out.append(f"[{eid}](aorbase)\n")
            out.append(f"[{eid}]\ntype = auth\nauth_type = userpass\nusername = {100000 + i}\npassword = pw{i}\n")
        del t
        (self.node.dir / "etc" / "pjsip.conf").write_text("\n".join(out))

    def start(self) -> None:
        self.node.render()
        # No realtime mapping: every PJSIP type falls back to pjsip.conf (contacts to astdb).
        (self.node.dir / "etc" / "sorcery.conf").write_text("; static baseline\n")
        self.write_pjsip("Base <0>")
        self.node.start(timeout=300)

    def reload_seconds(self, callerid: str) -> float:
        self.write_pjsip(callerid)
        t0 = time.perf_counter()
        self.node.rx("module reload res_pjsip.so", timeout=300)
        return time.perf_counter() - t0

    def destroy(self) -> None:
        self.node.stop()
        shutil.rmtree(self.node.dir, ignore_errors=True)


@dataclass
class SippRun:
    ok: int
    failed: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


def sipp_register_load(
    sip_addr: str, tenant: str, n: int, *, local_port: int, rate: int = 5000, limit: int = 100
) -> SippRun:
    """REGISTER every endpoint once (digest auth) as fast as Asterisk answers, from one local port."""
    with tempfile.TemporaryDirectory(prefix="pbx-bench-sipp-") as tmp:
        rows = Path(tmp) / "rows.csv"
        rows.write_text(
            "SEQUENTIAL\n"
            + "".join(
                f"{100000 + i};{tenant}.example;[authentication username={100000 + i} password=pw{i}];3600\n"
                for i in range(n)
            )
        )
        stats = Path(tmp) / "stats.csv"
        argv = [
            "sipp", sip_addr, "-sf", str(SCENARIO), "-inf", str(rows), "-m", str(n), "-r", str(rate),
            "-l", str(limit), "-i", "127.0.0.1", "-p", str(local_port), "-t", "u1", "-nostdin",
            "-timeout", "600s", "-trace_stat", "-stf", str(stats), "-fd", "3600",
        ]  # fmt: skip
        t0 = time.perf_counter()
        subprocess.run(argv, capture_output=True, text=True, timeout=700, cwd=tmp, check=False)
        seconds = time.perf_counter() - t0
        lines = [x for x in stats.read_text().splitlines() if x.strip()] if stats.exists() else []
    if len(lines) < 2:
        return SippRun(0, n, seconds)
    head, last = lines[0].split(";"), lines[-1].split(";")
    col = {name: i for i, name in enumerate(head)}
    return SippRun(int(last[col["SuccessfulCall(C)"]]), int(last[col["FailedCall(C)"]]), seconds)
