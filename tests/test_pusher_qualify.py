"""The pusher's read of a changed AOR's qualify settings (sorcery_backend/pusher.aor_qualify), on real
Postgres: what push_plan decides ``pjsip reload qualify aor`` from."""

from __future__ import annotations

import asyncpg
import yaml

from sorcery_backend.apply import apply_config
from sorcery_backend.declarative import parse_config
from sorcery_backend.push_plan import AorQualify
from sorcery_backend.pusher import aor_qualify

CONFIG = """
tenants:
  q:
    domain: q.example
    endpoints:
      carrier: {aor: {contact: ['sip:127.0.0.2:5070'], qualify_frequency: 30}}
      quiet: {aor: {contact: ['sip:127.0.0.4:5070']}}
      '1001': {auth: {password: pw}, aor: {qualify_frequency: 60}}
    extensions:
      '0': {type: trunk, name: Carrier, endpoints: [carrier, quiet]}
      '1001': {type: simple, name: Alice, endpoints: ['1001']}
"""


async def test_the_qualify_settings_of_existing_aors_as_the_node_reads_them(db: str) -> None:
    conn = await asyncpg.connect(db)
    try:
        await apply_config(conn, parse_config(yaml.safe_load(CONFIG)))
        ids = ["carrier@q.example", "quiet@q.example", "1001@q.example", "gone@q.example"]
        got = await aor_qualify(conn, ids)
        assert got["carrier@q.example"] == AorQualify(30, True)
        assert got["quiet@q.example"].static_contacts and got["quiet@q.example"].qualify_frequency == 0
        assert got["1001@q.example"] == AorQualify(60, False)
        assert "gone@q.example" not in got
        assert await aor_qualify(conn, []) == {}
    finally:
        await conn.close()
