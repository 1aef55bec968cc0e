"""Bearer tokens of the HTTP API: minted, listed and revoked by `pbxctl token`, verified by the
API's middleware (http_api/auth.py). The table is pbx.api_tokens (sql/017_api_tokens.sql).

A token is ``pbx_<key_id>_<secret>``. The key id (64 random bits, not secret) finds the row; the
SHA-256 of the whole token is then compared with the stored one in constant time, so a request's
timing tells nothing about a stored hash. Only the hash is stored.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

import asyncpg

from pbx_base.errors import InvalidInput, NotFound, Unavailable

__all__ = [
    "CACHE_S",
    "Principal",
    "TokenInfo",
    "TokenStore",
    "TokensUnavailable",
    "UnknownToken",
    "check_token",
    "create_token",
    "list_tokens",
    "revoke_token",
]

# How long a verified token is trusted from memory: a revoke or an expiry takes effect on every
# request within this time (requests come fast; a database round trip on each would double the
# cost of /route).
CACHE_S = 1.0

_TOKEN = re.compile(r"^pbx_([0-9a-f]{16})_[A-Za-z0-9_-]{43}$")


class UnknownToken(NotFound):
    """`pbxctl token revoke` names no active token."""


class TokensUnavailable(Unavailable):
    """The database cannot be asked about a token: the request is refused (503), never let through."""


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: an operator-wide token (tenant None) or one tenant's."""

    token: str  # the token's name, for logs
    tenant: str | None = None  # tenant name
    domain: str | None = None  # that tenant's domain: how the controller knows a call's tenant

    def sees_tenant(self, tenant: str) -> bool:
        return self.tenant is None or tenant == self.tenant

    def sees_domain(self, domain: str) -> bool:
        """A call's tenant is known to the controller by its domain."""
        return self.tenant is None or domain == self.domain


@dataclass(frozen=True)
class TokenInfo:
    name: str
    tenant: str | None
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None

    def as_json(self) -> dict[str, str | None]:
        def iso(t: dt.datetime | None) -> str | None:
            return t.isoformat() if t is not None else None

        return {
            "name": self.name,
            "tenant": self.tenant,
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "revoked_at": iso(self.revoked_at),
        }


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def create_token(
    conn: asyncpg.Connection, name: str, tenant: str | None = None, expires_at: dt.datetime | None = None
) -> str:
    """A new token (returned once, never stored). Refused: an unknown tenant, a name in use."""
    key_id = secrets.token_hex(8)
    token = f"pbx_{key_id}_{secrets.token_urlsafe(32)}"
    async with conn.transaction():
        tenant_id = None
        if tenant is not None:
            tenant_id = await conn.fetchval("SELECT id FROM pbx.tenants WHERE name = $1", tenant)
            if tenant_id is None:
                raise InvalidInput(f"tenant {tenant}: unknown tenant")
        if await conn.fetchval("SELECT 1 FROM pbx.api_tokens WHERE name = $1 AND revoked_at IS NULL", name):
            raise InvalidInput(f"token {name}: a token of that name exists (revoke it first)")
        await conn.execute(
            "INSERT INTO pbx.api_tokens (name, key_id, hash, tenant_id, expires_at) VALUES ($1, $2, $3, $4, $5)",
            name,
            key_id,
            _digest(token),
            tenant_id,
            expires_at,
        )
    return token


async def list_tokens(conn: asyncpg.Connection) -> list[TokenInfo]:
    rows = await conn.fetch(
        "SELECT k.name, t.name AS tenant, k.created_at, k.expires_at, k.revoked_at"
        " FROM pbx.api_tokens k LEFT JOIN pbx.tenants t ON t.id = k.tenant_id ORDER BY k.created_at, k.id"
    )
    return [TokenInfo(**dict(r)) for r in rows]


async def revoke_token(conn: asyncpg.Connection, name: str) -> None:
    done = await conn.fetchval(
        "UPDATE pbx.api_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL RETURNING id", name
    )
    if done is None:
        raise UnknownToken(f"token {name}: no active token of that name")


@dataclass(frozen=True)
class _Row:
    digest: bytes
    principal: Principal
    expires_at: float | None  # epoch seconds

    def admits(self, token: str) -> Principal | None:
        if not hmac.compare_digest(self.digest, _digest(token)):
            return None
        if self.expires_at is not None and time.time() >= self.expires_at:
            return None
        return self.principal


def _key_id(token: str) -> str | None:
    m = _TOKEN.match(token)
    return m.group(1) if m else None


async def _load(db: asyncpg.Pool | asyncpg.Connection, key_id: str) -> _Row | None:
    try:
        r = await db.fetchrow(
            "SELECT k.name, k.hash, k.expires_at, t.name AS tenant, t.domain"
            " FROM pbx.api_tokens k LEFT JOIN pbx.tenants t ON t.id = k.tenant_id"
            " WHERE k.key_id = $1 AND k.revoked_at IS NULL",
            key_id,
        )
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise TokensUnavailable(f"tokens: cannot reach the database ({exc})") from None
    if r is None:
        return None
    expires = r["expires_at"].timestamp() if r["expires_at"] is not None else None
    return _Row(bytes(r["hash"]), Principal(r["name"], r["tenant"], r["domain"]), expires)


async def check_token(db: asyncpg.Pool | asyncpg.Connection, token: str) -> Principal | None:
    """The token's principal, asked of the database now; None for a malformed, unknown, revoked or
    expired token."""
    key_id = _key_id(token)
    row = await _load(db, key_id) if key_id is not None else None
    return row.admits(token) if row is not None else None


class TokenStore:
    """Verifies tokens against pbx.api_tokens, trusting a row read for CACHE_S seconds."""

    def __init__(self, pool: asyncpg.Pool, *, cache_s: float = CACHE_S) -> None:
        self.pool = pool
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, _Row | None]] = {}

    async def verify(self, token: str) -> Principal | None:
        """`check_token`, from memory when the row was read less than `cache_s` ago."""
        key_id = _key_id(token)
        if key_id is None:
            return None
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is None or now - cached[0] > self.cache_s:
            cached = (now, await _load(self.pool, key_id))
            if len(self._cache) > 10_000:  # bounded: unknown key ids are cached too
                self._cache.clear()
            self._cache[key_id] = cached
        row = cached[1]
        return row.admits(token) if row is not None else None
