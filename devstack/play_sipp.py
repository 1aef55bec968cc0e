"""The sipp scenarios of a live play, generated per run: a device that behaves as the scenario says,
and a caller that hangs up at the horizon. Times are absolute (epoch ms) so every process agrees
on when the call started without talking to the others."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["caller_xml", "device_xml"]

# The ACK of a non-2xx final and a CANCEL belong to the INVITE's transaction: same branch.
_INV = "z9hG4bK-[pid]-[call_number]-inv{}"
_HEAD = '<?xml version="1.0" encoding="ISO-8859-1" ?>\n'

_RESPONSE = """
  <send{retrans}>
    <![CDATA[
      SIP/2.0 {status}
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]dev[call_number]
      [last_Call-ID:]
      CSeq: [$invcseq] INVITE
      Contact: <sip:[local_ip]:[local_port];transport=[transport]>
{body}
    ]]>
  </send>"""

_SDP = """      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=dev 1 1 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000
"""

_NO_BODY = "      Content-Length: 0\n"


def _reply(status: str, *, sdp: bool = False, retrans: bool = False) -> str:
    return _RESPONSE.format(status=status, body=_SDP if sdp else _NO_BODY, retrans=' retrans="500"' if retrans else "")


def _ok_to_last(*, sdp: bool = False) -> str:
    """200 OK to the request just received (a CANCEL or BYE; with ``sdp``, a re-INVITE)."""
    body = "      Contact: <sip:[local_ip]:[local_port];transport=[transport]>\n" + _SDP if sdp else _NO_BODY
    return f"""
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
{body}
    ]]>
  </send>"""


def _cancelled() -> str:
    # CANCEL: 200 to it, 487 to the INVITE (same CSeq number, remembered from the INVITE), ACK.
    return _ok_to_last() + _reply("487 Request Terminated") + '\n  <recv request="ACK"/>\n  <nop next="end"/>'


def _device_refer(target: str) -> str:
    """The answered device transfers its caller to ``target`` (blind): REFER in its own dialog,
    built from the INVITE it answered (``from_hdr``, ``to_hdr``, ``contact``, read on receipt),
    then each NOTIFY answered 200 until the final one; the call goes on either way (Asterisk ends
    a transferred device's dialog itself)."""
    notify = _ok_to_last().replace("<send>", '<send next="dnotify" test="dtrying">', 1)
    return f"""
  <send retrans="500">
    <![CDATA[
      REFER [$contact] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: [$to_hdr];tag=[pid]dev[call_number]
      To: [$from_hdr]
      Call-ID: [call_id]
      CSeq: 1 REFER
      Contact: <sip:[local_ip]:[local_port];transport=[transport]>
      Refer-To: <sip:{target}@[remote_ip]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="202"/>
  <label id="dnotify"/>
  <recv request="NOTIFY">
    <action>
      <ereg regexp="SIP/2.0 [0-9]" search_in="body" check_it="true" assign_to="dclass"/>
      <strcmp assign_to="dis1" variable="dclass" value="SIP/2.0 1"/>
      <test assign_to="dtrying" variable="dis1" compare="equal" value="0"/>
    </action>
  </recv>{notify}"""


def _talk(transfer: str = "") -> str:
    # Answered: take re-INVITEs (media changes) until the BYE; ``transfer`` first, if any.
    return (
        '\n  <recv request="ACK" crlf="true"/>' + transfer + '\n  <label id="talk"/>'
        '\n  <recv request="INVITE" optional="true" next="reinvite"/>\n  <recv request="BYE"/>'
        + _ok_to_last()
        + '\n  <nop next="end"/>\n  <label id="reinvite"/>'
        + _ok_to_last(sdp=True)
        + '\n  <recv request="ACK"/>\n  <nop next="talk"/>'
    )


def _wait_until(epoch_ms: int) -> str:
    return f"""
  <nop>
    <action>
      <gettimeofday assign_to="now_s,now_us"/>
      <multiply assign_to="now_s" value="1000"/>
      <divide assign_to="now_us" value="1000"/>
      <add assign_to="now_s" variable="now_us"/>
      <assign assign_to="wait" value="{epoch_ms}"/>
      <subtract assign_to="wait" variable="now_s"/>
      <test assign_to="late" variable="wait" compare="less_than" value="1"/>
    </action>
  </nop>
  <nop next="due" test="late"/>
  <pause variable="wait"/>
  <label id="due"/>"""


def device_xml(behaviour: Mapping[str, Any], t0_ms: int) -> str:
    """One device: rings (180) on the INVITE, then answers or rejects at the scenario's absolute
    time (``answer_at``/``reject_at``, seconds from the caller's INVITE), rejects at once
    (``busy: true``), or rings until cancelled. A CANCEL while it waits is answered 200 + 487.
    Answered, ``transfer_at`` (same clock) with ``transfer_to`` (a number) makes it transfer the
    call there (blind, SIP REFER), ``transfer_at - answer_at`` after its answer; a re-INVITE
    meanwhile restarts that wait (it comes within milliseconds of the answer)."""
    transfer = ""
    dialog = ""
    if "transfer_at" in behaviour:
        # Counted from the answer, in a recv rather than a pause: Asterisk re-INVITEs an answered
        # device (direct media, connected line), which a pause would take as unexpected.
        delay_ms = max(1, int((float(behaviour["transfer_at"]) - float(behaviour.get("answer_at", 0))) * 1000))
        transfer = (
            f'\n  <label id="dwait"/>\n  <recv request="INVITE" timeout="{delay_ms}" ontimeout="refer_due"/>'
            + _ok_to_last(sdp=True)
            + '\n  <recv request="ACK"/>\n  <nop next="dwait"/>\n  <label id="refer_due"/>'
            + _device_refer(str(behaviour["transfer_to"]))
        )
        dialog = """
      <ereg regexp=".*" search_in="hdr" header="From:" check_it="true" assign_to="from_hdr"/>
      <ereg regexp=".*" search_in="hdr" header="To:" check_it="true" assign_to="to_hdr"/>
      <ereg regexp="sips?:[^>;]*" search_in="hdr" header="Contact:" check_it="true" assign_to="contact"/>"""
    parts = [
        _HEAD,
        '<scenario name="device">',
        f"""
  <recv request="INVITE" crlf="true">
    <action>
      <ereg regexp="[0-9]+" search_in="hdr" header="CSeq:" check_it="true" assign_to="invcseq"/>{dialog}
    </action>
  </recv>""",
    ]
    if behaviour.get("busy"):
        parts += [_reply("486 Busy Here"), '\n  <recv request="ACK"/>\n  <nop next="end"/>']
    else:
        parts.append(_reply("180 Ringing"))
        if "answer_at" in behaviour or "reject_at" in behaviour:
            key = "answer_at" if "answer_at" in behaviour else "reject_at"
            parts.append(_wait_until(t0_ms + int(float(behaviour[key]) * 1000)))
            if key == "answer_at":
                parts += [_reply("200 OK", sdp=True, retrans=True), _talk(transfer)]
            else:
                parts += [_reply("486 Busy Here"), '\n  <recv request="ACK"/>\n  <nop next="end"/>']
            # A CANCEL during the pause is "unexpected" to sipp: it jumps here.
            parts += ['\n  <label id="_unexp.main"/>', _cancelled()]
        else:
            parts += ['\n  <recv request="CANCEL"/>', _cancelled()]
    parts.append('\n  <label id="end"/>\n</scenario>\n')
    return "".join(parts)


def _refer(target: str, after_failure_ms: int) -> str:
    """A transfer of the answered call to ``target`` (a number of the caller's domain; with
    ``?Replaces=...`` after it, an attended transfer to the dialog it names): REFER,
    its 202, then each NOTIFY answered 200 until the sipfrag's final status. 200: the transfer
    worked, the caller hangs up; anything else: the call is still up, ``after_failure_ms`` more
    talk, then BYE. The loop jumps from the 200's send itself: a NOTIFY arriving while sipp sits
    on a <nop> after it would be "unexpected"."""
    user, mark, rest = target.partition("?")
    headers = mark + rest
    return f"""
  <label id="refer"/>
  <send retrans="500">
    <![CDATA[
      REFER [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "[field4]" <sip:[field0]@[field1]>;tag=[pid]call[call_number]
      To: <sip:[field3]@[field1]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 5 REFER
      Contact: <sip:[field0]@[local_ip]:[local_port];transport=[transport]>
      Refer-To: <sip:{user}@[field1]{headers}>
      Referred-By: <sip:[field0]@[field1]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="202"/>
  <label id="notify"/>
  <recv request="NOTIFY">
    <action>
      <ereg regexp="SIP/2.0 [0-9]" search_in="body" check_it="true" assign_to="class"/>
      <strcmp assign_to="is2" variable="class" value="SIP/2.0 2"/>
      <test assign_to="transferred" variable="is2" compare="equal" value="0"/>
      <strcmp assign_to="is1" variable="class" value="SIP/2.0 1"/>
      <test assign_to="trying" variable="is1" compare="equal" value="0"/>
    </action>
  </recv>{_ok_to_last().replace("<send>", '<send next="notify" test="trying">', 1)}
  <nop next="bye" test="transferred"/>
  <pause milliseconds="{after_failure_ms}"/>
  <nop next="bye"/>"""


def _reinvite(cseq: int, direction: str) -> str:
    """A re-INVITE of the answered call with the media ``direction`` (sendonly: hold; sendrecv:
    resume), and its ACK. The SDP version goes up with the CSeq: the offer changed."""
    sdp = _SDP.replace("o=dev 1 1", f"o=dev 1 {cseq}") + f"      a={direction}\n"
    return f"""
  <send retrans="500">
    <![CDATA[
      INVITE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "[field4]" <sip:[field0]@[field1]>;tag=[pid]call[call_number]
      To: <sip:[field3]@[field1]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: {cseq} INVITE
      Contact: <sip:[field0]@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
{sdp}
    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="200"/>
  <send>
    <![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "[field4]" <sip:[field0]@[field1]>;tag=[pid]call[call_number]
      To: <sip:[field3]@[field1]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: {cseq} ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>"""


def _hold(talk_ms: int, hold_ms: int) -> str:
    """``talk_ms`` of talk, then hold (sendonly) for ``hold_ms``, then resume."""
    return (
        f'\n  <pause milliseconds="{talk_ms}"/>'
        + _reinvite(3, "sendonly")
        + f'\n  <pause milliseconds="{hold_ms}"/>'
        + _reinvite(4, "sendrecv")
    )


def caller_xml(
    horizon_ms: int,
    talk_ms: int = 1000,
    *,
    auth: bool = True,
    transfer_to: str | None = None,
    after_ms: int = 1000,
    hold_ms: int | None = None,
    until_bye: bool = False,
) -> str:
    """The caller: INVITE with digest auth; stays until a final answer or the horizon, then CANCEL;
    once answered, ``talk_ms`` of talk and BYE. Fields: 0 from user, 1 domain, 2 [authentication],
    3 number, 4 display name. Without ``auth`` (a carrier, known by its address; or nobody), the
    INVITE goes without credentials. A 401 to the INVITE that carries them (or would) is final.
    With ``transfer_to``, the talk ends in a blind transfer to that number instead (``_refer``:
    a failed one talks ``after_ms`` more before the BYE). With ``hold_ms``, the caller first talks
    ``talk_ms``, holds the call that long, resumes it, then talks ``talk_ms`` again. In-dialog
    CSeqs: re-INVITEs 3 and 4, REFER 5, BYE 9. With ``until_bye``, the answered caller waits for
    the other side's BYE instead (up to the horizon) and never sends one."""
    talk = [
        '\n  <label id="talk"/>',
        f'\n  <recv request="INVITE" timeout="{talk_ms}" ontimeout="{"bye" if transfer_to is None else "refer"}"/>',
        _ok_to_last(sdp=True),
        '\n  <recv request="ACK"/>\n  <nop next="talk"/>',
        "" if transfer_to is None else _refer(transfer_to, after_ms),
    ]
    if until_bye:
        talk = [f'\n  <recv request="BYE" timeout="{horizon_ms}"/>', _ok_to_last(), '\n  <nop next="end"/>']
    invite = (
        """
  <send retrans="500"{rtd}>
    <![CDATA[
      INVITE sip:[field3]@[field1] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=z9hG4bK-[pid]-[call_number]-inv{cseq}
      From: "[field4]" <sip:[field0]@[field1]>;tag=[pid]call[call_number]
      To: <sip:[field3]@[field1]>
      Call-ID: [call_id]
      CSeq: {cseq} INVITE
      Contact: <sip:[field0]@[local_ip]:[local_port];transport=[transport]>
{auth}      Max-Forwards: 70
"""
        + _SDP
        + """
    ]]>
  </send>"""
    )
    ack = """
  <send>
    <![CDATA[
      ACK {uri} SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch={branch}
      From: "[field4]" <sip:[field0]@[field1]>;tag=[pid]call[call_number]
      To: <sip:[field3]@[field1]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: {cseq} ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>"""
    until = f' timeout="{horizon_ms}" ontimeout="horizon"'
    # 401 here: credentials refused (or, without auth, none sent): final either way.
    codes = (401, 403, 404, 408, 480, 486, 487, 488, 500, 503, 603)
    finals = "".join(f'\n  <recv response="{code}" optional="true" next="failed"/>' for code in codes)
    challenge = [
        invite.format(cseq=1, auth="", rtd=""),
        '\n  <recv response="100" optional="true"/>',
        '\n  <recv response="401" auth="true"/>',
        ack.format(uri="sip:[field3]@[field1]", cseq=1, branch=_INV.format(1)),
    ]
    return "".join(
        [
            _HEAD,
            '<scenario name="caller">',
            *(challenge if auth else []),
            # Without auth the INVITE still has CSeq 2: the CANCEL and ACKs below name it.
            invite.format(cseq=2, auth="      [field2]\n" if auth else "", rtd=' start_rtd="setup"'),
            # sipp times only the recv the call waits at, optional ones included: every recv
            # of the ringing phase carries the horizon (provisionals arrive within milliseconds).
            f'\n  <recv response="100" optional="true"{until}/>',
            '\n  <label id="progress"/>',
            f'\n  <recv response="180" optional="true" next="progress"{until}/>',
            f'\n  <recv response="183" optional="true" next="progress"{until}/>',
            finals.replace("/>", f"{until}/>"),
            f'\n  <recv response="200" rrs="true"{until}/>',
            ack.format(uri="[next_url]", cseq=2, branch="[branch]").replace("<send>", '<send rtd="setup">', 1),
            "" if hold_ms is None else _hold(talk_ms, hold_ms),
            *talk,
            '\n  <label id="bye"/>',
            """
  <send retrans="500">
    <![CDATA[
      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "[field4]" <sip:[field0]@[field1]>;tag=[pid]call[call_number]
      To: <sip:[field3]@[field1]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 9 BYE
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
  <nop next="end"/>
  <label id="horizon"/>
  <send>
    <![CDATA[
      CANCEL sip:[field3]@[field1] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=z9hG4bK-[pid]-[call_number]-inv2
      From: "[field4]" <sip:[field0]@[field1]>;tag=[pid]call[call_number]
      To: <sip:[field3]@[field1]>
      Call-ID: [call_id]
      CSeq: 2 CANCEL
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
  <recv response="487"/>""",
            ack.format(uri="sip:[field3]@[field1]", cseq=2, branch=_INV.format(2)),
            '\n  <nop next="end"/>',
            '\n  <label id="failed"/>',
            ack.format(uri="sip:[field3]@[field1]", cseq=2, branch=_INV.format(2)),
            '\n  <label id="end"/>\n</scenario>\n',
        ]
    )
