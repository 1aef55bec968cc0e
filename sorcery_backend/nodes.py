"""Asterisk nodes (rows of pbx.nodes) and their push status, for `pbxctl nodes` / `pbxctl push`."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from pbx_base.errors import InvalidInput

__all__ = [
    "NODES_CHANNEL",
    "Node",
    "NodeRefused",
    "NodeStatus",
    "add_node",
    "list_nodes",
    "parse_ami_addr",
    "parse_ari_addr",
    "parse_sip_addr",
    "push_status",
    "remove_node",
]

NODES_CHANNEL = "pbx_nodes"  # notified with the node's name when it is added, changed or removed
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_SIP_HOST_BAD = re.compile(r"[\s;<>@]")  # as sql/021's node_sip_host_nonempty: it goes into a SIP URI
_ARI_HOST_BAD = re.compile(r"[\s/?#@]")  # as sql/025's node_ari_host_nonempty: it goes into an http:// URL


class NodeRefused(InvalidInput, ValueError):
    """Refused input; the message names the node and the rule."""


@dataclass(frozen=True)
class Node:
    id: int
    name: str
    ami_host: str
    ami_port: int
    ami_user: str
    ami_secret: str
    # Where the cluster's SIP edge sends requests for this node; None: the edge does not use it.
    sip_addr: str | None = None
    # Where the other nodes' controllers read this node's ARI events (in-use state); None: not watched.
    ari_addr: str | None = None

    @property
    def ami_addr(self) -> str:
        return f"{self.ami_host}:{self.ami_port}"

    def to_json(self) -> dict[str, Any]:
        # The secret never leaves the database through the CLI. sip_addr only when set: the shape
        # of a node without one is what it was before nodes had SIP addresses.
        out: dict[str, Any] = {"name": self.name, "ami_addr": self.ami_addr, "ami_user": self.ami_user}
        if self.sip_addr is not None:
            out["sip_addr"] = self.sip_addr
        if self.ari_addr is not None:
            out["ari_addr"] = self.ari_addr
        return out


@dataclass(frozen=True)
class NodeStatus:
    name: str
    ami_addr: str
    connected: bool
    undelivered: int
    lag_s: float  # age of the oldest undelivered change; 0 when nothing is undelivered
    last_delivery_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    actions_sent: int
    rows_delivered: int
    # What the node refused (object -> "Action: message"); each was counted delivered so the rest flows.
    refused: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ami_addr": self.ami_addr,
            "connected": self.connected,
            "undelivered": self.undelivered,
            "lag_s": round(self.lag_s, 3),
            "last_delivery_at": self.last_delivery_at.isoformat() if self.last_delivery_at else None,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at.isoformat() if self.last_error_at else None,
            "actions_sent": self.actions_sent,
            "rows_delivered": self.rows_delivered,
            "refused": self.refused,
        }


def _parse_addr(name: str, kind: str, addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise NodeRefused(f"node {name}: {kind} address {addr!r} must be HOST:PORT with a port from 1 to 65535")
    return host, int(port)


def parse_ami_addr(name: str, addr: str) -> tuple[str, int]:
    return _parse_addr(name, "AMI", addr)


def parse_sip_addr(name: str, addr: str) -> tuple[str, int]:
    host, port = _parse_addr(name, "SIP", addr)
    if _SIP_HOST_BAD.search(host):
        raise NodeRefused(f"node {name}: SIP address {addr!r}: the host must not contain spaces, ';', '<', '>' or '@'")
    return host, port


def parse_ari_addr(name: str, addr: str) -> tuple[str, int]:
    host, port = _parse_addr(name, "ARI", addr)
    if _ARI_HOST_BAD.search(host):
        raise NodeRefused(f"node {name}: ARI address {addr!r}: the host must not contain spaces, '/', '?', '#' or '@'")
    return host, port


async def add_node(
    conn: asyncpg.Connection,
    name: str,
    addr: str,
    user: str,
    secret: str,
    *,
    sip: str | None = None,
    ari: str | None = None,
    replace: bool = False,
) -> Node:
    """``sip``: HOST:PORT the cluster's SIP edge dispatches to (sql/021's kamailio.dispatcher).
    ``ari``: HOST:PORT of the node's ARI, which the other nodes' controllers watch (sql/025).
    ``replace``: an existing node of that name takes the new addresses and credentials instead of
    being refused (what a deployment that re-runs its setup wants)."""
    if not _NAME.match(name):
        raise NodeRefused(f"node {name}: names are [A-Za-z0-9][A-Za-z0-9_.-]*, at most 63 characters")
    host, port = parse_ami_addr(name, addr)
    sip_host, sip_port = parse_sip_addr(name, sip) if sip is not None else (None, None)
    ari_host, ari_port = parse_ari_addr(name, ari) if ari is not None else (None, None)
    if not user:
        raise NodeRefused(f"node {name}: an AMI user is required")
    async with conn.transaction():
        # Waits for every transaction that is writing the outbox and holds new ones back until this
        # one commits, so no change can commit without a pending row for the new node.
        await conn.execute("LOCK TABLE pbx.outbox IN SHARE ROW EXCLUSIVE MODE")
        if await conn.fetchval("SELECT 1 FROM pbx.nodes WHERE name = $1", name):
            if not replace:
                raise NodeRefused(f"node {name}: already exists (rule: node names are unique)")
            row = await conn.fetchrow(
                "UPDATE pbx.nodes SET ami_host = $2, ami_port = $3, ami_user = $4, ami_secret = $5, "
                "sip_host = $6, sip_port = $7, ari_host = $8, ari_port = $9 WHERE name = $1 RETURNING *",
                name,
                host,
                port,
                user,
                secret,
                sip_host,
                sip_port,
                ari_host,
                ari_port,
            )
            await conn.execute("SELECT pg_notify($1, $2)", NODES_CHANNEL, name)
            return _node(row)
        row = await conn.fetchrow(
            "INSERT INTO pbx.nodes (name, ami_host, ami_port, ami_user, ami_secret, sip_host, sip_port, ari_host, "
            "ari_port) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING *",
            name,
            host,
            port,
            user,
            secret,
            sip_host,
            sip_port,
            ari_host,
            ari_port,
        )
        await conn.execute("INSERT INTO pbx.node_state (node_id) VALUES ($1)", row["id"])
    await conn.execute("SELECT pg_notify($1, $2)", NODES_CHANNEL, name)
    return _node(row)


async def remove_node(conn: asyncpg.Connection, name: str) -> None:
    deleted = await conn.fetchval("DELETE FROM pbx.nodes WHERE name = $1 RETURNING id", name)
    if deleted is None:
        raise NodeRefused(f"node {name}: no such node")
    await conn.execute("SELECT pg_notify($1, $2)", NODES_CHANNEL, name)


async def list_nodes(conn: asyncpg.Connection) -> list[Node]:
    return [_node(r) for r in await conn.fetch("SELECT * FROM pbx.nodes ORDER BY name")]


async def push_status(conn: asyncpg.Connection) -> list[NodeStatus]:
    rows = await conn.fetch(
        """
        SELECT n.name, n.ami_host, n.ami_port, coalesce(s.connected, false) AS connected,
               p.undelivered, coalesce(extract(epoch FROM now() - p.oldest), 0)::float8 AS lag_s,
               s.last_delivery_at, s.last_error, s.last_error_at,
               coalesce(s.actions_sent, 0) AS actions_sent, coalesce(s.rows_delivered, 0) AS rows_delivered,
               (SELECT jsonb_object_agg(r.object, r.action || ': ' || r.message) FROM pbx.push_refusals r
                WHERE r.node_id = n.id) AS refused
        FROM pbx.nodes n
        LEFT JOIN pbx.node_state s ON s.node_id = n.id
        CROSS JOIN LATERAL (
            SELECT count(*) AS undelivered, min(o.created_at) AS oldest
            FROM pbx.push_pending q JOIN pbx.outbox o ON o.seq = q.seq WHERE q.node_id = n.id
        ) p
        ORDER BY n.name
        """
    )
    return [
        NodeStatus(
            name=r["name"],
            ami_addr=f"{r['ami_host']}:{r['ami_port']}",
            connected=r["connected"],
            undelivered=r["undelivered"],
            lag_s=r["lag_s"],
            last_delivery_at=r["last_delivery_at"],
            last_error=r["last_error"],
            last_error_at=r["last_error_at"],
            actions_sent=r["actions_sent"],
            rows_delivered=r["rows_delivered"],
            refused=json.loads(r["refused"]) if r["refused"] else {},
        )
        for r in rows
    ]


def _node(r: asyncpg.Record) -> Node:
    sip = f"{r['sip_host']}:{r['sip_port']}" if r["sip_host"] is not None else None
    ari = f"{r['ari_host']}:{r['ari_port']}" if r["ari_host"] is not None else None
    return Node(r["id"], r["name"], r["ami_host"], r["ami_port"], r["ami_user"], r["ami_secret"], sip, ari)
