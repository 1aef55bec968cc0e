"""Hostile input for the configuration store, shared by tests/test_fuzz.py and bench/fuzz.py.

Two kinds of attack, each a pure generator seeded by a ``random.Random`` (so hypothesis can drive
and shrink it, and the bench can run many of them with a fixed seed):

- ``declarative_input``: a declarative file as bytes, a valid base config with one mutation
  (wrong types, unknown keys, cycles, cross-tenant references, huge and hostile strings, YAML
  1.1 traps, broken YAML). ``run_apply`` feeds it to ``pbxctl apply`` in-process and reports
  what a caller sees: the exit code, the lines on stderr, whether an exception escaped, and
  whether the database changed.
- ``cross_tenant_statement``: one SQL statement that tenant A's admin sends against tenant B's
  rows (read, insert, update, delete, functions, views, sequences). ``run_attack`` runs it as A
  and reports whether B's data showed up in the answer or B's rows changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import json
import random
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import yaml

from pbxctl.cli import main as pbxctl_main

SECRET = "Xq9-secret-marker"  # a password that must never be printed
BETA_MARKERS = ("beta.example", "beta-only", "beta-in", "pw-beta")


def base_config() -> dict[str, Any]:
    """A valid file for tenant acme: templates on two levels, endpoints, a group."""
    return {
        "tenants": {
            "acme": {
                "domain": "acme.example",
                "templates": {
                    "global": {
                        "endpoint": {"allow": "!all,ulaw", "context": "acme-internal"},
                        "aor": {"max_contacts": "1"},
                    },
                    "phone": {"parents": ["global"], "endpoint": {"dtmf_mode": "rfc4733"}},
                },
                "endpoints": {
                    "1001": {"templates": ["phone"], "auth": {"password": SECRET}},
                    "1002": {"templates": ["phone"], "auth": {"password": SECRET}},
                },
                "extensions": {
                    "1001": {"type": "simple", "name": "Alice", "endpoints": ["1001"]},
                    "1002": {"type": "simple", "name": "Bob", "endpoints": ["1002"]},
                    "2000": {
                        "type": "group",
                        "name": "Team",
                        "ranks": [{"mode": "default", "members": ["1001", "1002"]}],
                    },
                },
            }
        }
    }


def beta_config() -> dict[str, Any]:
    """Tenant beta, the victim of cross-tenant attempts."""
    return {
        "tenants": {
            "beta": {
                "domain": "beta.example",
                "templates": {"beta-only": {"endpoint": {"context": "beta-in", "allow": "!all,ulaw"}}},
                "endpoints": {
                    "2001": {"templates": ["beta-only"], "auth": {"password": "pw-beta"}},
                    "carrier": {"endpoint": {"context": "beta-in"}, "identify": {"match": ["192.0.2.10"]}},
                },
                "extensions": {"2001": {"type": "simple", "name": "Beta", "endpoints": ["2001"]}},
            }
        }
    }


_HOSTILE_STRINGS = (
    "",
    " ",
    "a\r\nVia: injected",
    "a\nb",
    "nul\x00byte",
    "bell\x07",
    "tab\there",
    "x" * 1_100,
    "y" * 100_000,
    "ü" * 300,
    "😀" * 50,
    "-1",
    "99999999999999999999",
    "1e309",
    "0x1F",
    "0777",
    "on",
    "yes",
    "~",
    "null",
    "1:30",
    "!all,bogus",
    "not a uri",
    "sip:",
    "pbx-stasis",
    "pbx-dial-test",
    "${SHELL}",
    "'; DROP TABLE pbx.tenants; --",
    "BETA.EXAMPLE",
    "beta.example",
    "192.0.2.0/24",
    "0.0.0.0/0",
    "../../etc/passwd",
)

_WRONG_TYPES: tuple[Any, ...] = (None, 0, -5, 1.5, True, [], {}, ["a", ["b"]], {"k": {"k": "v"}})

_UNKNOWN_KEYS = ("bogus", "Endpoint", "endpoints ", "aors", "type", "auth_type", "md5_cred", "password ")


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.extend(_paths(v, (*prefix, i)))
    return out


def _set(root: Any, path: tuple[Any, ...], value: Any) -> None:
    node = root
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value


def _get(root: Any, path: tuple[Any, ...]) -> Any:
    node = root
    for p in path:
        node = node[p]
    return node


def _structural(rng: random.Random, cfg: dict[str, Any]) -> None:
    """One mutation of the tree."""
    acme = cfg["tenants"]["acme"]
    kind = rng.randrange(9)
    if kind == 0:  # a value replaced by a hostile string
        path = rng.choice([p for p in _paths(cfg) if p and not isinstance(_get(cfg, p), dict | list)])
        _set(cfg, path, rng.choice(_HOSTILE_STRINGS))
    elif kind == 1:  # a node replaced by a wrong type
        path = rng.choice([p for p in _paths(cfg) if len(p) > 1])
        _set(cfg, path, copy.deepcopy(rng.choice(_WRONG_TYPES)))
    elif kind == 2:  # an unknown or reserved key somewhere
        path = rng.choice([p for p in _paths(cfg) if isinstance(_get(cfg, p), dict)])
        _get(cfg, path)[rng.choice(_UNKNOWN_KEYS)] = rng.choice(_HOSTILE_STRINGS[:8])
    elif kind == 3:  # a parent cycle
        acme["templates"]["global"]["parents"] = ["phone"]
    elif kind == 4:  # a reference to the other tenant's objects
        rng.choice(
            [
                lambda: acme["endpoints"]["1001"].__setitem__("templates", ["beta-only"]),
                lambda: acme["extensions"]["2000"]["ranks"][0]["members"].append("2001"),
                lambda: acme["extensions"]["1001"].__setitem__("endpoints", ["2001"]),
                lambda: acme["extensions"]["1001"].__setitem__("forward", {"mode": "always", "to": "2001"}),
            ]
        )()
    elif kind == 5:  # what belongs to another tenant or to the node
        rng.choice(
            [
                lambda: acme.__setitem__("domain", rng.choice(["BETA.EXAMPLE", "beta.example", "Beta.Example."])),
                lambda: acme["endpoints"].__setitem__(
                    "grab",
                    {
                        "endpoint": {"context": "acme-in"},
                        "identify": {"match": [rng.choice(["192.0.2.0/24", "192.0.2.10", "0.0.0.0/0"])]},
                    },
                ),
                lambda: acme["templates"]["global"]["endpoint"].__setitem__(
                    "context", rng.choice(["pbx-stasis", "pbx-dial-test", "pbx-hold", "default"])
                ),
                lambda: acme["templates"]["global"]["endpoint"].__setitem__("rtp_engine", "asterisk"),
                lambda: acme["templates"]["global"]["endpoint"].__setitem__("set_var", ["GLOBAL(X)=1"]),
            ]
        )()
    elif kind == 6:  # a new name that is hostile
        name = rng.choice(_HOSTILE_STRINGS)
        section = rng.choice(["templates", "endpoints", "extensions"])
        acme[section][name] = copy.deepcopy(acme[section][next(iter(acme[section]))])
    elif kind == 7:  # deleting something still referenced
        rng.choice([lambda: acme["templates"].pop("global"), lambda: acme["extensions"].pop("1001")])()
    else:  # deep nesting
        deep: Any = "leaf"
        for _ in range(rng.choice([50, 500])):
            deep = {"k": deep}
        acme["endpoints"]["1001"]["endpoint"] = deep


def _textual(rng: random.Random, text: str) -> bytes:
    """Mutations only a text file can carry."""
    kind = rng.randrange(7)
    if kind == 0:  # YAML 1.1 literals the operator meant as text
        return text.replace(
            "max_contacts: '1'", f"max_contacts: {rng.choice(['0777', '0x1F', '1_0', 'on', '1:30'])}"
        ).encode()
    if kind == 1:
        return (text + "\ntenants: {}\n").encode()  # a duplicate top-level key
    if kind == 2:
        return text.encode("utf-8") + b"\n# \xff\xfe not UTF-8\n"
    if kind == 3:
        return b"? [a, b]\n: c\n" + text.encode()  # an unhashable key
    if kind == 4:
        return ("[" * 5000 + "]" * 5000).encode()
    if kind == 5:
        return text.replace("acme.example", "acme.example\r\n").encode()
    cut = rng.randrange(1, max(2, len(text)))
    return text[:cut].encode()  # a file cut short


def declarative_input(rng: random.Random) -> bytes:
    cfg = base_config()
    if rng.random() < 0.75:
        for _ in range(2 if rng.random() < 0.2 else 1):
            with contextlib.suppress(LookupError, TypeError, AttributeError):
                _structural(rng, cfg)  # a second mutation may aim into what the first replaced
        try:
            return yaml.safe_dump(cfg, allow_unicode=True, width=1 << 20).encode()
        except RecursionError:
            return json.dumps(cfg).encode()
    return _textual(rng, yaml.safe_dump(cfg, allow_unicode=True))


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    stdout: str
    stderr: str
    escaped: str | None  # the traceback of an exception that escaped pbxctl, if any

    @property
    def clean_refusal(self) -> bool:
        lines = self.stderr.splitlines()
        return (
            self.exit_code == 1
            and self.escaped is None
            and len(lines) == 1
            and "Traceback" not in self.stderr
            and len(lines[0]) <= 400
        )


def run_cli(*argv: str) -> Outcome:
    out, err = io.StringIO(), io.StringIO()
    escaped = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = pbxctl_main(list(argv))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException:
            code, escaped = -1, traceback.format_exc()
    return Outcome(code, out.getvalue(), err.getvalue(), escaped)


def run_apply(dsn: str, data: bytes, *, dry_run: bool = False) -> Outcome:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_bytes(data)
        return run_cli("plan" if dry_run else "apply", str(path), "--json", "--dsn", dsn)


def apply_dict(dsn: str, cfg: dict[str, Any]) -> None:
    outcome = run_apply(dsn, yaml.safe_dump(cfg).encode())
    assert outcome.exit_code == 0, outcome.stderr or outcome.escaped


# ---------------------------------------------------------------------------------------------
# What the database holds


async def fingerprint(conn: asyncpg.Connection, tenant: str | None = None) -> str:
    """A digest of every row of the project's tables (one tenant's rows only when named).

    Sequences are left out: nextval is not transactional, so a refused insert moves them.
    """
    tables = await conn.fetch(
        """
        SELECT c.relname,
               EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid
                       AND a.attname = 'tenant_id' AND a.atttypid = 'int8'::regtype) AS by_tenant,
               EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid
                       AND a.attname = 'object_id' AND a.atttypid = 'int8'::regtype) AS by_object
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'pbx' AND c.relkind IN ('r', 'p') ORDER BY c.relname
        """
    )
    parts = []
    for t in tables:
        name = t["relname"]
        where = ""
        if tenant is not None:
            tid = "(SELECT id FROM pbx.tenants WHERE name = $1)"
            if name == "tenants":
                where = "WHERE x.name = $1"
            elif t["by_tenant"]:
                where = f"WHERE x.tenant_id = {tid}"
            elif t["by_object"]:
                where = f"WHERE x.object_id IN (SELECT id FROM pbx.objects WHERE tenant_id = {tid})"
            else:
                continue
        rows = f"SELECT string_agg(to_jsonb(x)::text, '|' ORDER BY to_jsonb(x)::text) FROM pbx.{name} x {where}"
        query = f"SELECT coalesce(md5(({rows})), '')"
        args = (tenant,) if "$1" in query else ()
        parts.append(f"{name}:{await conn.fetchval(query, *args)}")
    if tenant is None:
        for view in (
            "ps_endpoints",
            "ps_aors",
            "ps_auths",
            "ps_endpoint_id_ips",
            "ps_registrations",
            "ps_domain_aliases",
        ):
            rows = f"SELECT string_agg(to_jsonb(v)::text, '|' ORDER BY v.id) FROM public.{view} v"
            parts.append(f"{view}:{await conn.fetchval(f'SELECT md5(coalesce(({rows}), $$-$$))')}")
    return "\n".join(parts)


def db_fingerprint(dsn: str, tenant: str | None = None) -> str:
    async def go() -> str:
        conn = await asyncpg.connect(dsn)
        try:
            return await fingerprint(conn, tenant)
        finally:
            await conn.close()

    return asyncio.run(go())


# ---------------------------------------------------------------------------------------------
# Tenant A's admin against tenant B


_TENANT_TABLES = (
    "objects",
    "object_parents",
    "domain_aliases",
    "extensions",
    "extension_endpoints",
    "ranks",
    "rank_members",
)
_OBJECT_TABLES = ("object_options", "rt_owner")
_OPTION_INSERT = "INSERT INTO pbx.object_options (object_id, section, option, value) VALUES "


def _statements() -> list[str]:
    """Statements with placeholders: {b} beta's tenant id, {bo} one of beta's object ids,
    {ao} one of acme's object ids, {a} acme's tenant id."""
    s: list[str] = []
    for t in (
        *_TENANT_TABLES,
        *_OBJECT_TABLES,
        "tenants",
        "tenant_admins",
        "outbox",
        "dirty_objects",
        "nodes",
        "node_pending",
        "rt_ps_endpoints",
        "rt_ps_auths",
        "rt_ps_aors",
        "rt_ps_endpoint_id_ips",
        "audit",
    ):
        s.append(f"SELECT * FROM pbx.{t}")
    for v in (
        "ps_endpoints",
        "ps_aors",
        "ps_auths",
        "ps_endpoint_id_ips",
        "ps_registrations",
        "ps_domain_aliases",
        "ps_contacts",
    ):
        s.append(f"SELECT * FROM public.{v}")
    for t in _TENANT_TABLES:
        s.append(f"DELETE FROM pbx.{t} WHERE tenant_id = {{b}}")
        s.append(f"UPDATE pbx.{t} SET tenant_id = tenant_id WHERE tenant_id = {{b}}")
        s.append(f"UPDATE pbx.{t} SET tenant_id = {{b}} WHERE tenant_id = {{a}}")
    for t in _OBJECT_TABLES:
        s.append(f"DELETE FROM pbx.{t} WHERE object_id = {{bo}}")
    s += [
        "UPDATE pbx.tenants SET domain = 'x.example' WHERE id = {b}",
        "DELETE FROM pbx.tenants WHERE id = {b}",
        "UPDATE pbx.tenants SET domain = 'BETA.EXAMPLE' WHERE id = {a}",
        "INSERT INTO pbx.domain_aliases (tenant_id, alias) VALUES ({a}, 'beta.example')",
        "INSERT INTO pbx.domain_aliases (tenant_id, alias) VALUES ({a}, 'Beta.Example')",
        "INSERT INTO pbx.objects (tenant_id, kind, name) VALUES ({b}, 'template', 'planted')",
        _OPTION_INSERT + "({bo}, 'endpoint', 'context', '{{x}}')",
        _OPTION_INSERT + "({ao}, 'identify', 'match', '{{192.0.2.10}}')",
        _OPTION_INSERT + "({ao}, 'endpoint', 'context', '{{pbx-stasis}}')",
        "INSERT INTO pbx.object_parents (tenant_id, object_id, ordinal, parent_id, parent_kind) "
        "VALUES ({a}, {ao}, 9, {bo}, 'template')",
        "INSERT INTO pbx.tenant_admins (role_name, tenant_id) VALUES (current_user, {b})",
        "SELECT pbx.grant_tenant_admin('beta', current_user)",
        "SELECT pbx.routing_changed(ARRAY[{b}]::bigint[])",
        "SELECT pbx.resolve({bo})",
        "SELECT pbx.linearize({bo})",
        "SELECT pbx.trim_outbox('0 seconds')",
        "SELECT setval('pbx.objects_id_seq', 1)",
        "SELECT nextval('pbx.objects_id_seq')",
        "NOTIFY pbx_changes, 'beta'",
    ]
    return s


STATEMENTS = _statements()


def cross_tenant_statement(rng: random.Random) -> str:
    return rng.choice(STATEMENTS)


@dataclass(frozen=True)
class Attack:
    statement: str
    error: str | None
    leaked: bool  # B's data was in the answer
    wrote: bool  # B's rows changed


async def run_attack(admin: asyncpg.Connection, as_a: asyncpg.Connection, statement: str) -> Attack:
    ids = {
        "a": await admin.fetchval("SELECT id FROM pbx.tenants WHERE name = 'acme'"),
        "b": await admin.fetchval("SELECT id FROM pbx.tenants WHERE name = 'beta'"),
        "ao": await admin.fetchval(
            "SELECT min(o.id) FROM pbx.objects o JOIN pbx.tenants t ON t.id = o.tenant_id WHERE t.name = 'acme'"
        ),
        "bo": await admin.fetchval(
            "SELECT min(o.id) FROM pbx.objects o JOIN pbx.tenants t ON t.id = o.tenant_id WHERE t.name = 'beta'"
        ),
    }
    sql = statement.format(**ids)
    before = await fingerprint(admin, "beta")
    error = None
    text = ""
    try:
        async with as_a.transaction():
            rows = await as_a.fetch(sql)
            text = json.dumps([dict(r) for r in rows], default=str)
    except asyncpg.PostgresError as exc:
        error = type(exc).__name__
    after = await fingerprint(admin, "beta")
    leaked = any(m in text for m in BETA_MARKERS) or _mentions_tenant(rows_text=text, tenant_id=ids["b"], statement=sql)
    return Attack(sql, error, leaked, before != after)


def _mentions_tenant(rows_text: str, tenant_id: int, statement: str) -> bool:
    """A row that carries B's tenant id is B's row, whatever its other columns say."""
    return f'"tenant_id": {tenant_id}' in rows_text or f'"tenant_ids": [{tenant_id}]' in rows_text
