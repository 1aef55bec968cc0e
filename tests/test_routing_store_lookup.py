"""The controller's call lookup on the routing store, against Postgres: domain -> tenant, the
routed tree, and the contacts with their URIs on the uncached and the cached path alike."""

from __future__ import annotations

import asyncpg

from routing_store.cache import RoutingData
from routing_store.lookup import DbLookup
from sorcery_backend.apply import apply_config
from sorcery_backend.declarative import parse_config

CONFIG = {
    "tenants": {
        "t": {
            "domain": "t.example",
            "endpoints": {n: {"auth": {"password": "x"}} for n in ("1001", "1002")},
            "extensions": {
                "1001": {"type": "simple", "name": "Alice", "endpoints": ["1001"]},
                "1002": {"type": "simple", "name": "Bob", "endpoints": ["1002"]},
            },
        }
    }
}
CONTACT = "1002@t.example^3B@a"


async def test_routes_by_domain_with_contact_uris_cached_or_not(db: str) -> None:
    conn = await asyncpg.connect(db)
    pool = await asyncpg.create_pool(db, min_size=1, max_size=3)
    try:
        await apply_config(conn, parse_config(CONFIG))
        await conn.execute(
            "INSERT INTO ps_contacts (id, uri, endpoint) VALUES ($1, 'sip:1002@127.0.0.1:5062', '1002@t.example')",
            CONTACT,
        )
        routing = RoutingData(pool)
        lookup = DbLookup(pool, routing)
        first = await lookup.route("1001@t.example", "1001", "Alice", "1002")
        assert first.status == "ok" and first.data is not None and not first.data.cached
        assert first.request is not None and first.request.tenant == "t" and first.request.callername == "Alice"
        assert first.data.contacts == {"1002": [CONTACT]}
        assert first.contact_uris == {CONTACT: "sip:1002@127.0.0.1:5062"}
        await routing.preload("t")
        cached = await lookup.route("1001@t.example", "1001", "", "1002")
        assert cached.data is not None and cached.data.cached and cached.contact_uris == first.contact_uris
        assert cached.request is not None and cached.request.callername is None

        assert (await lookup.route("1001@other.example", "1001", "", "1002")).status == "noroute"
        # The domain moves to another tenant: the memo is checked against the data's domain.
        await conn.execute("UPDATE pbx.tenants SET domain = 'old.example' WHERE name = 't'")
        await apply_config(conn, parse_config({"tenants": {"u": {**CONFIG["tenants"]["t"]}}}))
        moved = await lookup.route("1001@t.example", "1001", "", "1002")
        assert moved.status == "ok" and moved.request is not None and moved.request.tenant == "u"
        assert moved.contact_uris == {CONTACT: "sip:1002@127.0.0.1:5062"}
    finally:
        await pool.close()
        await conn.close()
