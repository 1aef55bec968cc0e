"""peers.py on the fake ARI transport: one read-only feed per peer node into Presence."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from ari_app.ari import AriStatusError, FakeAriTransport, FakeRequest
from ari_app.controller.metrics import Metrics
from ari_app.controller.peer_nodes import own_ari_addr
from ari_app.controller.peers import PeerFeeds, peer_app
from ari_app.controller.presence import Presence
from pbx_base.retry import Backoff

APP = "pbx-peer-127.0.0.11-8088"


def endpoint(resource: str, *channels: str) -> dict[str, Any]:
    return {"technology": "PJSIP", "resource": resource, "state": "online", "channel_ids": list(channels)}


def state_change(resource: str, *channels: str) -> dict[str, Any]:
    return {"type": "EndpointStateChange", "application": APP, "endpoint": endpoint(resource, *channels)}


class Peer:
    """A peer node's ARI: the endpoints it lists, the requests a feed made."""

    def __init__(self) -> None:
        self.fake = FakeAriTransport()
        self.endpoints: list[dict[str, Any]] = []
        self.fake.route("PUT", f"/applications/{APP}/eventFilter", None)
        self.fake.route("POST", f"/applications/{APP}/subscription", None)
        self.fake.route("GET", "/endpoints/PJSIP", lambda r: self.endpoints)


async def until(what: str, probe: Callable[[], Any], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not probe():
            await asyncio.sleep(0.001)


async def no_wait(_s: float) -> None:
    await asyncio.sleep(0)


@pytest.fixture
async def rig() -> AsyncIterator[tuple[PeerFeeds, Presence, dict[str, Peer], Metrics]]:
    presence, metrics = Presence(), Metrics()
    peers = {"n2": Peer(), "n3": Peer()}
    by_addr = {"127.0.0.12:8088": peers["n2"], "127.0.0.13:8088": peers["n3"]}
    feeds = PeerFeeds(
        presence,
        app=APP,
        connect=lambda addr: by_addr[addr].fake,
        metrics=metrics,
        backoff=Backoff(initial=0.001, maximum=0.001),
        retry_s=0.001,
        sleep=no_wait,
    )
    try:
        yield feeds, presence, peers, metrics
    finally:
        await feeds.close()


def test_the_app_name_is_the_watching_nodes_own() -> None:
    assert own_ari_addr("http://127.0.0.11:8088/ari") == "127.0.0.11:8088"
    assert own_ari_addr("https://ast.example") == "ast.example:443"
    assert peer_app("pbx", "127.0.0.11:8088") == APP


async def test_a_feed_seeds_from_the_endpoint_list_then_follows_events_and_only_reads(rig: Any) -> None:
    feeds, presence, peers, metrics = rig
    n2 = peers["n2"]
    n2.endpoints = [endpoint("2001@t", "n2-1.1"), endpoint("2002@t")]
    await feeds.update({"n2": "127.0.0.12:8088"})
    await until("seeded", lambda: presence.in_use("2001@t"))
    assert n2.fake.sessions == [[APP]]  # its own app name: no dialplan sends a call to it
    assert metrics.value("pbx_ari_peer_connected", node="n2") == 1
    n2.fake.push(state_change("2002@t", "n2-2.1"), state_change("2001@t"))
    await until("followed", lambda: presence.in_use("2002@t") and not presence.in_use("2001@t"))
    assert {(r.method, r.path) for r in n2.fake.requests} == {
        ("PUT", f"/applications/{APP}/eventFilter"),
        ("POST", f"/applications/{APP}/subscription"),
        ("GET", "/endpoints/PJSIP"),
    }
    (flt,) = n2.fake.calls("PUT")
    assert flt.json == {"allowed": [{"type": "EndpointStateChange"}], "disallowed": []}
    assert n2.fake.calls("POST")[0].params == {"eventSource": "endpoint:PJSIP"}


async def test_a_dropped_feed_forgets_the_node_and_reseeds_on_reconnect(rig: Any) -> None:
    feeds, presence, peers, _ = rig
    n2 = peers["n2"]
    n2.endpoints = [endpoint("2001@t", "n2-1.1")]
    await feeds.update({"n2": "127.0.0.12:8088"})
    await until("seeded", lambda: presence.in_use("2001@t"))
    presence.report("2001@t", ["own-1"])  # this node's own channel on the same device stays
    n2.endpoints = [endpoint("2003@t", "n2-3.1")]
    n2.fake.refuse(AriStatusError(503, "down"))
    n2.fake.drop()
    await until("reseeded", lambda: presence.in_use("2003@t"))
    assert presence.channels("2001@t") == {"own-1"}
    assert len(n2.fake.sessions) == 2


async def test_a_node_without_endpoints_yet_is_asked_again(rig: Any) -> None:
    feeds, presence, peers, _ = rig
    n2 = peers["n2"]
    refusals = iter([AriStatusError(422, "Event source does not exist")])

    def subscribe(_r: FakeRequest) -> None:
        if (refusal := next(refusals, None)) is not None:
            raise refusal

    n2.fake.route("POST", f"/applications/{APP}/subscription", subscribe)
    n2.endpoints = [endpoint("2001@t", "n2-1.1")]
    await feeds.update({"n2": "127.0.0.12:8088"})
    await until("seeded after the retry", lambda: presence.in_use("2001@t"))
    assert len(n2.fake.calls("POST", f"/applications/{APP}/subscription")) == 2


async def test_events_that_come_during_the_seed_are_applied_after_it(rig: Any) -> None:
    feeds, presence, peers, _ = rig
    n2 = peers["n2"]
    listed = asyncio.Event()

    async def endpoints(_r: FakeRequest) -> list[dict[str, Any]]:
        # The call ends while the list (taken before) is on its way.
        n2.fake.push(state_change("2001@t"))
        await asyncio.sleep(0.01)
        listed.set()
        return [endpoint("2001@t", "n2-1.1")]

    n2.fake.route("GET", "/endpoints/PJSIP", endpoints)
    n2.fake.push(state_change("2002@t", "n2-2.1"))  # a later event, so the stream is read past the one above
    await feeds.update({"n2": "127.0.0.12:8088"})
    await until("seeded", lambda: listed.is_set() and presence.in_use("2002@t"))
    assert not presence.in_use("2001@t")


async def test_update_starts_new_peers_and_stops_gone_ones(rig: Any) -> None:
    feeds, presence, peers, metrics = rig
    peers["n2"].endpoints = [endpoint("2001@t", "n2-1.1")]
    peers["n3"].endpoints = [endpoint("3001@t", "n3-1.1")]
    await feeds.update({"n2": "127.0.0.12:8088", "n3": "127.0.0.13:8088"})
    await until("both seeded", lambda: presence.in_use("2001@t") and presence.in_use("3001@t"))
    await feeds.update({"n3": "127.0.0.13:8088"})
    assert feeds.peers == {"n3": "127.0.0.13:8088"}
    assert not presence.in_use("2001@t") and presence.in_use("3001@t")
    assert peers["n2"].fake.closed and peers["n2"].fake.open_sessions == 0
    assert metrics.value("pbx_ari_peer_connected", node="n2") == 0
    await feeds.update({"n3": "127.0.0.13:8088"})  # unchanged: the feed is not reopened
    assert len(peers["n3"].fake.sessions) == 1


async def test_a_feed_refused_for_good_ends_and_clears_its_node(rig: Any) -> None:
    feeds, presence, peers, _ = rig
    n2 = peers["n2"]
    n2.fake.refuse(AriStatusError(401, "Authentication required"))
    await feeds.update({"n2": "127.0.0.12:8088"})
    await asyncio.sleep(0.01)
    assert n2.fake.sessions == [] and not presence.channels("2001@t")
