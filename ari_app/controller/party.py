"""The endpoint a third party is dialed on, checked before it reaches a dial string.

`POST /calls/{id}/parties` hands the controller a string from outside. Dial strings have syntax
(`/` between technology and resource, `,` between arguments, `&` between channels), so the string
must be nothing but an endpoint name of the call's own tenant, which the controller knows by its
domain. The name rule is the schema's (sql/001 object_name_pattern): no character of it is dial-string
syntax, and no other endpoint can be named with it.
"""

from __future__ import annotations

import re

from pbx_base.errors import InvalidInput

__all__ = ["BadPartyEndpoint", "ForeignEndpoint", "dial_string", "party_endpoint"]

# The schema's object_name_pattern and tenant_domain_pattern (sql/001).
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,62}")
_DOMAIN = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*")


class BadPartyEndpoint(InvalidInput, ValueError):
    """Not an endpoint name (the HTTP API answers 400)."""


class ForeignEndpoint(InvalidInput, ValueError):
    """A well-formed endpoint id of another tenant than the call's (the HTTP API answers 403)."""


def _shown(text: str) -> str:
    # repr escapes control characters: the refused string cannot forge a log line or a reply.
    return repr(text if len(text) <= 80 else text[:80] + "...")


def party_endpoint(endpoint: str, domain: str) -> str:
    """The endpoint name in `endpoint`, given as ``NAME`` or ``NAME@DOMAIN`` of the call's tenant
    `domain`."""
    name, at, other = endpoint.partition("@")
    if not _NAME.fullmatch(name) or (at and not _DOMAIN.fullmatch(other)):
        raise BadPartyEndpoint(
            f"endpoint {_shown(endpoint)}: not an endpoint name "
            f"(rule: NAME or NAME@{domain}, NAME of letters, digits and _ . + -, no dial-string syntax)"
        )
    if at and other != domain:  # well-formed: a name of another tenant
        raise ForeignEndpoint(f"endpoint {_shown(endpoint)}: not of the call's tenant (rule: NAME@{domain})")
    return name


def dial_string(name: str, domain: str) -> str:
    # user@endpoint: PJSIP splits a dial string at the first '@', and our endpoint ids have one.
    return f"PJSIP/{name}@{name}@{domain}"
