"""Hangup causes (Q.850, as ARI reports them) to routing outcomes, and routing results back to causes.

chan_pjsip turns SIP finals into causes (486/600 → 17, 603 → 21, 480 → 18/20, 404 → 1, 408 → 18)
and our causes into SIP finals for the caller (17 → 486, 19/20 → 480, 1 → 404, 21 → 403, 34 → 503).
"""

from __future__ import annotations

from routing.fork import FailReason

__all__ = ["CALLER_CAUSES", "TEMPORARY_FAILURE", "caller_cause", "leg_failure"]

NORMAL_CLEARING = 16
# chan_pjsip answers 41 (temporary failure) with 603; 34 (congestion) gives the 503 a caller can retry.
TEMPORARY_FAILURE = 34

# A device that refused the call: the contract counts 486 and 603 alike (busy).
_REJECTED = {17, 21}
# Nobody there: unregistered meanwhile, unknown, or a device that never answers the INVITE.
_UNAVAILABLE = {1, 3, 18, 20, 27}

CALLER_CAUSES: dict[str, int] = {
    "busy": 17,
    "unavailable": 20,
    "noanswer": 19,
    "noroute": 1,
    "error:noauth": 21,
    "error:forbidden": 21,
    "error:failure": TEMPORARY_FAILURE,
}


def leg_failure(cause: int) -> FailReason:
    """What a ringing leg's end means to the engine. (16, normal clearing, arrives when a leg is
    stopped by us; the engine has already forgotten such a leg, so its mapping never matters.)"""
    if cause in _REJECTED:
        return "rejected"
    if cause in _UNAVAILABLE:
        return "unavailable"
    return "failed"


def caller_cause(result_or_status: str) -> int:
    return CALLER_CAUSES.get(result_or_status, TEMPORARY_FAILURE)
