"""Imperative edits of one tenant: read it as a file, change the document, apply it.

So an edit passes exactly the validation of ``apply`` (the file's model, then the database's own
rules) and writes through the same converge, and its change set and audit row are apply's. The
edits themselves are small functions of the document; each refuses with one line naming the
object and the rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg

from pbx_base.errors import PbxError, UnknownTenant
from sorcery_backend.apply import apply_config
from sorcery_backend.changes import ChangeSet
from sorcery_backend.declarative import parse_config
from sorcery_backend.tenant_doc import read_tenant

__all__ = [
    "Edit",
    "EditRefused",
    "TenantDoc",
    "delete_key",
    "edit_tenant",
    "existing",
    "set_fields",
    "set_forward",
    "set_member_active",
    "set_password",
]

TenantDoc = dict[str, Any]
# None in, None out: the tenant does not exist / is to be deleted.
Edit = Callable[[TenantDoc | None], TenantDoc | None]

SECRET_OPTIONS = ("password", "md5_cred")


class EditRefused(PbxError, ValueError):
    """An edit that does not apply to the tenant as it is (unknown object, secret on a command line...)."""


class _Probe(Exception):
    """Carries the probe's answer out of the savepoint it rolls back."""


async def edit_tenant(conn: asyncpg.Connection, tenant: str, edit: Edit, *, actor: str | None = None) -> ChangeSet:
    async with conn.transaction():
        # Read-modify-write: a second edit of the same tenant waits here instead of reading the
        # document this one is about to change.
        exists = await conn.fetchval("SELECT true FROM pbx.tenants WHERE name = $1 FOR UPDATE", tenant)
        doc = await read_tenant(conn, tenant) if exists else None
        if doc is not None and await _read_back_loses_data(conn, tenant, doc):
            raise EditRefused(
                f"tenant {tenant}: holds data its document does not carry, which an edit would delete "
                "(rule: per-object commands change only the named object; use `pbxctl apply`)"
            )
        config = parse_config({"tenants": {tenant: edit(doc)}})
        return await apply_config(conn, config, actor=actor)


async def _read_back_loses_data(conn: asyncpg.Connection, tenant: str, doc: TenantDoc) -> bool:
    """Whether applying the unedited document would touch a row: the audit trail of a rolled-back
    savepoint says so for every table, including any the document does not know yet."""
    try:
        async with conn.transaction():
            await apply_config(conn, parse_config({"tenants": {tenant: doc}}))
            raise _Probe(
                await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pbx.audit WHERE xid = pg_current_xact_id())")
            )
    except _Probe as probe:
        # apply's SET CONSTRAINTS ALL IMMEDIATE ran in its own savepoint, which it released: rolling
        # back the outer one does not undo it (Postgres restores the mode only in the savepoint that
        # changed it), and the real apply must flush once, at its end. Every deferrable constraint
        # of the schema is INITIALLY DEFERRED, so this is the transaction's starting mode.
        await conn.execute("SET CONSTRAINTS ALL DEFERRED")
        return bool(probe.args[0])


def existing(doc: TenantDoc | None, tenant: str) -> TenantDoc:
    if doc is None:
        raise UnknownTenant(f"tenant {tenant}: unknown tenant")
    return doc


def set_fields(obj: dict[str, Any], assignments: list[tuple[str, Any]], label: str) -> None:
    """``section.option`` or ``field`` = value; None removes the key."""
    for key, value in assignments:
        *path, last = key.split(".")
        if last in SECRET_OPTIONS:
            raise EditRefused(
                f"{label}: {key}: secrets are not taken on the command line "
                "(rule: set passwords with `pbxctl endpoint passwd`, which reads the environment)"
            )
        node = obj
        for part in path:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise EditRefused(f"{label}: {key}: {part} is not a section (rule: keys are field or section.option)")
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value


def set_password(endpoint: dict[str, Any], password: str) -> None:
    """The auth section's password replaces whatever credential it had."""
    auth = endpoint.setdefault("auth", {})
    auth.pop("md5_cred", None)
    auth["password"] = [password]


def delete_key(group: dict[str, Any], key: str, label: str) -> None:
    if group.pop(key, None) is None:
        raise EditRefused(f"{label}: no such object (rule: only existing objects are deleted)")


def set_forward(ext: dict[str, Any], forward: dict[str, Any] | None) -> None:
    if forward is None:
        ext.pop("forward", None)
    else:
        ext["forward"] = forward


def set_member_active(ext: dict[str, Any], member: str, active: bool, label: str) -> None:
    """Pause (inactive) or resume ``member`` in every rank of the extension that lists it."""
    found = [m for rank in ext.get("ranks", []) for m in rank.get("members", []) if str(m["number"]) == member]
    if not found:
        raise EditRefused(f"{label}: {member} is not a member of any rank (rule: only members are paused or resumed)")
    for m in found:
        m["active"] = active
