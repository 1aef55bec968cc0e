"""The dev stack's operator token for `pbxctl serve`'s HTTP API: made at `dev up`, kept in the
stack's state (mode 0600) and exported as PBX_HTTP_TOKEN, so `pbxctl call` works in the stack."""

from __future__ import annotations

import asyncpg

from devstack.settings import read_http_token, write_http_token
from http_api.tokens import UnknownToken, check_token, create_token, revoke_token

__all__ = ["DEV_TOKEN_NAME", "ensure_operator_token"]

DEV_TOKEN_NAME = "dev-stack"


async def ensure_operator_token(conn: asyncpg.Connection, stack: str) -> None:
    """Keep the stack's token while the database still accepts it; otherwise replace it (a new
    cluster, or someone revoked it)."""
    kept = read_http_token(stack)
    if kept is not None and await check_token(conn, kept) is not None:
        return
    async with conn.transaction():
        try:
            await revoke_token(conn, DEV_TOKEN_NAME)
        except UnknownToken:
            pass
        token = await create_token(conn, DEV_TOKEN_NAME)
    write_http_token(stack, token)
