"""What routing one live call takes from the outside and gives back, as plain data.

A store (routing_store) fills in `CallData` for a call and implements `CallLookup`; the ARI
controller routes through a `CallLookup` and reads the `Routed` result. Neither imports the other:
both import this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from routing.model import Directory
from routing.stage1 import CallRequest, Tree, build_tree

__all__ = ["CallData", "CallLookup", "Routed", "route_call", "split_endpoint_id"]


@dataclass(frozen=True)
class CallData:
    """The routing data of one call: at least the extensions it can reach (routing.stage1.reachable)
    and the registered contacts of their endpoints."""

    directory: Directory
    contacts: dict[str, list[str]]  # endpoint name -> contact ids (registered devices), by id
    domain: str
    cached: bool = False  # the directory came from memory (routing_store.cache)
    contact_uris: Mapping[str, str] = field(default_factory=dict)  # contact id -> SIP URI


@dataclass(frozen=True)
class Routed:
    status: str  # ok | noroute | error:<code>
    domain: str
    request: CallRequest | None = None
    data: CallData | None = None
    tree: Tree | None = None

    @property
    def contact_uris(self) -> Mapping[str, str]:
        return self.data.contact_uris if self.data is not None else {}


class CallLookup(Protocol):
    async def route(self, endpoint_id: str, caller_number: str, caller_name: str, called: str) -> Routed: ...


def split_endpoint_id(endpoint_id: str) -> tuple[str, str]:
    """Asterisk's endpoint id ``name@domain`` (the domain names the tenant) -> (name, domain)."""
    name, _, domain = endpoint_id.rpartition("@")
    return name, domain


def route_call(data: CallData, endpoint: str, caller_number: str, caller_name: str, called: str) -> Routed:
    """Stage 1 for a call that arrived on `endpoint` (a name of the data's tenant)."""
    request = CallRequest(
        data.directory.tenant, caller_number, called, endpoint=endpoint, callername=caller_name or None
    )
    tree = build_tree(data.directory, request)
    return Routed(tree.status, data.domain, request, data, tree)
