"""The API's error answer: one line of JSON naming the object and the rule."""

from __future__ import annotations

from aiohttp import web

__all__ = ["json_error"]


def json_error(status: int, message: str, *, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)
