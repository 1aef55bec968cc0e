"""Change sets (contract section 4): exactly the Asterisk rows whose flattened row differs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg

__all__ = ["REALTIME_VIEWS", "ChangeSet", "read_change_set"]

REALTIME_VIEWS = ("ps_endpoints", "ps_aors", "ps_auths", "ps_endpoint_id_ips", "ps_registrations")
_OPS = ("changed", "created", "deleted")


@dataclass
class ChangeSet:
    ops: dict[str, dict[str, list[str]]] = field(
        default_factory=lambda: {op: {v: [] for v in REALTIME_VIEWS} for op in _OPS}
    )

    def add(self, op: str, view: str, object_id: str) -> None:
        self.ops[op].setdefault(view, []).append(object_id)

    def __len__(self) -> int:
        return sum(len(ids) for by_view in self.ops.values() for ids in by_view.values())

    def to_json(self) -> dict[str, Any]:
        return {op: {v: sorted(ids) for v, ids in by_view.items()} for op, by_view in self.ops.items()}

    def summary(self) -> str:
        parts = []
        for op in _OPS:
            n = sum(len(ids) for ids in self.ops[op].values())
            if n:
                parts.append(f"{n} {op}")
        return ", ".join(parts) if parts else "no change"


async def read_change_set(conn: asyncpg.Connection) -> ChangeSet:
    """The rows the current transaction's flush wrote to the outbox."""
    cs = ChangeSet()
    rows = await conn.fetch("SELECT op, view, object_id FROM pbx.own_change_set()")
    for r in rows:
        cs.add(r["op"], r["view"], r["object_id"])
    return cs
