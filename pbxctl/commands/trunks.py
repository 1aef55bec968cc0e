"""`pbxctl trunks status`: per trunk endpoint and node, its outbound registration and static contacts.

The database says which endpoints are trunks' and what they should do (register, static contacts);
only each node knows how that went, so every node is asked over AMI. A node that cannot be asked is
shown as such; only an unreachable database fails the command (exit 3).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from pbxctl.commands._db import add_dsn_argument, run_with_connection
from sorcery_backend.ami import AmiDisconnected, AmiError, AmiSession, AmiUnreachable
from sorcery_backend.nodes import Node, list_nodes
from sorcery_backend.pusher import _command_output

__all__ = ["NodeView", "TrunkEndpoint", "register", "report"]

AMI_TIMEOUT_S = 5.0
# A row of `pjsip show registrations`: "<id>/<server uri>  <auth>  <status>  (exp. Ns)". AMI's NextReg
# is pjsip's own refresh timer, which Asterisk does not use (always 0); the CLI's "exp." is the time
# to Asterisk's next REGISTER (a refresh, or the retry after a failure).
_CLI_NEXT = re.compile(r"^\s*([^/\s]+)/\S+.*\(exp\. (-?\d+)s\)\s*$", re.M)

_TRUNK_ENDPOINTS = """
SELECT t.name AS tenant, x.number, x.name AS trunk_name, o.name AS endpoint, o.name || '@' || t.domain AS eid,
       EXISTS (SELECT 1 FROM pbx.rt_ps_registrations r WHERE r.id = o.name || '@' || t.domain) AS registers,
       (SELECT a.contact FROM pbx.rt_ps_aors a WHERE a.id = o.name || '@' || t.domain) AS contact
FROM pbx.extensions x
JOIN pbx.tenants t ON t.id = x.tenant_id
JOIN pbx.extension_endpoints ee ON ee.tenant_id = x.tenant_id AND ee.number = x.number
JOIN pbx.objects o ON o.id = ee.endpoint_id
WHERE x.type = 'trunk'
ORDER BY t.name, x.number, ee.ordinal
"""


@dataclass(frozen=True)
class TrunkEndpoint:
    tenant: str
    extension: str
    trunk_name: str | None
    endpoint: str
    asterisk_id: str
    registers: bool
    static_contacts: tuple[str, ...]


@dataclass
class NodeView:
    """What one node said (or why it could not be asked)."""

    name: str
    error: str | None = None
    registrations: dict[str, Mapping[str, str]] = field(default_factory=dict)  # registration id -> fields
    contacts: dict[str, list[Mapping[str, str]]] = field(default_factory=dict)  # endpoint id -> contact fields


def register(subparsers: Any) -> None:
    trunks = subparsers.add_parser("trunks", help="carrier trunks")
    sub = trunks.add_subparsers(dest="trunks_command", metavar="ACTION", required=True)
    p = sub.add_parser("status", help="per trunk and node: registration state, next refresh, static contacts' qualify")
    p.add_argument("--json", action="store_true")
    add_dsn_argument(p)
    p.set_defaults(func=_status)


def _split_contacts(value: str | None) -> tuple[str, ...]:
    # ps_aors.contact holds the list comma-separated, as Asterisk reads it.
    return tuple(c.strip() for c in (value or "").split(",") if c.strip())


async def trunk_endpoints(conn: asyncpg.Connection) -> list[TrunkEndpoint]:
    return [
        TrunkEndpoint(
            r["tenant"],
            r["number"],
            r["trunk_name"],
            r["endpoint"],
            r["eid"],
            r["registers"],
            _split_contacts(r["contact"]),
        )
        for r in await conn.fetch(_TRUNK_ENDPOINTS)
    ]


async def ask_node(node: Node, endpoints: Sequence[TrunkEndpoint], timeout: float = AMI_TIMEOUT_S) -> NodeView:
    view = NodeView(node.name)
    session = AmiSession(node.ami_host, node.ami_port, node.ami_user, node.ami_secret)
    try:
        await session.connect(timeout)
        if any(e.registers for e in endpoints):
            events = await session.send_list({"Action": "PJSIPShowRegistrationsOutbound"}, timeout)
            cli = await session.send({"Action": "Command", "Command": "pjsip show registrations"}, timeout)
            next_in = dict(_CLI_NEXT.findall(_command_output(cli)))
            for ev in events:
                if ev.get("Event") == "OutboundRegistrationDetail":
                    rid = str(ev.get("ObjectName"))
                    fields = {k: str(ev.get(k)) for k in ("Status", "ServerUri") if ev.get(k) is not None}
                    view.registrations[rid] = fields | ({"NextIn": next_in[rid]} if rid in next_in else {})
        for e in endpoints:
            if e.static_contacts:
                events = await session.send_list({"Action": "PJSIPShowEndpoint", "Endpoint": e.asterisk_id}, timeout)
                view.contacts[e.asterisk_id] = [ev for ev in events if ev.get("Event") == "ContactStatusDetail"]
    except (AmiUnreachable, AmiDisconnected, AmiError) as exc:
        view.error = str(exc) if not isinstance(exc, AmiError) else f"{exc.action}: {exc.message}"
    finally:
        session.close()
    return view


def _int(value: object) -> int | None:
    if value is None:
        return None
    try:
        return int(str(value))
    except ValueError:
        return None


def _registration(fields: Mapping[str, str] | None) -> dict[str, Any] | None:
    if fields is None:
        return {"status": "absent"}  # the database has it, the node has not loaded it
    return {
        "status": fields.get("Status"),
        "next_refresh_s": _int(fields.get("NextIn")),
        # Asterisk 22 keeps the last response code to itself (neither AMI nor CLI shows it).
        "last_response": None,
        "server_uri": fields.get("ServerUri"),
    }


def _contact(fields: Mapping[str, str]) -> dict[str, Any]:
    rtt_us = _int(fields.get("RoundtripUsec"))
    return {
        "uri": fields.get("URI"),
        "status": fields.get("Status"),
        "rtt_ms": round(rtt_us / 1000, 3) if rtt_us else None,
    }


def report(endpoints: Sequence[TrunkEndpoint], views: Sequence[NodeView]) -> dict[str, Any]:
    """The JSON document: trunks -> endpoints -> nodes."""
    trunks: dict[tuple[str, str], dict[str, Any]] = {}
    for e in endpoints:
        trunk = trunks.setdefault(
            (e.tenant, e.extension),
            {"tenant": e.tenant, "extension": e.extension, "name": e.trunk_name, "endpoints": []},
        )
        per_node = []
        for v in views:
            entry: dict[str, Any] = {"node": v.name, "reachable": v.error is None}
            if v.error is not None:
                entry["error"] = v.error
            else:
                entry["registration"] = _registration(v.registrations.get(e.asterisk_id)) if e.registers else None
                static = [c for c in v.contacts.get(e.asterisk_id, []) if c.get("URI") in e.static_contacts]
                entry["contacts"] = [_contact(c) for c in static]
            per_node.append(entry)
        trunk["endpoints"].append(
            {
                "endpoint": e.endpoint,
                "id": e.asterisk_id,
                "registers": e.registers,
                "static_contacts": list(e.static_contacts),
                "nodes": per_node,
            }
        )
    return {"trunks": list(trunks.values())}


def _text(doc: Mapping[str, Any]) -> list[str]:
    lines = ["tenant/trunk\tendpoint\tnode\tregistration\tnext_refresh_s\tcontacts"]
    for t in doc["trunks"]:
        for e in t["endpoints"]:
            for n in e["nodes"]:
                head = f"{t['tenant']}/{t['extension']}\t{e['endpoint']}\t{n['node']}"
                if not n["reachable"]:
                    lines.append(f"{head}\tunreachable: {n['error']}\t-\t-")
                    continue
                reg = n["registration"]
                state = reg["status"] if reg else "-"
                nxt = reg.get("next_refresh_s") if reg else None
                contacts = ", ".join(
                    f"{c['uri']} {c['status']}" + (f" {c['rtt_ms']}ms" if c["rtt_ms"] is not None else "")
                    for c in n["contacts"]
                )
                lines.append(f"{head}\t{state}\t{nxt if nxt is not None else '-'}\t{contacts or '-'}")
    return lines


def _status(args: argparse.Namespace) -> int:
    async def body(conn: asyncpg.Connection) -> dict[str, Any]:
        endpoints = await trunk_endpoints(conn)
        nodes = await list_nodes(conn)
        views = await asyncio.gather(*(ask_node(n, endpoints) for n in nodes)) if endpoints else []
        return report(endpoints, views)

    doc = run_with_connection(args, body)
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        print("\n".join(_text(doc)))
    return 0
