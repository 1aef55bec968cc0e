"""The carrier example applies as it is and routes as its comments say."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from routing.stage1 import CallRequest, Tree, build_tree
from routing_store.loader import load_for_call, load_tenant
from sorcery_backend.apply import apply_config
from sorcery_backend.declarative import load_config

EXAMPLES = Path(__file__).parent.parent / "examples"


async def test_the_carrier_example_applies_and_routes(db: str) -> None:
    conn = await asyncpg.connect(db)
    try:
        await apply_config(conn, load_config(EXAMPLES / "carrier.yaml"))
        d = (await load_tenant(conn, "acme")).directory
        assert d.ring_timeout_ms == 60000
        assert [c.uri for c in d.static_contacts["carrier"]] == ["sip:127.0.0.2:5070"]
        assert all(c.qualified for cs in d.static_contacts.values() for c in cs)

        async def tree(caller: str, called: str, endpoint: str) -> Tree:
            data = await load_for_call(conn, "acme", caller, called, endpoint)
            return build_tree(data.directory, CallRequest("acme", caller, called, endpoint=endpoint))

        out = await tree("1001", "00301234567", "1001")
        root = out.root
        assert out.status == "ok" and root is not None
        assert (root.endpoints, root.dialed) == (("carrier",), "+49301234567")
        assert [(f.endpoints, f.dialed) for f in root.fallbacks] == [(("backup",), "0301234567")]
        for called, target in [("+4930123456100", "100"), ("+49301234561002", "1002")]:
            inbound = await tree("+4930555", called, "carrier")
            assert (inbound.status, inbound.called) == ("ok", target), called
        assert (await tree("+4930555", "+4940999", "carrier")).status == "noroute"
        assert (await tree("1002", "00301234567", "1002")).status == "error:forbidden"
    finally:
        await conn.close()
