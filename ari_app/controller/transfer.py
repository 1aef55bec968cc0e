"""Transfers a phone asks for with SIP REFER, handed to the controller by Asterisk (ari-only).

Every channel the controller answers or dials has chan_pjsip's transfer handling set to
``ari-only`` (the caller in the dialplan, legs at originate: there is no endpoint option for it in
Asterisk 22.10), so a REFER becomes a ``ChannelTransfer`` event and Asterisk waits for the app,
reporting to the phone what the app says (``transfer_progress``: NOTIFY sipfrag 100, 200, 603, 503).

Blind: the Refer-To number is routed by the routing tree as a new call of the transferer (its
endpoint, its extension: its permissions and its caller id rules) and rings like any call
(:class:`TransferCall`); the device that answers joins the transferer's conference and the
transferer leaves it. Nothing answering, or a number that does not route, is reported as declined
and leaves the conference as it was.

Attended: the REFER names (Replaces) the transferer's second call. The parties of that call's
conference move into the first one and the transferer's two channels leave: the two remote parties
talk. A REFER naming a dialog the controller has no conference for is declined, both calls as
they were; one whose move fails midway (a party hung up meanwhile) puts the parties it took back
into the second call (Controller._move_back) and is declined.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Literal

from ari_app.ari import AriClient, AriError, Channel
from ari_app.controller.call import Leg, LiveCall
from ari_app.controller.conference import Conference
from ari_app.controller.ids import transfer_playback_id
from pbx_base.settings import get_settings

__all__ = ["TRANSFERER_HANGUP_S", "TransferCall", "TransferOutcome", "report_progress"]

logger = logging.getLogger("ari_app.controller")

# The transferer's phone ends its dialog itself once told the transfer worked (NOTIFY 200); a
# channel still there this long after is hung up. Hanging up at once could send the BYE before
# the NOTIFY, and the phone would show a failed transfer.
TRANSFERER_HANGUP_S = 2.0


@dataclass(frozen=True)
class TransferOutcome:
    """What a transfer did, for call records (Controller.on_transfer)."""

    call_id: str  # the conference's call
    kind: Literal["blind", "attended"]
    transferer: str  # the channel the REFER came on
    target: str  # the number dialed (blind) or the other call's id (attended)
    result: str  # answered | busy | unavailable | noanswer | noroute | refused | failed
    answered_by: str | None = None  # the channel that joined the conference in the transferer's place


async def report_progress(
    ari: AriClient, channel_id: str, state: str, log: logging.LoggerAdapter[logging.Logger]
) -> None:
    """The REFER's outcome to the transferer's phone; a transferer gone already is not an error."""
    try:
        await ari.channels.transfer_progress(channel_id, state)
    except AriError as exc:
        log.info("transfer progress %s to %s: %s", state, channel_id, exc)


class TransferCall(LiveCall):
    """The call a blind transfer rings: the routing tree's fork for the Refer-To number, with the
    transferer as the caller. It answers into the transferer's conference instead of opening one,
    and a call nobody answers only tells the transferer."""

    def __init__(self, *, conference: Conference, number: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.target = conference  # not self.conference before it answers: see _connect
        self.number = number
        self.answered_by: str | None = None
        self.refused: str | None = None
        self._ring_tones: list[str] = []  # the parties hearing the ring tone while the target rings
        conference.transfers += 1

    @property
    def transferer(self) -> Channel:
        return self.caller

    async def start(self, ringback: str | None = None) -> None:
        """The parties being transferred hear ringing (not silence) until the target answers or
        the transfer fails."""
        for channel_id in sorted(self.target.members - {self.transferer.id}):
            try:
                await self.ari.channels.play(channel_id, "tone:ring", playback_id=transfer_playback_id(channel_id))
                self._ring_tones.append(channel_id)
            except Exception as exc:  # a courtesy: the transfer goes on without it
                self.log.info("ring tone to %s: %s", channel_id, exc)
        await super().start()

    async def _stop_ring_tones(self) -> None:
        for channel_id in self._ring_tones:
            try:
                await self.ari.playbacks.stop(transfer_playback_id(channel_id))
            except AriError:
                pass  # over already
        self._ring_tones = []

    def leg_ringing(self) -> None:
        """The transferer already had its NOTIFY 100; nobody else is to be rung back."""

    def caller_hung_up(self) -> None:
        """A transferer hangs up as soon as its REFER is accepted: the transfer goes on."""

    async def _unanswered(self, result: str) -> None:
        self.refused = result
        await self._stop_ring_tones()
        await report_progress(self.ari, self.transferer.id, _failure_state(result), self.log)
        await self.target.transfer_ended()

    async def _connect(self, leg: Leg) -> None:
        conf = self.target
        # The controller finds the conference of this call's legs through it from here on.
        self.conference = conf
        try:
            await self._stop_ring_tones()
            await asyncio.wait_for(leg.in_stasis.wait(), get_settings().answered_leg_wait_s)
            await conf.add_member(leg.channel_id)
            self.answered_by = leg.channel_id
            self.log.info("transfer to %s answered by %s", self.number, leg.channel_id)
            await report_progress(self.ari, self.transferer.id, "channel_answered", self.log)
            await conf.remove_member(self.transferer.id)
            self._spawn(hang_up_later(self.ari, self.transferer.id))
        except (AriError, TimeoutError) as exc:
            self.log.warning("transfer to %s: bridging failed: %s", self.number, exc)
            self.refused = "failed"
            await report_progress(self.ari, self.transferer.id, "channel_declined", self.log)
            await self._hangup(leg.channel_id, "normal")
        finally:
            await conf.transfer_ended()


async def hang_up_later(ari: AriClient, channel_id: str) -> None:
    await asyncio.sleep(TRANSFERER_HANGUP_S)
    try:
        await ari.channels.hangup(channel_id, reason="normal")
    except AriError:
        pass  # the phone hung up itself, as it should


def _failure_state(result: str) -> str:
    # 503 for nobody there to ring; 603 for everything that rang or was refused.
    return "channel_unavailable" if result == "unavailable" else "channel_declined"
