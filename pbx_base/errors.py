"""The project's exceptions: one root, grouped by what the caller can do about them.

Modelled on httpx's ``_exceptions.py``: catch ``PbxError`` for anything of ours, or a group.
"""

from __future__ import annotations

__all__ = ["PbxError", "UnknownTenant"]


class PbxError(Exception):
    """Root of every exception the project raises on purpose."""


class UnknownTenant(PbxError, LookupError):
    """No tenant of that name (or domain) exists."""
