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
    "ChannelHold",
    "ChannelLeftBridge",
    "ChannelStateChange",
    "ChannelTransfer",
    "ChannelUnhold",
    "ChannelVarset",
    "ContactInfo",
    "ContactStatusChange",
    "Dial",
    "EndpointStateChange",
    "Event",
    "PlaybackFinished",
    "PlaybackStarted",
    "ReferTo",
    "ReferredBy",
    "RequestedDestination",
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


class ChannelHold(Event):
    """The channel's phone put the call on hold (a re-INVITE sendonly/inactive). In a mixing
    bridge Asterisk does nothing else about it: the other parties hear silence unless the app acts."""

    channel: Channel
    musicclass: str = ""


class ChannelUnhold(Event):
    channel: Channel


class RequestedDestination(AriModel):
    """ARI's RequiredDestination: ``destination`` is the Refer-To user part (blind), ``protocol_id``
    the SIP Call-ID of the dialog a REFER with Replaces names (attended)."""

    destination: str = ""
    protocol_id: str | None = None
    additional_protocol_params: tuple[Mapping[str, str], ...] = ()


class ReferTo(AriModel):
    requested_destination: RequestedDestination
    # Attended: the channel of the dialog to replace, its peer, and the bridge they are in.
    destination_channel: Channel | None = None
    connected_channel: Channel | None = None
    bridge: Bridge | None = None


class ReferredBy(AriModel):
    source_channel: Channel  # the channel the REFER came in on (the transferer)
    connected_channel: Channel | None = None
    bridge: Bridge | None = None


class ChannelTransfer(Event):
    """A SIP REFER on a channel whose transfer handling is ``ari-only`` (PJSIP_TRANSFER_HANDLING,
    Asterisk 22.3+): Asterisk answered 202 and waits for the app. ``state`` is absent on the request
    itself; each progress the app reports (POST /channels/{id}/transfer_progress) comes back as
    another ChannelTransfer with the state sent (channel_progress, channel_answered,
    channel_declined)."""

    refer_to: ReferTo
    referred_by: ReferredBy
    state: str | None = None


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
        ChannelHold,
        ChannelUnhold,
        ChannelTransfer,
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
