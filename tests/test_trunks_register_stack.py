"""A trunk registering out on the real stack (a sipp registrar that challenges), `pbxctl trunks status`,
and a password change through `apply` re-registering with the new credentials. Waits poll Asterisk or
the registrar's message trace with a timeout, never a fixed sleep."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from stack import apply_yaml, pbxctl, wait_for

from devstack import sipp
from devstack.stack import Stack
from pbx_base import resources
from pbxctl.commands.trunks import NodeView, TrunkEndpoint, report
from sorcery_backend.ami import AmiSession

REALM = "carrier.test"
_PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^,\s]+))')


def config(registrar: sipp.SippProcess, password: str, static_port: int) -> str:
    server = f"sip:{registrar.ip}:{registrar.port}"
    return f"""
    tenants:
      rg:
        domain: rg.example
        templates:
          carrier:
            transport: transport-udp
            endpoint: {{allow: "!all,ulaw", context: pbx-dial-test}}
        endpoints:
          carrier:
            templates: [carrier]
            registration: {{server_uri: "{server}", client_uri: "sip:user@{registrar.ip}:{registrar.port}",
                            retry_interval: 5, expiration: 3600}}
            outbound_auth: {{username: user, password: {password}}}
          dialout:
            templates: [carrier]
            outbound_auth: {{username: d, password: {password}}}
          static:
            templates: [carrier]
            aor: {{contact: ["sip:127.0.0.3:{static_port}"], qualify_frequency: 0}}
        extensions:
          "0": {{type: trunk, name: Carrier, endpoints: [carrier, dialout, static]}}
    """


async def outbound_registrations(stack: Stack) -> dict[str, str]:
    s = stack.settings
    session = AmiSession("127.0.0.1", s.ami_port, s.ami_user, s.ami_password)
    await session.connect()
    try:
        events = await session.send_list({"Action": "PJSIPShowRegistrationsOutbound"})
    finally:
        session.close()
    return {str(e["ObjectName"]): str(e["Status"]) for e in events if e.get("Event") == "OutboundRegistrationDetail"}


def push_status(stack: Stack) -> dict[str, Any]:
    p = pbxctl(stack, "push", "status", "--json")
    assert p.returncode == 0, p.stderr
    (node,) = [n for n in json.loads(p.stdout)["nodes"] if n["name"] == stack.settings.name]
    return dict(node)


def digest_params(header: str) -> dict[str, str]:
    return {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3) for m in _PARAM.finditer(header)}


def digest_matches(header: str, method: str, username: str, password: str) -> bool:
    """An RFC 2617 digest without qop (the registrar offers none): md5(HA1:nonce:HA2)."""
    p = digest_params(header)

    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    ha1 = md5(f"{username}:{p.get('realm')}:{password}")
    ha2 = md5(f"{method}:{p.get('uri')}")
    return p.get("username") == username and p.get("response") == md5(f"{ha1}:{p.get('nonce')}:{ha2}")


def authorized_registers(registrar: sipp.SippProcess) -> list[str]:
    return [
        m.headers["authorization"]
        for m in registrar.messages()
        if m.direction == "received" and m.first_line.startswith("REGISTER ") and "authorization" in m.headers
    ]


@pytest.mark.stack
def test_trunk_registers_shows_in_status_and_a_new_password_reregisters(stack: Stack, tmp_path: Path) -> None:
    (tmp_path / "registrar").mkdir()
    registrar = sipp.SippProcess("registrar", sipp.free_udp_port(), tmp_path / "registrar", ip="127.0.0.2")
    xml = resources.sipp_scenario("registrar_digest.xml").read_text()
    registrar.start(stack.settings.sip_addr, xml, ["-"], 300, calls=20)
    eid = "carrier@rg.example"
    try:
        apply_yaml(stack, config(registrar, "pw1", sipp.free_udp_port()), tmp_path)
        try:
            wait_for(f"{eid} Registered", lambda: asyncio.run(outbound_registrations(stack)).get(eid) == "Registered")
        except AssertionError as exc:
            seen = [m.first_line for m in registrar.messages()]
            shown = stack.asterisk.rx("pjsip show registrations")
            raise AssertionError(f"{exc}; registrar saw {seen}, {registrar.stderr()[-300:]}; node: {shown}") from None
        first = authorized_registers(registrar)
        assert first and all(digest_matches(h, "REGISTER", "user", "pw1") for h in first)

        p = pbxctl(stack, "trunks", "status", "--json")
        assert p.returncode == 0, p.stderr
        (trunk,) = [t for t in json.loads(p.stdout)["trunks"] if t["tenant"] == "rg"]
        assert (trunk["extension"], trunk["name"]) == ("0", "Carrier")
        carrier, _dialout, static = trunk["endpoints"]
        (node,) = carrier["nodes"]
        assert node["reachable"] and node["registration"]["status"] == "Registered"
        assert 3000 < node["registration"]["next_refresh_s"] <= 3600
        assert node["contacts"] == []
        (snode,) = static["nodes"]
        assert static["registers"] is False and snode["registration"] is None
        (contact,) = snode["contacts"]
        assert contact["uri"] == static["static_contacts"][0] and contact["status"]
        text = pbxctl(stack, "trunks", "status")
        assert text.returncode == 0 and "rg/0\tcarrier" in text.stdout and "Registered" in text.stdout

        seen = len(first)
        apply_yaml(stack, config(registrar, "pw2", sipp.free_udp_port()), tmp_path)
        # Well before the refresh (an hour away): the push itself re-registers.
        wait_for(
            "a REGISTER authorized with the new password",
            lambda: any(digest_matches(h, "REGISTER", "user", "pw2") for h in authorized_registers(registrar)[seen:]),
            timeout=20,
        )
        wait_for(f"{eid} Registered again", lambda: asyncio.run(outbound_registrations(stack)).get(eid) == "Registered")
        # The outbound auth of an endpoint that does not register changed too: nothing to re-register,
        # and not a refusal either.
        wait_for("every change delivered", lambda: push_status(stack)["undelivered"] == 0)
        assert not [o for o in push_status(stack)["refused"] if o.startswith("dialout@")]
    finally:
        registrar.stop()


@pytest.mark.stack
def test_a_node_that_cannot_be_asked_is_shown_unreachable(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = sipp.free_udp_port()  # nothing listens on TCP there
    monkeypatch.setenv("PBX_AMI_PASSWORD", "nope")
    apply_yaml(
        stack,
        """
        tenants:
          rgu:
            domain: rgu.example
            endpoints:
              carrier: {transport: transport-udp, aor: {contact: ["sip:127.0.0.3:5070"]}}
            extensions:
              "0": {type: trunk, name: Carrier, endpoints: [carrier]}
        """,
        tmp_path,
    )
    try:
        p = pbxctl(stack, "nodes", "add", "ghost", "--ami", f"127.0.0.1:{port}", "--user", "x")
        assert p.returncode == 0, p.stderr
        p = pbxctl(stack, "trunks", "status", "--json")
        assert p.returncode == 0, p.stderr
        (trunk,) = [t for t in json.loads(p.stdout)["trunks"] if t["tenant"] == "rgu"]
        nodes = {n["node"]: n for n in trunk["endpoints"][0]["nodes"]}
        assert nodes["ghost"]["reachable"] is False and nodes["ghost"]["error"]
        assert nodes[stack.settings.name]["reachable"] is True
        assert "unreachable" in pbxctl(stack, "trunks", "status").stdout
    finally:
        pbxctl(stack, "nodes", "remove", "ghost")


def test_status_json_shape() -> None:
    endpoints = [
        TrunkEndpoint("t", "0", "Carrier", "carrier", "carrier@t.example", True, ()),
        TrunkEndpoint("t", "0", "Carrier", "backup", "backup@t.example", False, ("sip:127.0.0.4:5070",)),
    ]
    up = NodeView(
        "n1",
        registrations={"carrier@t.example": {"Status": "Registered", "NextIn": "55", "ServerUri": "sip:c"}},
        contacts={
            "backup@t.example": [
                {"URI": "sip:127.0.0.4:5070", "Status": "Reachable", "RoundtripUsec": "1500"},
                {"URI": "sip:dynamic@127.0.0.9", "Status": "Reachable", "RoundtripUsec": "0"},
            ]
        },
    )
    down = NodeView("n2", error="AMI 127.0.0.1:1: refused")
    assert report(endpoints, [up, down]) == {
        "trunks": [
            {
                "tenant": "t",
                "extension": "0",
                "name": "Carrier",
                "endpoints": [
                    {
                        "endpoint": "carrier",
                        "id": "carrier@t.example",
                        "registers": True,
                        "static_contacts": [],
                        "nodes": [
                            {
                                "node": "n1",
                                "reachable": True,
                                "registration": {
                                    "status": "Registered",
                                    "next_refresh_s": 55,
                                    "last_response": None,
                                    "server_uri": "sip:c",
                                },
                                "contacts": [],
                            },
                            {"node": "n2", "reachable": False, "error": "AMI 127.0.0.1:1: refused"},
                        ],
                    },
                    {
                        "endpoint": "backup",
                        "id": "backup@t.example",
                        "registers": False,
                        "static_contacts": ["sip:127.0.0.4:5070"],
                        "nodes": [
                            {
                                "node": "n1",
                                "reachable": True,
                                "registration": None,
                                "contacts": [{"uri": "sip:127.0.0.4:5070", "status": "Reachable", "rtt_ms": 1.5}],
                            },
                            {"node": "n2", "reachable": False, "error": "AMI 127.0.0.1:1: refused"},
                        ],
                    },
                ],
            }
        ]
    }
    # A registration the node has not loaded (yet) says so rather than vanishing.
    assert report(endpoints[:1], [NodeView("n3")])["trunks"][0]["endpoints"][0]["nodes"][0]["registration"] == {
        "status": "absent"
    }
