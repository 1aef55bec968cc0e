"""ARI's resource objects (rest-api/api-docs of Asterisk 22) as frozen pydantic models.

Only what Asterisk always sends is required; everything else has a default, because Asterisk
leaves keys out when empty (caller_rdnis, channelvars, tenantid, video_source_id, bridgevars) and
older or newer versions add some (protocol_id came in 20). Unknown keys are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AriModel",
    "AsteriskInfo",
    "Bridge",
    "CallerId",
    "Channel",
    "ConfigInfo",
    "DialplanLocation",
    "Endpoint",
    "Playback",
    "StatusInfo",
    "SystemInfo",
]


class AriModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class CallerId(AriModel):
    name: str = ""
    number: str = ""


class DialplanLocation(AriModel):
    """ARI's DialplanCEP: where the channel is (or was, for a channel in Stasis: the Stasis line)."""

    context: str
    exten: str
    priority: int
    app_name: str = ""
    app_data: str = ""


class Channel(AriModel):
    id: str
    name: str
    # Asterisk's ast_state2str: Down, Rsrvd, OffHook, Dialing, Ring, Ringing, Up, Busy,
    # Dialing Offhook, Pre-ring, Unknown.
    state: str
    protocol_id: str = ""
    caller: CallerId = CallerId()
    connected: CallerId = CallerId()
    accountcode: str = ""
    dialplan: DialplanLocation | None = None
    creationtime: datetime | None = None
    language: str = ""
    # Only the variables listed in ari.conf's channelvars, and only once they are set.
    channelvars: Mapping[str, str] = Field(default_factory=dict)
    caller_rdnis: str | None = None
    tenantid: str | None = None


class Bridge(AriModel):
    id: str
    technology: str = ""
    bridge_type: str = ""
    bridge_class: str = ""
    creator: str = ""
    name: str = ""
    channels: tuple[str, ...] = ()
    creationtime: datetime | None = None
    video_mode: str | None = None
    video_source_id: str | None = None
    bridgevars: Mapping[str, str] = Field(default_factory=dict)


class Endpoint(AriModel):
    """A technology endpoint (``PJSIP/1001@acme.example``) and every channel on it, Stasis or not."""

    technology: str
    resource: str
    state: str = ""
    channel_ids: tuple[str, ...] = ()


class Playback(AriModel):
    id: str
    media_uri: str
    target_uri: str
    state: str
    next_media_uri: str | None = None
    language: str | None = None


class SystemInfo(AriModel):
    version: str
    entity_id: str = ""


class ConfigInfo(AriModel):
    name: str = ""
    default_language: str = ""
    max_channels: int | None = None
    max_open_files: int | None = None
    max_load: float | None = None


class StatusInfo(AriModel):
    startup_time: datetime
    last_reload_time: datetime


class AsteriskInfo(AriModel):
    """GET /asterisk/info. Each part is missing when ``only=`` excluded it."""

    system: SystemInfo | None = None
    config: ConfigInfo | None = None
    status: StatusInfo | None = None
    build: Mapping[str, str] | None = None
