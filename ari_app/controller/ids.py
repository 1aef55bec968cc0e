"""The ids the controller gives what it creates in Asterisk, and reading a call back out of them.

A call is known by its caller's channel id (Asterisk's own, ``1700000000.12``). Everything the
controller creates for the call carries that id, so an event names its call even when it races
the request that created the object, and a restarted controller recognises what an earlier
process left behind::

    <call>-l<n>       leg n: a device rung for the call (n: the engine's leg id)
    <call>-p<n>       party n: a channel dialed into the call's conference
    conf-<call>       the call's conference bridge
    <call>-ringback   the ringback tone played to the caller
    <call>-t<ms>      a blind transfer of the call's conference: its legs are <call>-t<ms>-l<n>
    <channel>-hold    the hold tone played to a party while everyone else holds
    <channel>-transfer  the ring tone a party being transferred hears while the target rings
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "OurChannel",
    "bridge_id_for",
    "call_of_bridge",
    "call_of_channel",
    "hold_playback_id",
    "leg_channel_id",
    "parse_channel_id",
    "party_channel_id",
    "ringback_playback_id",
    "transfer_playback_id",
]

Kind = Literal["leg", "party"]

_SUFFIX: dict[Kind, str] = {"leg": "l", "party": "p"}
_CHANNEL = re.compile(r"(?P<call>.+)-(?P<kind>[lp])(?P<n>\d+)")
_BRIDGE_PREFIX = "conf-"


@dataclass(frozen=True)
class OurChannel:
    """A channel the controller created: leg or party ``number`` of call ``call_id``."""

    call_id: str
    kind: Kind
    number: int

    @property
    def channel_id(self) -> str:
        return f"{self.call_id}-{_SUFFIX[self.kind]}{self.number}"

    @property
    def stasis_args(self) -> list[str]:
        # The controller reads the channel id, not these; they make `core show channels` readable.
        return [self.kind, self.call_id, str(self.number)]


def leg_channel_id(call_id: str, leg_id: int) -> str:
    return OurChannel(call_id, "leg", leg_id).channel_id


def party_channel_id(call_id: str, n: int) -> str:
    return OurChannel(call_id, "party", n).channel_id


def parse_channel_id(channel_id: str) -> OurChannel | None:
    """The leg or party a channel id names; None for any other channel (a caller's, say)."""
    match = _CHANNEL.fullmatch(channel_id)
    if match is None:
        return None
    kind: Kind = "leg" if match["kind"] == "l" else "party"
    return OurChannel(match["call"], kind, int(match["n"]))


def call_of_channel(channel_id: str) -> str:
    """The call a channel belongs to, if it is one of ours: a caller's channel is its own call."""
    ours = parse_channel_id(channel_id)
    return channel_id if ours is None else ours.call_id


def bridge_id_for(call_id: str) -> str:
    return f"{_BRIDGE_PREFIX}{call_id}"


def call_of_bridge(bridge_id: str) -> str | None:
    """The call of a conference bridge; None for a bridge the controller did not create."""
    if not bridge_id.startswith(_BRIDGE_PREFIX):
        return None
    return bridge_id.removeprefix(_BRIDGE_PREFIX)


def ringback_playback_id(call_id: str) -> str:
    return f"{call_id}-ringback"


def hold_playback_id(channel_id: str) -> str:
    return f"{channel_id}-hold"


def transfer_playback_id(channel_id: str) -> str:
    return f"{channel_id}-transfer"
