"""Typed ARI events: the ones a Stasis controller acts on, and :class:`UnknownEvent` for the rest.

Field names are ARI's own (events.json of Asterisk 22), so a payload reads the same in a capture
and in code. Match on the class: ``match event: case StasisStart(channel=ch): ...``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import Field

from ari_app.ari.models import AriModel, Bridge, Channel, Endpoint, Playback

__all__ = [
    "ApplicationReplaced",
    "BridgeCreated",
    "BridgeDestroyed",
    "ChannelDestroyed",
    "ChannelDtmfReceived",
    "ChannelEnteredBridge",
    "ChannelHangupRequest",
    "ChannelLeftBridge",
    "ChannelStateChange",
    "ChannelVarset",
    "ContactInfo",
    "ContactStatusChange",
    "Dial",
    "EndpointStateChange",
    "Event",
    "PlaybackFinished",
    "PlaybackStarted",
    "StasisEnd",
    "StasisStart",
    "UnknownEvent",
    "parse_event",
]


class Event(AriModel):
    type: str
    # The app the event was sent to: Asterisk stamps it on every event it delivers.
    application: str = ""
    timestamp: datetime | None = None
    asterisk_id: str | None = None


class StasisStart(Event):
    channel: Channel
    args: tuple[str, ...] = ()
    # Set when a masquerade (e.g. an attended transfer) put this channel in place of one we had.
    replace_channel: Channel | None = None


class StasisEnd(Event):
    channel: Channel


class ChannelStateChange(Event):
    channel: Channel


class ChannelDestroyed(Event):
    channel: Channel
    cause: int
    cause_txt: str = ""
    tech_cause: int | None = None


class ChannelHangupRequest(Event):
    channel: Channel
    cause: int | None = None
    soft: bool | None = None
    tech_cause: int | None = None


class Dial(Event):
    """A dial attempt's progress. ``dialstatus`` is "" at the start of the attempt, then
    RINGING/PROGRESS/ANSWER/BUSY/NOANSWER/CANCEL/CHANUNAVAIL/CONGESTION. For a leg dialed over
    ARI, ``caller`` is None even when dial() named one (Asterisk 22.10.1): know legs by peer id."""

    peer: Channel
    dialstatus: str
    caller: Channel | None = None
    dialstring: str | None = None
    forward: str | None = None
    forwarded: Channel | None = None


class ChannelDtmfReceived(Event):
    channel: Channel
    digit: str
    duration_ms: int = 0


class BridgeCreated(Event):
    bridge: Bridge


class BridgeDestroyed(Event):
    bridge: Bridge


class ChannelEnteredBridge(Event):
    bridge: Bridge
    channel: Channel | None = None


class ChannelLeftBridge(Event):
    bridge: Bridge
    channel: Channel


class ChannelVarset(Event):
    variable: str
    value: str
    # None for a global variable.
    channel: Channel | None = None


class EndpointStateChange(Event):
    """Sent when an endpoint's state or its set of channels changes (with an ``endpoint:`` event
    source subscription): ``endpoint.channel_ids`` is then every channel on it."""

    endpoint: Endpoint


class ContactInfo(AriModel):
    uri: str
    contact_status: str  # Reachable | Unreachable | Unknown | NonQualified | Removed | Updated
    aor: str = ""


class ContactStatusChange(Event):
    """A contact's qualify status changed (with an ``endpoint:`` event source subscription)."""

    endpoint: Endpoint
    contact_info: ContactInfo


class PlaybackStarted(Event):
    playback: Playback


class PlaybackFinished(Event):
    playback: Playback


class ApplicationReplaced(Event):
    """Another WebSocket registered our app name: Asterisk now sends it our events, not us."""


class UnknownEvent(Event):
    """Any event type not modelled here; ``raw`` is the whole payload."""

    raw: Mapping[str, Any] = Field(default_factory=dict)


_TYPES: dict[str, type[Event]] = {
    cls.__name__: cls
    for cls in (
        StasisStart,
        StasisEnd,
        ChannelStateChange,
        ChannelDestroyed,
        ChannelHangupRequest,
        Dial,
        ChannelDtmfReceived,
        BridgeCreated,
        BridgeDestroyed,
        ChannelEnteredBridge,
        ChannelLeftBridge,
        ChannelVarset,
        EndpointStateChange,
        ContactStatusChange,
        PlaybackStarted,
        PlaybackFinished,
        ApplicationReplaced,
    )
}


def parse_event(data: Mapping[str, Any]) -> Event:
    """The typed event for an ARI event payload. Raises ``pydantic.ValidationError`` (a
    ValueError) when a known type lacks what it must have: better loud than a call left in Stasis
    with a half-read event."""
    cls = _TYPES.get(str(data.get("type", "")))
    if cls is None:
        return UnknownEvent.model_validate({**data, "raw": dict(data)})
    return cls.model_validate(data)
