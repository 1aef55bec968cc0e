"""routing.stage2: registered and static contacts are devices; qualified static ones can be offline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from routing.model import StaticContact
from routing.stage2 import Device, Ring, Unreachable, decide


@dataclass
class State:
    registered: dict[str, list[str]] = field(default_factory=dict)
    busy: set[str] = field(default_factory=set)

    def contacts(self, endpoint: str) -> Sequence[str]:
        return self.registered.get(endpoint, [])

    def in_use(self, endpoint: str) -> bool:
        return endpoint in self.busy


@dataclass
class Down:
    uris: set[str]

    def reachable(self, endpoint: str, uri: str) -> bool:
        return uri not in self.uris


STATIC = {
    "carrier": (StaticContact("sip:127.0.0.2:5070", qualified=True), StaticContact("sip:127.0.0.4:5070")),
    "1002": (StaticContact("sip:1002@127.0.0.5"),),
}


def test_static_contacts_are_devices_named_by_position() -> None:
    got = decide(["carrier"], State(), cw_off=False, check_in_use=False, already_rung=set(), static=STATIC)
    assert got == Ring(
        (Device("carrier", "carrier/1", "sip:127.0.0.2:5070"), Device("carrier", "carrier/2", "sip:127.0.0.4:5070"))
    )


def test_a_phone_rings_its_static_and_its_registered_contacts() -> None:
    got = decide(
        ["1002"], State({"1002": ["dev-1002"]}), cw_off=False, check_in_use=True, already_rung=set(), static=STATIC
    )
    assert isinstance(got, Ring)
    assert [d.name for d in got.devices] == ["1002/1", "dev-1002"]


def test_an_unreachable_qualified_contact_is_offline_an_unqualified_one_is_not_asked() -> None:
    down = Down({"sip:127.0.0.2:5070", "sip:127.0.0.4:5070"})
    got = decide(
        ["carrier"], State(), cw_off=False, check_in_use=False, already_rung=set(), static=STATIC, reachability=down
    )
    assert isinstance(got, Ring) and [d.name for d in got.devices] == ["carrier/2"]
    only_qualified = {"carrier": STATIC["carrier"][:1]}
    got = decide(
        ["carrier"],
        State(),
        cw_off=False,
        check_in_use=False,
        already_rung=set(),
        static=only_qualified,
        reachability=down,
    )
    assert got == Unreachable("offline")


def test_a_static_device_rings_once_per_call() -> None:
    got = decide(["1002"], State(), cw_off=False, check_in_use=True, already_rung={"1002/1"}, static=STATIC)
    assert got == Unreachable("busy")


def test_in_use_without_call_waiting_is_busy_for_static_devices_too() -> None:
    got = decide(["1002"], State(busy={"1002"}), cw_off=True, check_in_use=True, already_rung=set(), static=STATIC)
    assert got == Unreachable("busy")
