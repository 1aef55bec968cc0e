"""Faults without loss (#16), small, on the real stack: the controller killed (-9) at each moment of
a call, and a call that arrives while no controller is connected. bench/faults.py runs the same
faults bigger and with Postgres, AMI and the pusher, and prints the figures.
"""

from __future__ import annotations

import time

import pytest
import test_controller_stack as live
from stack import wait_for
from test_controller_stack import Phones, bridges, channels, conference, final_of

from devstack.stack import Stack

pytestmark = pytest.mark.stack
phones = live.phones  # the registered phones of test_controller_stack, a fixture here too

# After a controller returns, the half-call is ended within this (measured: well under a second;
# the bound leaves room for a loaded machine).
CLEANUP_BOUND_S = 5.0


def no_call_left(stack: Stack) -> None:
    wait_for("no channel left", lambda: not channels(stack))
    wait_for("no conference left", lambda: not any(b.id.startswith("conf-") for b in bridges(stack)))


def test_a_caller_who_hangs_up_while_the_controller_is_down_leaves_no_half_call(stack: Stack, phones: Phones) -> None:
    bob = phones.device("1002", {"answer_at": 0})
    alice = phones.call("1001", "1002", talk_s=3)
    wait_for("the conference", lambda: conference(stack, 2))
    stack.serve.kill()
    assert alice.wait(30) == 0  # her BYE is answered by Asterisk: she is gone
    wait_for("Bob alone in the bridge", lambda: conference(stack, 1), 10)
    assert not bob.got("BYE")  # nobody to end it while no controller runs
    stack.serve.start()
    t0 = time.monotonic()
    wait_for("Bob's BYE from the new controller", lambda: bob.got("BYE"), CLEANUP_BOUND_S)
    print(f"\n[faults] half-call ended {time.monotonic() - t0:.2f} s after the controller was healthy")
    no_call_left(stack)


def test_a_leg_still_ringing_for_a_caller_gone_while_the_controller_was_down_is_cancelled(
    stack: Stack, phones: Phones
) -> None:
    bob = phones.device("1002", {})  # rings until cancelled
    alice = phones.call("1001", "1002", horizon_s=4)  # gives up (CANCEL) after 4 s of ringing
    wait_for("Bob's phone ringing", lambda: bob.got("INVITE"))
    stack.serve.kill()
    assert alice.wait(30) == 0 and final_of(alice) == 487
    assert not bob.got("CANCEL")  # the leg is the controller's: nobody stops it meanwhile
    stack.serve.start()
    wait_for("Bob's phone cancelled by the new controller", lambda: bob.got("CANCEL"), CLEANUP_BOUND_S)
    no_call_left(stack)


def test_controller_killed_while_bridged_the_call_still_ends_cleanly(stack: Stack, phones: Phones) -> None:
    bob = phones.device("1002", {"answer_at": 0})
    alice = phones.call("1001", "1002", talk_s=6)
    bridge = wait_for("the conference", lambda: conference(stack, 2))
    stack.serve.kill()
    stack.serve.start()
    assert conference(stack, 2) == bridge  # the call went on through the crash
    assert alice.wait(30) == 0
    assert bob.wait(15) == 0 and bob.got("BYE")
    no_call_left(stack)


def test_a_call_made_while_the_controller_restarts_waits_for_it_and_goes_through(stack: Stack, phones: Phones) -> None:
    bob = phones.device("1002", {"answer_at": 0})
    stack.serve.kill()
    t0 = time.monotonic()
    alice = phones.call("1001", "1002", talk_s=1)
    stack.serve.start()  # the dialplan waits up to 8 s for the app (asterisk_conf/extensions.conf)
    print(f"\n[faults] controller back {time.monotonic() - t0:.2f} s after the call arrived")
    assert alice.wait(30) == 0
    assert final_of(alice) == 200
    assert bob.wait(15) == 0
    no_call_left(stack)
