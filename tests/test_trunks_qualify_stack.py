"""A static-contact trunk added through `apply` on a running stack is qualified at once (#17): the pusher
tells the node's qualifier (`pjsip reload qualify aor`), no reload. A sipp "carrier" on 127.0.0.2 answers
OPTIONS, then stops; `pbxctl trunks status` shows Reachable, then Unreachable, then, with
qualify_frequency 0, NonQualified. Waits poll with a timeout, never a fixed sleep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from stack import apply_yaml, pbxctl, wait_for
from test_trunks_register_stack import push_status

from devstack import sipp
from devstack.stack import Stack

# Each OPTIONS the node sends has its own Call-ID, so each is one sipp call: answer it and end.
OPTIONS_UAS = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="options_uas">
  <recv request="OPTIONS" crlf="true"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTagOpt[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
</scenario>
"""


def config(carrier: sipp.SippProcess, frequency: int) -> str:
    return f"""
    tenants:
      qf:
        domain: qf.example
        endpoints:
          carrier:
            transport: transport-udp
            endpoint: {{allow: "!all,ulaw", context: pbx-dial-test}}
            aor: {{contact: ["sip:{carrier.ip}:{carrier.port}"], qualify_frequency: {frequency}, qualify_timeout: 1}}
        extensions:
          "0": {{type: trunk, name: Carrier, endpoints: [carrier]}}
    """


def contact_status(stack: Stack) -> str | None:
    p = pbxctl(stack, "trunks", "status", "--json")
    assert p.returncode == 0, p.stderr
    (trunk,) = [t for t in json.loads(p.stdout)["trunks"] if t["tenant"] == "qf"]
    (endpoint,) = trunk["endpoints"]
    (node,) = [n for n in endpoint["nodes"] if n["node"] == stack.settings.name]
    statuses = [c.get("status") for c in node["contacts"]]
    return statuses[0] if statuses else None


@pytest.mark.stack
def test_a_static_contact_trunk_applied_live_is_qualified_without_a_reload(stack: Stack, tmp_path: Path) -> None:
    (tmp_path / "carrier").mkdir()
    carrier = sipp.SippProcess("carrier", sipp.free_udp_port(), tmp_path / "carrier", ip="127.0.0.2")
    carrier.start(stack.settings.sip_addr, OPTIONS_UAS, ["-"], 300, calls=10**6)
    try:
        apply_yaml(stack, config(carrier, 2), tmp_path)
        wait_for("the static contact Reachable", lambda: contact_status(stack) == "Reachable", timeout=30)
        assert carrier.got("OPTIONS")
        carrier.stop()
        wait_for("the static contact Unreachable", lambda: contact_status(stack) == "Unreachable", timeout=30)
        # Qualifying turned off by a change: the node stops asking and says so.
        apply_yaml(stack, config(carrier, 0), tmp_path)
        wait_for("the static contact NonQualified", lambda: contact_status(stack) == "NonQualified", timeout=30)
        wait_for("every change delivered", lambda: push_status(stack)["undelivered"] == 0)
        assert not [o for o in push_status(stack)["refused"] if "qf.example" in o]
    finally:
        carrier.stop()
