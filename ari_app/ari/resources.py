"""Typed REST calls on channels, bridges and Asterisk itself (routes of Asterisk 22's api-docs).

Each method is one request; errors come from the transport (:class:`AriNotFound` when the channel
hung up meanwhile, :class:`AriConflict` when it left Stasis).
"""

from __future__ import annotations

import builtins
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from ari_app.ari.models import AsteriskInfo, Bridge, Channel, Endpoint, Playback
from ari_app.ari.transport import AriTransport

__all__ = [
    "Applications",
    "AsteriskApi",
    "Bridges",
    "Channels",
    "DialplanTarget",
    "Endpoints",
    "Playbacks",
    "encode_params",
]

ParamValue = str | int | bool | Sequence[str] | None


def encode_params(**params: ParamValue) -> dict[str, str]:
    """Query parameters as ARI reads them: None left out, booleans as true/false, lists (media,
    formats, appArgs) comma-joined, which is how ARI splits multi-valued parameters."""
    out: dict[str, str] = {}
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, int | str):
            out[key] = str(value)
        else:
            out[key] = ",".join(value)
    return out


@dataclasses.dataclass(frozen=True)
class DialplanTarget:
    """Where an originated channel goes once answered, instead of a Stasis app."""

    context: str
    extension: str
    priority: int | None = None
    label: str | None = None


def _seg(value: str) -> str:
    # Ids are caller-chosen strings; one with a '/' must not reach another route.
    return quote(value, safe="")


def _variables_body(variables: Mapping[str, str] | None) -> dict[str, Any] | None:
    return None if variables is None else {"variables": dict(variables)}


class _Resource:
    def __init__(self, transport: AriTransport, app: str, timeout: float | None) -> None:
        self._t = transport
        self._app = app
        self._timeout = timeout

    async def _call(self, method: str, path: str, params: dict[str, str] | None = None, json: Any = None) -> Any:
        return await self._t.request(method, path, params=params or None, json=json, timeout=self._timeout)


class Channels(_Resource):
    async def get(self, channel_id: str) -> Channel:
        return Channel.model_validate(await self._call("GET", f"/channels/{_seg(channel_id)}"))

    async def list(self) -> builtins.list[Channel]:
        return [Channel.model_validate(c) for c in await self._call("GET", "/channels")]

    async def answer(self, channel_id: str) -> None:
        await self._call("POST", f"/channels/{_seg(channel_id)}/answer")

    async def hangup(self, channel_id: str, *, reason: str | None = None, reason_code: int | None = None) -> None:
        """``reason``: ARI's names (normal, busy, congestion, no_answer, answered_elsewhere, ...);
        ``reason_code``: a Q.850 cause. ARI takes one or the other."""
        if reason is not None and reason_code is not None:
            raise ValueError("hangup takes reason or reason_code, not both")
        await self._call(
            "DELETE", f"/channels/{_seg(channel_id)}", encode_params(reason=reason, reason_code=reason_code)
        )

    async def ring(self, channel_id: str) -> None:
        await self._call("POST", f"/channels/{_seg(channel_id)}/ring")

    async def ring_stop(self, channel_id: str) -> None:
        await self._call("DELETE", f"/channels/{_seg(channel_id)}/ring")

    async def progress(self, channel_id: str) -> None:
        """183 Session Progress: early media, so the caller hears what we play before answer."""
        await self._call("POST", f"/channels/{_seg(channel_id)}/progress")

    async def create(
        self,
        endpoint: str,
        *,
        app: str | None = None,
        app_args: str | Sequence[str] | None = None,
        channel_id: str | None = None,
        other_channel_id: str | None = None,
        originator: str | None = None,
        formats: Sequence[str] | None = None,
        variables: Mapping[str, str] | None = None,
    ) -> Channel:
        """A channel that is not dialed yet (then :meth:`dial`); it enters Stasis when answered.
        ``originator`` (the caller's channel id) carries its codecs and linkedid over."""
        params = encode_params(
            endpoint=endpoint,
            app=app or self._app,
            appArgs=app_args,
            channelId=channel_id,
            otherChannelId=other_channel_id,
            originator=originator,
            formats=formats,
        )
        return Channel.model_validate(await self._call("POST", "/channels/create", params, _variables_body(variables)))

    async def dial(self, channel_id: str, *, caller: str | None = None, timeout: int | None = None) -> None:
        """Dial a created channel. ``caller``: the channel id whose connected line it gets;
        ``timeout`` in seconds, ARI's default 0 is no timeout."""
        await self._call("POST", f"/channels/{_seg(channel_id)}/dial", encode_params(caller=caller, timeout=timeout))

    async def originate(
        self,
        endpoint: str,
        *,
        app: str | None = None,
        app_args: str | Sequence[str] | None = None,
        dialplan: DialplanTarget | None = None,
        caller_id: str | None = None,
        timeout: int | None = None,
        variables: Mapping[str, str] | None = None,
        channel_id: str | None = None,
        other_channel_id: str | None = None,
        originator: str | None = None,
        formats: Sequence[str] | None = None,
    ) -> Channel:
        """Create and dial in one call. Once answered the channel enters Stasis (``app``, default
        ours, with ``app_args``) or, given ``dialplan``, runs that dialplan location instead.
        ``timeout``: seconds to wait for an answer, -1 for no limit (ARI's default is 30).
        ``channel_id``: our id for it, so events that race this request's answer are known, and
        so a timed-out request can be checked with :meth:`get`."""
        if dialplan is not None and (app is not None or app_args is not None):
            raise ValueError("originate goes to a Stasis app or to a dialplan location, not both")
        target = (
            encode_params(app=app or self._app, appArgs=app_args)
            if dialplan is None
            else encode_params(
                context=dialplan.context, extension=dialplan.extension, priority=dialplan.priority, label=dialplan.label
            )
        )
        params = encode_params(endpoint=endpoint) | target
        params |= encode_params(
            callerId=caller_id,
            timeout=timeout,
            channelId=channel_id,
            otherChannelId=other_channel_id,
            originator=originator,
            formats=formats,
        )
        return Channel.model_validate(await self._call("POST", "/channels", params, _variables_body(variables)))

    async def continue_in_dialplan(
        self,
        channel_id: str,
        *,
        context: str | None = None,
        extension: str | None = None,
        priority: int | None = None,
        label: str | None = None,
    ) -> None:
        """Leave Stasis; with no arguments, at the priority after the Stasis() line."""
        params = encode_params(context=context, extension=extension, priority=priority, label=label)
        await self._call("POST", f"/channels/{_seg(channel_id)}/continue", params)

    async def set_variable(self, channel_id: str, variable: str, value: str | None) -> None:
        """``value`` None unsets the variable."""
        params = encode_params(variable=variable, value=value)
        await self._call("POST", f"/channels/{_seg(channel_id)}/variable", params)

    async def get_variable(self, channel_id: str, variable: str) -> str:
        answer = await self._call("GET", f"/channels/{_seg(channel_id)}/variable", encode_params(variable=variable))
        return str(answer["value"])

    async def play(
        self,
        channel_id: str,
        media: str | Sequence[str],
        *,
        lang: str | None = None,
        playback_id: str | None = None,
        offsetms: int | None = None,
        skipms: int | None = None,
    ) -> Playback:
        """``media``: URIs such as ``sound:hello-world`` or ``tone:ring;tonezone=de``; several play
        one after the other."""
        params = encode_params(media=media, lang=lang, playbackId=playback_id, offsetms=offsetms, skipms=skipms)
        return Playback.model_validate(await self._call("POST", f"/channels/{_seg(channel_id)}/play", params))

    async def start_moh(self, channel_id: str, moh_class: str | None = None) -> None:
        await self._call("POST", f"/channels/{_seg(channel_id)}/moh", encode_params(mohClass=moh_class))

    async def transfer_progress(self, channel_id: str, state: str) -> None:
        """Tell the transferer's phone how its REFER goes (a NOTIFY with a sipfrag):
        channel_progress (100), channel_answered (200, the end), channel_declined (603) or
        channel_unavailable (503). ``channel_id``: the channel the ChannelTransfer came on."""
        await self._call("POST", f"/channels/{_seg(channel_id)}/transfer_progress", encode_params(states=state))

    async def stop_moh(self, channel_id: str) -> None:
        await self._call("DELETE", f"/channels/{_seg(channel_id)}/moh")


class Bridges(_Resource):
    async def create(
        self, type: str | Sequence[str] = "mixing", *, name: str | None = None, bridge_id: str | None = None
    ) -> Bridge:
        """``type``: mixing, holding, dtmf_events, proxy_media, video_sfu, video_single (a list
        combines them). A taken ``bridge_id`` is a 409, not an update of the existing bridge."""
        params = encode_params(type=type, name=name, bridgeId=bridge_id)
        return Bridge.model_validate(await self._call("POST", "/bridges", params))

    async def get(self, bridge_id: str) -> Bridge:
        return Bridge.model_validate(await self._call("GET", f"/bridges/{_seg(bridge_id)}"))

    async def list(self) -> builtins.list[Bridge]:
        return [Bridge.model_validate(b) for b in await self._call("GET", "/bridges")]

    async def add_channel(
        self,
        bridge_id: str,
        channel: str | Sequence[str],
        *,
        role: str | None = None,
        absorb_dtmf: bool | None = None,
        mute: bool | None = None,
        inhibit_connected_line_updates: bool | None = None,
    ) -> None:
        params = encode_params(
            channel=channel,
            role=role,
            absorbDTMF=absorb_dtmf,
            mute=mute,
            inhibitConnectedLineUpdates=inhibit_connected_line_updates,
        )
        await self._call("POST", f"/bridges/{_seg(bridge_id)}/addChannel", params)

    async def remove_channel(self, bridge_id: str, channel: str | Sequence[str]) -> None:
        await self._call("POST", f"/bridges/{_seg(bridge_id)}/removeChannel", encode_params(channel=channel))

    async def destroy(self, bridge_id: str) -> None:
        await self._call("DELETE", f"/bridges/{_seg(bridge_id)}")

    async def start_moh(self, bridge_id: str, moh_class: str | None = None) -> None:
        await self._call("POST", f"/bridges/{_seg(bridge_id)}/moh", encode_params(mohClass=moh_class))

    async def stop_moh(self, bridge_id: str) -> None:
        await self._call("DELETE", f"/bridges/{_seg(bridge_id)}/moh")

    async def play(
        self, bridge_id: str, media: str | Sequence[str], *, lang: str | None = None, playback_id: str | None = None
    ) -> Playback:
        params = encode_params(media=media, lang=lang, playbackId=playback_id)
        return Playback.model_validate(await self._call("POST", f"/bridges/{_seg(bridge_id)}/play", params))


class Playbacks(_Resource):
    async def get(self, playback_id: str) -> Playback:
        return Playback.model_validate(await self._call("GET", f"/playbacks/{_seg(playback_id)}"))

    async def stop(self, playback_id: str) -> None:
        """Stop and forget the playback; :class:`AriNotFound` once it is over."""
        await self._call("DELETE", f"/playbacks/{_seg(playback_id)}")

    async def control(self, playback_id: str, operation: str) -> None:
        """``operation``: restart, pause, unpause, reverse, forward."""
        await self._call("POST", f"/playbacks/{_seg(playback_id)}/control", encode_params(operation=operation))


class AsteriskApi(_Resource):
    async def info(self, only: Sequence[str] | None = None) -> AsteriskInfo:
        """``only``: a subset of build, system, config, status."""
        return AsteriskInfo.model_validate(await self._call("GET", "/asterisk/info", encode_params(only=only)))

    async def ping(self) -> str:
        answer = await self._call("GET", "/asterisk/ping")
        return str(answer["asterisk_id"])


class Endpoints(_Resource):
    async def list(self, technology: str | None = None) -> builtins.list[Endpoint]:
        path = "/endpoints" if technology is None else f"/endpoints/{_seg(technology)}"
        return [Endpoint.model_validate(e) for e in await self._call("GET", path)]

    async def get(self, technology: str, resource: str) -> Endpoint:
        return Endpoint.model_validate(await self._call("GET", f"/endpoints/{_seg(technology)}/{_seg(resource)}"))


class Applications(_Resource):
    async def subscribe(self, event_source: str | Sequence[str], app: str | None = None) -> None:
        """``event_source``: ``channel:<id>``, ``bridge:<id>``, ``endpoint:<tech>[/<resource>]``,
        ``deviceState:<name>``. Events of the source reach the app until it unsubscribes."""
        name = app or self._app
        await self._call("POST", f"/applications/{_seg(name)}/subscription", encode_params(eventSource=event_source))

    async def filter(self, allowed: Sequence[str] = (), disallowed: Sequence[str] = (), app: str | None = None) -> None:
        """Only these event types reach the app (``allowed``; empty = all) minus ``disallowed``.
        Asterisk drops the others before serializing them. The filter stays with the app in
        Asterisk, also for the next process that takes the app name: each sets its own."""
        name = app or self._app
        body = {"allowed": [{"type": t} for t in allowed], "disallowed": [{"type": t} for t in disallowed]}
        await self._call("PUT", f"/applications/{_seg(name)}/eventFilter", None, body)
