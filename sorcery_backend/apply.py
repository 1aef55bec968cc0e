"""Converge the database to a declarative file, in one transaction.

Only objects whose stored definition differs from the file are rewritten, so the flush at the end
re-resolves exactly what the edit can affect; the change set is then read back from the outbox
that the flush filled. ``plan`` is the same run rolled back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import asyncpg

from pbx_base.errors import InvalidInput
from sorcery_backend.changes import ChangeSet, read_change_set
from sorcery_backend.declarative import Config, DidRule, Extension, PjsipObject, Tenant, TenantSettings

__all__ = ["apply_config"]

ObjKey = tuple[str, str]  # (kind, name)


class _Rollback(Exception):
    """Raised to abandon a plan's transaction after reading its change set."""


@dataclass
class _StoredObject:
    id: int
    transport: str | None
    parents: list[str]
    options: dict[str, dict[str, list[str]]]


async def apply_config(
    conn: asyncpg.Connection, config: Config, *, dry_run: bool = False, actor: str | None = None
) -> ChangeSet:
    """Apply ``config``; with ``dry_run`` compute the same change set and roll everything back.
    ``actor`` (``pbxctl:<user>``, ``token:<name>``) is who the audit trail records beside the role."""
    result = ChangeSet()
    try:
        async with conn.transaction():
            if actor is not None:
                await conn.execute("SELECT set_config('pbx.actor', $1, true)", actor)
            for name in sorted(config.tenants):
                tenant = config.tenants[name]
                if tenant is None:
                    await conn.execute("DELETE FROM pbx.tenants WHERE name = $1", name)
                else:
                    await _converge_tenant(conn, name, tenant)
            await conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
            result = await read_change_set(conn)
            if dry_run:
                raise _Rollback
    except _Rollback:
        pass
    return result


async def _converge_tenant(conn: asyncpg.Connection, name: str, tenant: Tenant) -> None:
    # A tenant that exists is read and updated, never upserted: a tenant admin may change its own
    # tenants but not create one (no INSERT on pbx.tenants), and an upsert needs INSERT.
    row = await conn.fetchrow("SELECT id, domain FROM pbx.tenants WHERE name = $1", name)
    if row is None:
        try:
            tenant_id = await conn.fetchval(
                """
                INSERT INTO pbx.tenants (name, domain) VALUES ($1, $2)
                ON CONFLICT (name) DO UPDATE SET domain = EXCLUDED.domain
                RETURNING id
                """,
                name,
                tenant.domain,
            )
        except asyncpg.InsufficientPrivilegeError:
            # Row security hid it, or it does not exist: to this role both are "not yours".
            raise InvalidInput(
                f"tenant {name}: not one of this role's tenants (rule: a tenant admin changes only the "
                "tenants granted to it; creating tenants is the operator's)"
            ) from None
    else:
        tenant_id = row["id"]
        if row["domain"] != tenant.domain:
            await conn.execute("UPDATE pbx.tenants SET domain = $2 WHERE id = $1", tenant_id, tenant.domain)
    await _converge_settings(conn, tenant_id, tenant.settings or TenantSettings())
    await _converge_objects(conn, tenant_id, tenant)
    await _converge_extensions(conn, tenant_id, tenant)
    await _delete_unwanted_objects(conn, tenant_id, tenant)


def _desired_objects(tenant: Tenant) -> dict[ObjKey, PjsipObject]:
    out: dict[ObjKey, PjsipObject] = {("template", n): o for n, o in tenant.templates.items()}
    out.update({("endpoint", n): o for n, o in tenant.endpoints.items()})
    return out


async def _stored_objects(conn: asyncpg.Connection, tenant_id: int) -> dict[ObjKey, _StoredObject]:
    rows = await conn.fetch(
        """
        SELECT o.id, o.kind, o.name, o.transport,
               coalesce((SELECT array_agg(p.name ORDER BY l.ordinal) FROM pbx.object_parents l
                         JOIN pbx.objects p ON p.id = l.parent_id WHERE l.object_id = o.id), '{}') AS parents,
               coalesce((SELECT jsonb_agg(jsonb_build_array(x.section, x.option, x.value))
                         FROM pbx.object_options x WHERE x.object_id = o.id), '[]') AS options
        FROM pbx.objects o WHERE o.tenant_id = $1
        """,
        tenant_id,
    )
    stored = {}
    for r in rows:
        options: dict[str, dict[str, list[str]]] = {}
        for section, option, value in json.loads(r["options"]):
            options.setdefault(section, {})[option] = value
        stored[(r["kind"], r["name"])] = _StoredObject(r["id"], r["transport"], list(r["parents"]), options)
    return stored


def _parents_of(key: ObjKey, obj: PjsipObject) -> list[str]:
    return obj.parents if key[0] == "template" else obj.templates


async def _converge_objects(conn: asyncpg.Connection, tenant_id: int, tenant: Tenant) -> None:
    desired = _desired_objects(tenant)
    stored = await _stored_objects(conn, tenant_id)

    missing = [k for k in desired if k not in stored]
    if missing:
        rows = await conn.fetch(
            """
            INSERT INTO pbx.objects (tenant_id, kind, name, transport)
            SELECT $1, k, n, t FROM unnest($2::text[], $3::text[], $4::text[]) AS x(k, n, t)
            RETURNING id, kind, name
            """,
            tenant_id,
            [k[0] for k in missing],
            [k[1] for k in missing],
            [desired[k].transport for k in missing],
        )
        for r in rows:
            stored[(r["kind"], r["name"])] = _StoredObject(r["id"], desired[(r["kind"], r["name"])].transport, [], {})

    retransport = [(stored[k].id, o.transport) for k, o in desired.items() if stored[k].transport != o.transport]
    if retransport:
        await conn.execute(
            "UPDATE pbx.objects o SET transport = x.t "
            "FROM unnest($1::bigint[], $2::text[]) AS x(id, t) WHERE o.id = x.id",
            [i for i, _ in retransport],
            [t for _, t in retransport],
        )

    template_ids = {n: stored[("template", n)].id for n in tenant.templates}
    relinked = [k for k, o in desired.items() if stored[k].parents != _parents_of(k, o)]
    if relinked:
        # All old links go before any new one is added, so a reordering never looks like a cycle.
        await conn.execute(
            "DELETE FROM pbx.object_parents WHERE object_id = ANY($1::bigint[])", [stored[k].id for k in relinked]
        )
        links = [(stored[k].id, i, template_ids[p]) for k in relinked for i, p in enumerate(_parents_of(k, desired[k]))]
        if links:
            await conn.execute(
                """
                INSERT INTO pbx.object_parents (tenant_id, object_id, ordinal, parent_id)
                SELECT $1, o, i, p FROM unnest($2::bigint[], $3::int[], $4::bigint[]) AS x(o, i, p)
                """,
                tenant_id,
                [x[0] for x in links],
                [x[1] for x in links],
                [x[2] for x in links],
            )

    await _recognize_passwords(conn, tenant, desired, stored)
    reoptioned = [k for k, o in desired.items() if stored[k].options != o.sections()]
    if reoptioned:
        await conn.execute(
            "DELETE FROM pbx.object_options WHERE object_id = ANY($1::bigint[])", [stored[k].id for k in reoptioned]
        )
        rows = [
            (stored[k].id, section, option, json.dumps(value))
            for k in reoptioned
            for section, opts in desired[k].sections().items()
            for option, value in opts.items()
        ]
        if rows:
            await conn.execute(
                """
                INSERT INTO pbx.object_options (object_id, section, option, value)
                SELECT o, s, n, ARRAY(SELECT jsonb_array_elements_text(v::jsonb))
                FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[]) AS x(o, s, n, v)
                """,
                [r[0] for r in rows],
                [r[1] for r in rows],
                [r[2] for r in rows],
                [r[3] for r in rows],
            )


async def _recognize_passwords(
    conn: asyncpg.Connection, tenant: Tenant, desired: dict[ObjKey, PjsipObject], stored: dict[ObjKey, _StoredObject]
) -> None:
    """The database keeps an inbound password as its digest only (sql/015_fences.sql): where the
    file's password has the stored digest, for the username and realm the endpoint now has, count
    it as unchanged, or every run would rewrite (and re-flush) every endpoint with a password."""
    # Without a username of its own, an endpoint's is its name unless a template sets one (then
    # inheritance decides, and the object is simply rewritten).
    inherited = any("username" in t.auth for t in tenant.templates.values())
    candidates = []
    for key, obj in desired.items():
        password = obj.auth.get("password")
        own = obj.auth.get("username")
        current = stored.get(key)
        if key[0] != "endpoint" or not password or current is None or "password" not in current.options.get("auth", {}):
            continue
        if own or not inherited:
            candidates.append((current.id, own[0] if own else key[1], password[0], key))
    if not candidates:
        return
    same = {
        r["o"]
        for r in await conn.fetch(
            """
            SELECT x.o FROM unnest($1::bigint[], $2::text[], $3::text[]) AS x(o, u, p)
            JOIN pbx.objects ob ON ob.id = x.o
            JOIN pbx.tenants t ON t.id = ob.tenant_id
            JOIN pbx.object_options s ON s.object_id = x.o AND s.section = 'auth' AND s.option = 'password'
            WHERE s.value = pbx.password_digest(x.u, t.domain, x.p)
            """,
            [c[0] for c in candidates],
            [c[1] for c in candidates],
            [c[2] for c in candidates],
        )
    }
    for object_id, _user, plaintext, key in candidates:
        if object_id in same:
            stored[key].options["auth"]["password"] = [plaintext]


async def _delete_unwanted_objects(conn: asyncpg.Connection, tenant_id: int, tenant: Tenant) -> None:
    desired = _desired_objects(tenant)
    rows = await conn.fetch("SELECT id, kind, name FROM pbx.objects WHERE tenant_id = $1", tenant_id)
    doomed = [r["id"] for r in rows if (r["kind"], r["name"]) not in desired]
    if not doomed:
        return
    # Links among the doomed objects themselves must not make each other's deletion look like
    # deleting a referenced template; links from kept objects were already rewritten.
    await conn.execute("DELETE FROM pbx.object_parents WHERE object_id = ANY($1::bigint[])", doomed)
    await conn.execute("DELETE FROM pbx.objects WHERE id = ANY($1::bigint[])", doomed)


async def _converge_settings(conn: asyncpg.Connection, tenant_id: int, settings: TenantSettings) -> None:
    # Written only when they differ: every write bumps the tenant's routing version.
    stored = await conn.fetchrow("SELECT ring_timeout_ms FROM pbx.tenant_settings WHERE tenant_id = $1", tenant_id)
    if settings == TenantSettings():
        if stored is not None:
            await conn.execute("DELETE FROM pbx.tenant_settings WHERE tenant_id = $1", tenant_id)
    elif stored is None or stored["ring_timeout_ms"] != settings.ring_timeout_ms:
        await conn.execute(
            "INSERT INTO pbx.tenant_settings (tenant_id, ring_timeout_ms) VALUES ($1, $2) "
            "ON CONFLICT (tenant_id) DO UPDATE SET ring_timeout_ms = EXCLUDED.ring_timeout_ms",
            tenant_id,
            settings.ring_timeout_ms,
        )


# ---------------------------------------------------------------------------------------------
# Extensions


def _extension_row(number: str, ext: Extension) -> tuple[Any, ...]:
    fwd = ext.forward
    return (
        number,
        ext.type,
        ext.name,
        ext.short_name,
        ext.call_waiting,
        ext.dialout,
        ext.outgoing_number,
        ext.outgoing_name,
        ext.ringback,
        ext.language,
        fwd.mode if fwd else None,
        fwd.to if fwd else None,
        fwd.delay_ms if fwd else None,
        ext.ring_timeout_ms,
        ext.outbound.strip if ext.outbound else None,
        ext.outbound.prepend if ext.outbound else None,
    )


_ROW_COLUMNS = 16  # the columns of _extension_row, the same in _stored_extensions


def _did_row(rule: DidRule) -> tuple[str, str, str]:
    kind, match = rule.key
    return (kind, match, rule.to)


def _extension_children(ext: Extension) -> tuple[Any, ...]:
    return (
        tuple(ext.endpoints),
        tuple((r.mode, r.delay_ms, tuple((m.number, m.active) for m in r.members)) for r in ext.ranks),
        tuple(ext.fallback),
        tuple(_did_row(d) for d in ext.dids),
    )


async def _stored_extensions(conn: asyncpg.Connection, tenant_id: int) -> dict[str, tuple[Any, ...]]:
    rows = await conn.fetch(
        """
        SELECT e.number, e.type, e.name, e.short_name, e.call_waiting, e.dialout, e.outgoing_number,
               e.outgoing_name, e.ringback, e.language, e.forward_mode, e.forward_to, e.forward_delay_ms,
               e.ring_timeout_ms, e.outbound_strip, e.outbound_prepend,
               coalesce((SELECT jsonb_agg(o.name ORDER BY x.ordinal) FROM pbx.extension_endpoints x
                         JOIN pbx.objects o ON o.id = x.endpoint_id
                         WHERE x.tenant_id = e.tenant_id AND x.number = e.number), '[]') AS endpoints,
               coalesce((SELECT jsonb_agg(jsonb_build_array(r.mode, r.delay_ms,
                            coalesce((SELECT jsonb_agg(jsonb_build_array(m.member, m.active) ORDER BY m.ordinal)
                                      FROM pbx.rank_members m WHERE m.tenant_id = r.tenant_id
                                      AND m.number = r.number AND m.rank_ordinal = r.ordinal), '[]'))
                            ORDER BY r.ordinal)
                         FROM pbx.ranks r WHERE r.tenant_id = e.tenant_id AND r.number = e.number), '[]') AS ranks,
               coalesce((SELECT jsonb_agg(f.fallback ORDER BY f.ordinal) FROM pbx.trunk_fallbacks f
                         WHERE f.tenant_id = e.tenant_id AND f.number = e.number), '[]') AS fallback,
               coalesce((SELECT jsonb_agg(jsonb_build_array(d.kind, d.match, d.target) ORDER BY d.ordinal)
                         FROM pbx.trunk_dids d WHERE d.tenant_id = e.tenant_id AND d.number = e.number), '[]') AS dids
        FROM pbx.extensions e WHERE e.tenant_id = $1
        """,
        tenant_id,
    )
    out = {}
    for r in rows:
        base = tuple(r[k] for k in list(r.keys())[:_ROW_COLUMNS])
        endpoints = tuple(json.loads(r["endpoints"]))
        ranks = tuple(
            (mode, delay, tuple((m, a) for m, a in members)) for mode, delay, members in json.loads(r["ranks"])
        )
        fallback = tuple(json.loads(r["fallback"]))
        dids = tuple((k, m, t) for k, m, t in json.loads(r["dids"]))
        out[r["number"]] = (*base, (endpoints, ranks, fallback, dids))
    return out


def _normalize_forward_delay(row: tuple[Any, ...]) -> tuple[Any, ...]:
    # A forward without delay is stored as NULL or 0 alike.
    delay = (row[12] or 0) if row[10] else None
    return (*row[:12], delay, *row[13:])


async def _converge_extensions(conn: asyncpg.Connection, tenant_id: int, tenant: Tenant) -> None:
    stored = {n: _normalize_forward_delay(r) for n, r in (await _stored_extensions(conn, tenant_id)).items()}
    desired = {
        n: _normalize_forward_delay((*_extension_row(n, e), _extension_children(e)))
        for n, e in tenant.extensions.items()
    }
    changed = [n for n in desired if stored.get(n) != desired[n]]
    doomed = [n for n in stored if n not in desired]
    touched = [n for n in changed if n in stored] + doomed
    if touched:
        # Drop what the rewritten and the doomed extensions reference, so that their rows can be
        # replaced or deleted in any order; the refusal trigger still guards kept references.
        await conn.execute(
            "UPDATE pbx.extensions SET forward_mode = NULL, forward_to = NULL, forward_delay_ms = NULL "
            "WHERE tenant_id = $1 AND number = ANY($2::text[])",
            tenant_id,
            touched,
        )
        await conn.execute(
            "DELETE FROM pbx.ranks WHERE tenant_id = $1 AND number = ANY($2::text[])", tenant_id, touched
        )
        await conn.execute(
            "DELETE FROM pbx.extension_endpoints WHERE tenant_id = $1 AND number = ANY($2::text[])", tenant_id, touched
        )
        for table in ("trunk_fallbacks", "trunk_dids"):
            await conn.execute(
                f"DELETE FROM pbx.{table} WHERE tenant_id = $1 AND number = ANY($2::text[])", tenant_id, touched
            )
    if changed:
        rows = [_extension_row(n, tenant.extensions[n]) for n in changed]
        cols = list(zip(*rows, strict=True))
        await conn.execute(
            """
            INSERT INTO pbx.extensions (tenant_id, number, type, name, short_name, call_waiting, dialout,
                                        outgoing_number, outgoing_name, ringback, language,
                                        ring_timeout_ms, outbound_strip, outbound_prepend)
            SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::bool[], $7::bool[],
                                     $8::text[], $9::text[], $10::text[], $11::text[],
                                     $12::int[], $13::int[], $14::text[])
            ON CONFLICT (tenant_id, number) DO UPDATE SET
                type = EXCLUDED.type, name = EXCLUDED.name, short_name = EXCLUDED.short_name,
                call_waiting = EXCLUDED.call_waiting, dialout = EXCLUDED.dialout,
                outgoing_number = EXCLUDED.outgoing_number, outgoing_name = EXCLUDED.outgoing_name,
                ringback = EXCLUDED.ringback, language = EXCLUDED.language,
                ring_timeout_ms = EXCLUDED.ring_timeout_ms, outbound_strip = EXCLUDED.outbound_strip,
                outbound_prepend = EXCLUDED.outbound_prepend
            """,
            tenant_id,
            *[list(c) for c in cols[:10]],
            *[list(c) for c in cols[13:16]],
        )
        await _insert_extension_children(conn, tenant_id, tenant, changed)
        forwards = [(n, r[10], r[11], r[12]) for n, r in zip(changed, rows, strict=True) if r[10]]
        if forwards:
            await conn.execute(
                """
                UPDATE pbx.extensions e SET forward_mode = x.m, forward_to = x.t, forward_delay_ms = x.d
                FROM unnest($2::text[], $3::text[], $4::text[], $5::int[]) AS x(n, m, t, d)
                WHERE e.tenant_id = $1 AND e.number = x.n
                """,
                tenant_id,
                *[list(c) for c in zip(*forwards, strict=True)],
            )
    if doomed:
        await conn.execute(
            "DELETE FROM pbx.extensions WHERE tenant_id = $1 AND number = ANY($2::text[])", tenant_id, doomed
        )


async def _insert_extension_children(
    conn: asyncpg.Connection, tenant_id: int, tenant: Tenant, numbers: Iterable[str]
) -> None:
    endpoint_links = []
    ranks = []
    members = []
    fallbacks = []
    dids = []
    for n in numbers:
        ext = tenant.extensions[n]
        endpoint_links += [(n, i, ep) for i, ep in enumerate(ext.endpoints)]
        fallbacks += [(n, i, fb) for i, fb in enumerate(ext.fallback)]
        dids += [(n, i, *_did_row(d)) for i, d in enumerate(ext.dids)]
        for ri, rank in enumerate(ext.ranks):
            ranks.append((n, ri, rank.mode, rank.delay_ms))
            members += [(n, ri, mi, m.number, m.active) for mi, m in enumerate(rank.members)]
    if endpoint_links:
        await conn.execute(
            """
            INSERT INTO pbx.extension_endpoints (tenant_id, number, ordinal, endpoint_id)
            SELECT $1, x.n, x.i, o.id FROM unnest($2::text[], $3::int[], $4::text[]) AS x(n, i, ep)
            JOIN pbx.objects o ON o.tenant_id = $1 AND o.kind = 'endpoint' AND o.name = x.ep
            """,
            tenant_id,
            *[list(c) for c in zip(*endpoint_links, strict=True)],
        )
    if ranks:
        await conn.execute(
            "INSERT INTO pbx.ranks (tenant_id, number, ordinal, mode, delay_ms) "
            "SELECT $1, * FROM unnest($2::text[], $3::int[], $4::text[], $5::int[])",
            tenant_id,
            *[list(c) for c in zip(*ranks, strict=True)],
        )
    if members:
        await conn.execute(
            "INSERT INTO pbx.rank_members (tenant_id, number, rank_ordinal, ordinal, member, active) "
            "SELECT $1, * FROM unnest($2::text[], $3::int[], $4::int[], $5::text[], $6::bool[])",
            tenant_id,
            *[list(c) for c in zip(*members, strict=True)],
        )
    if fallbacks:
        await conn.execute(
            "INSERT INTO pbx.trunk_fallbacks (tenant_id, number, ordinal, fallback) "
            "SELECT $1, * FROM unnest($2::text[], $3::int[], $4::text[])",
            tenant_id,
            *[list(c) for c in zip(*fallbacks, strict=True)],
        )
    if dids:
        await conn.execute(
            "INSERT INTO pbx.trunk_dids (tenant_id, number, ordinal, kind, match, target) "
            "SELECT $1, * FROM unnest($2::text[], $3::int[], $4::text[], $5::text[], $6::text[])",
            tenant_id,
            *[list(c) for c in zip(*dids, strict=True)],
        )
