"""The API's token store (sql/017, http_api/tokens.py) on a real database, and `pbxctl token`."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from http_api.tokens import TokenStore, UnknownToken, check_token, create_token, list_tokens, revoke_token
from pbx_base.errors import InvalidInput
from pbxctl.commands.token import parse_expiry
from pbxctl.errors import Invalid
from sorcery_backend.apply import apply_config
from sorcery_backend.declarative import parse_config

REPO = Path(__file__).resolve().parent.parent
CONFIG = {"tenants": {"a": {"domain": "a.example"}}}


async def _conn(db: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(db)
    await apply_config(conn, parse_config(CONFIG))
    return conn


async def test_only_a_hash_is_stored_and_the_token_names_its_scope(db: str) -> None:
    conn = await _conn(db)
    try:
        op = await create_token(conn, "op")
        ta = await create_token(conn, "ta", "a")
        assert op != ta and op.startswith("pbx_") and len(op) == 4 + 16 + 1 + 43
        dump = str([dict(r) for r in await conn.fetch("SELECT * FROM pbx.api_tokens")])
        assert op not in dump and ta not in dump and op.split("_", 2)[2] not in dump
        principal = await check_token(conn, ta)
        assert principal is not None and (principal.token, principal.tenant, principal.domain) == (
            "ta",
            "a",
            "a.example",
        )
        operator = await check_token(conn, op)
        assert operator is not None and operator.tenant is None and operator.sees_domain("any.example")
        assert await check_token(conn, op + "x") is None
        assert await check_token(conn, op[:-1] + ("A" if op[-1] != "A" else "B")) is None
        assert [(t.name, t.tenant) for t in await list_tokens(conn)] == [("op", None), ("ta", "a")]
    finally:
        await conn.close()


async def test_create_refuses_an_unknown_tenant_and_an_active_name_and_changes_nothing(db: str) -> None:
    conn = await _conn(db)
    try:
        await create_token(conn, "op")
        with pytest.raises(InvalidInput, match="tenant nope: unknown tenant"):
            await create_token(conn, "x", "nope")
        with pytest.raises(InvalidInput, match="token op: a token of that name exists"):
            await create_token(conn, "op")
        assert await conn.fetchval("SELECT count(*) FROM pbx.api_tokens") == 1
    finally:
        await conn.close()


async def test_revoke_ends_a_token_and_frees_its_name(db: str) -> None:
    conn = await _conn(db)
    try:
        old = await create_token(conn, "ci")
        await revoke_token(conn, "ci")
        assert await check_token(conn, old) is None
        with pytest.raises(UnknownToken):
            await revoke_token(conn, "ci")
        new = await create_token(conn, "ci")
        assert await check_token(conn, new) is not None and await check_token(conn, old) is None
        tokens = await list_tokens(conn)
        assert [t.revoked_at is not None for t in tokens] == [True, False]
    finally:
        await conn.close()


async def test_an_expired_token_is_refused_and_a_tenant_takes_its_tokens_along(db: str) -> None:
    conn = await _conn(db)
    try:
        soon = await create_token(conn, "soon", "a", dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
        assert await check_token(conn, soon) is not None
        await conn.execute(
            "UPDATE pbx.api_tokens SET created_at = now() - interval '2 hours', expires_at = now() - interval '1 hour'"
        )
        assert await check_token(conn, soon) is None
        ta = await create_token(conn, "ta", "a")
        await conn.execute("DELETE FROM pbx.tenants WHERE name = 'a'")
        # Never an operator token by losing its tenant.
        assert await check_token(conn, ta) is None
        assert await conn.fetchval("SELECT count(*) FROM pbx.api_tokens") == 0
    finally:
        await conn.close()


async def test_the_store_caches_rows_for_its_cache_time_only(db: str) -> None:
    conn = await _conn(db)
    pool = await asyncpg.create_pool(db, min_size=1, max_size=2)
    try:
        token = await create_token(conn, "op")
        store = TokenStore(pool, cache_s=3600)
        assert await store.verify(token) is not None
        await revoke_token(conn, "op")
        assert await store.verify(token) is not None  # from memory
        assert await TokenStore(pool, cache_s=0).verify(token) is None
        assert await store.verify("pbx_short") is None
    finally:
        await pool.close()
        await conn.close()


def test_expiry_is_a_duration_or_a_date_in_the_future() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert parse_expiry("90d", now) == now + dt.timedelta(days=90)
    assert parse_expiry("30m", now) == now + dt.timedelta(minutes=30)
    assert parse_expiry("2026-02-01", now) == dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
    with pytest.raises(Invalid, match="--expires 2025-01-01: not in the future"):
        parse_expiry("2025-01-01", now)
    with pytest.raises(Invalid, match="--expires soon: expected a duration"):
        parse_expiry("soon", now)


def _pbxctl(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PBX_")}
    env.update(PYTHONPATH=str(REPO), PBX_DATABASE_URL=db)
    return subprocess.run([sys.executable, "-m", "pbxctl", *args], env=env, capture_output=True, text=True, timeout=60)


def test_cli_prints_a_token_once_lists_without_it_and_revokes(db: str) -> None:
    async def setup() -> None:
        await (await _conn(db)).close()

    asyncio.run(setup())
    made = _pbxctl(db, "token", "create", "--name", "ta", "--tenant", "a", "--expires", "30d", "--json")
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    assert (created["name"], created["tenant"]) == ("ta", "a") and created["token"].startswith("pbx_")
    plain = _pbxctl(db, "token", "create", "--name", "op")
    assert plain.returncode == 0 and plain.stdout.startswith("pbx_") and plain.stdout.count("\n") == 1

    listed = _pbxctl(db, "token", "list", "--json")
    assert listed.returncode == 0
    assert created["token"] not in listed.stdout and plain.stdout.strip() not in listed.stdout
    assert [(t["name"], t["tenant"], t["revoked_at"]) for t in json.loads(listed.stdout)] == [
        ("ta", "a", None),
        ("op", None, None),
    ]
    assert _pbxctl(db, "token", "revoke", "ta").returncode == 0
    assert "revoked" in _pbxctl(db, "token", "list").stdout.splitlines()[0]

    for args, message in [
        (("revoke", "ta"), "pbxctl: token ta: no active token of that name\n"),
        (("create", "--name", "x", "--tenant", "nope"), "pbxctl: tenant nope: unknown tenant\n"),
        (("create", "--name", "op"), "pbxctl: token op: a token of that name exists (revoke it first)\n"),
        (("create", "--name", "x", "--expires", "2020-01-01"), "pbxctl: --expires 2020-01-01: not in the future\n"),
    ]:
        r = _pbxctl(db, "token", *args)
        assert r.returncode == 1 and r.stdout == "", (args, r.stderr)
        assert r.stderr.count("\n") == 1 and (message is None or r.stderr == message), r.stderr
    bad_name = _pbxctl(db, "token", "create", "--name", "a b")
    assert bad_name.returncode == 1 and "api_token_name_pattern" in bad_name.stderr, bad_name.stderr
    assert len(json.loads(_pbxctl(db, "token", "list", "--json").stdout)) == 2
