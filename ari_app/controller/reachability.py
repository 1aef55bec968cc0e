"""Asterisk's qualify verdict on static contacts, for stage 2 (`routing.stage2.Reachability`).

Exact per contact from ARI ``ContactStatusChange`` events (sent with the ``endpoint:PJSIP``
subscription the controller holds for presence). A contact no event has named yet (the controller
started after Asterisk qualified it) is judged by its endpoint's state, which Asterisk derives from
its contacts: ``offline`` means none is reachable, so each of them is unreachable. An endpoint that
is online with several contacts none of which was reported counts them reachable: its only
unknown case, and a leg to a dead contact still fails on its own (408/503), which the engine treats
like unreachable (fallbacks are tried after it).
"""

from __future__ import annotations

from routing.stage2 import Reachability

__all__ = ["ContactReachability"]

# ContactStatusChange's contact_status values that mean "do not ring it".
_UNREACHABLE = "Unreachable"


class ContactReachability:
    def __init__(self) -> None:
        self._offline: set[str] = set()  # endpoint ids (name@domain) Asterisk reports offline
        self._status: dict[tuple[str, str], str] = {}  # (endpoint id, contact URI) -> last status

    def endpoint_state(self, endpoint_id: str, state: str) -> None:
        if state == "offline":
            self._offline.add(endpoint_id)
        else:
            self._offline.discard(endpoint_id)

    def reset(self, states: list[tuple[str, str]]) -> None:
        """Every endpoint's state as of a (re)subscription; contact reports heard earlier may be stale."""
        self._offline = {e for e, s in states if s == "offline"}
        self._status.clear()

    def contact_status(self, endpoint_id: str, uri: str, status: str) -> None:
        if status == "Removed":
            self._status.pop((endpoint_id, uri), None)
        else:
            self._status[(endpoint_id, uri)] = status

    def reachable(self, endpoint_id: str, uri: str) -> bool:
        status = self._status.get((endpoint_id, uri))
        if status is not None:
            return status != _UNREACHABLE
        return endpoint_id not in self._offline

    def of_domain(self, domain: str) -> Reachability:
        """The view of one tenant's call: stage 2 names endpoints without their domain."""
        return _OfDomain(self, domain)


class _OfDomain:
    def __init__(self, all_: ContactReachability, domain: str) -> None:
        self._all = all_
        self._domain = domain

    def reachable(self, endpoint: str, uri: str) -> bool:
        return self._all.reachable(f"{endpoint}@{self._domain}", uri)
