"""sorcery_backend/boot_set.py: what a node loads at boot (its trunks), read from the database."""

from __future__ import annotations

import json

import asyncpg

from sorcery_backend.apply import apply_config
from sorcery_backend.boot_set import diff, may_change, parse_tree, wanted
from sorcery_backend.declarative import load_yaml, parse_config

CONFIG = """
tenants:
  acme:
    domain: acme.example
    templates:
      carrier: {aor: {qualify_frequency: 30}}
    endpoints:
      "1001": {auth: {password: x}, aor: {max_contacts: 1}}
      gw: {templates: [carrier], aor: {contact: ["sip:127.0.0.2:5070", "sip:a;b@127.0.0.4:5070"]}}
"""


async def test_the_boot_set_is_the_aors_with_static_contacts_and_their_endpoints(db: str) -> None:
    conn = await asyncpg.connect(db)
    try:
        await apply_config(conn, parse_config(load_yaml(CONFIG)))
        want = await wanted(conn)
    finally:
        await conn.close()
    assert sorted(want) == [("aor", "gw@acme.example"), ("endpoint", "gw@acme.example")]
    aor = json.loads(want[("aor", "gw@acme.example")])
    # Both URIs in the one value the AOR option splits at commas; `;` is the URI's own again.
    assert aor["contact"] == "sip:127.0.0.2:5070,sip:a;b@127.0.0.4:5070"
    assert aor["qualify_frequency"] == "30"  # inherited from the template, as Asterisk reads it
    assert "id" not in aor
    assert json.loads(want[("endpoint", "gw@acme.example")]) == {"aors": "gw@acme.example"}


async def test_only_edits_of_trunks_or_of_what_the_copy_held_can_change_the_boot_set(db: str) -> None:
    conn = await asyncpg.connect(db)
    try:
        await apply_config(conn, parse_config(load_yaml(CONFIG)))
        held = set(await wanted(conn))
        phone, gw = "1001@acme.example", "gw@acme.example"
        assert not await may_change(conn, held, [phone], [phone])  # a phone's edit: no sync
        assert await may_change(conn, held, [gw], [])
        assert await may_change(conn, held, [], [gw])
        assert await may_change(conn, set(), [gw], [])  # a trunk now, not yet in the copy
        gone = {("aor", "old@acme.example")}
        assert await may_change(conn, gone, ["old@acme.example"], [])  # removed from the database
    finally:
        await conn.close()


def test_the_node_copy_is_read_from_dbgettree_and_diffed() -> None:
    have = parse_tree(
        [
            {"Response": "Success"},
            {"Event": "DBGetTreeResponse", "Key": "/pbx_boot/aor/old@x", "Val": "{}"},
            {"Event": "DBGetTreeResponse", "Key": "/pbx_boot/endpoint/gw@x", "Val": '{"aors": "gw@x"}'},
            {"Event": "DBGetTreeResponse", "Key": "/registrar/contact/c", "Val": "{}"},
            {"Event": "DBGetTreeComplete"},
        ]
    )
    assert have == {("aor", "old@x"): "{}", ("endpoint", "gw@x"): '{"aors": "gw@x"}'}
    want = {("endpoint", "gw@x"): '{"aors": "gw@x"}', ("aor", "gw@x"): '{"contact": "sip:h"}'}
    assert diff(want, have) == ([("aor", "gw@x")], [("aor", "old@x")])
    assert diff(want, want) == ([], [])
