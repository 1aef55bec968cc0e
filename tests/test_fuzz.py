"""Hostile input against the configuration store (issue: tenant fences), bounded for `make test`.

bench/fuzz.py runs the same generators with many more examples and prints the figures.
"""

from __future__ import annotations

import asyncio
import json
import random

import asyncpg
import pytest
from fuzzing import (
    SECRET,
    STATEMENTS,
    apply_dict,
    base_config,
    beta_config,
    db_fingerprint,
    declarative_input,
    run_apply,
    run_attack,
    run_cli,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_FIXTURE_OK = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


@pytest.fixture
def seeded(db: str) -> str:
    apply_dict(db, beta_config())
    apply_dict(db, base_config())

    async def beta_admin() -> None:
        # Beta's own admin, so that pbx.tenant_admins holds a row of beta's to leak.
        conn = await asyncpg.connect(db)
        try:
            role = "fzb_" + db.rsplit("/", 1)[1]
            await conn.execute(f"CREATE ROLE {role} NOLOGIN")
            await conn.execute("SELECT pbx.grant_tenant_admin('beta', $1)", role)
        finally:
            await conn.close()

    asyncio.run(beta_admin())
    return db


@settings(max_examples=60, deadline=None, suppress_health_check=_FIXTURE_OK, derandomize=True)
@given(rng=st.randoms(use_true_random=False))
def test_a_refused_file_is_one_line_exit_1_and_changes_nothing(seeded: str, rng: random.Random) -> None:
    data = declarative_input(rng)
    before = db_fingerprint(seeded)
    outcome = run_apply(seeded, data)
    assert outcome.escaped is None, outcome.escaped
    assert outcome.exit_code in (0, 1), (outcome.exit_code, outcome.stderr)
    assert SECRET not in outcome.stdout + outcome.stderr
    if outcome.exit_code == 1:
        assert outcome.clean_refusal, f"not one line: {outcome.stderr[:600]!r}"
        assert db_fingerprint(seeded) == before, f"refused but changed: {outcome.stderr}"
    else:
        # Accepted: applying it again changes nothing, and the other tenant never moved.
        again = run_apply(seeded, data, dry_run=True)
        assert again.exit_code == 0, again.stderr
        changes = json.loads(again.stdout)
        assert not any(ids for tables in changes.values() for ids in tables.values()), changes
    assert db_fingerprint(seeded, "beta") == _beta_print(seeded)


_BETA_PRINTS: dict[str, str] = {}


def _beta_print(dsn: str) -> str:
    # Beta's rows as first seen in this database: nothing acme's admin or file does may move them.
    return _BETA_PRINTS.setdefault(dsn, db_fingerprint(dsn, "beta"))


def test_export_never_prints_a_secret_without_show_secrets(seeded: str) -> None:
    out = run_cli("export", "--json", "--dsn", seeded)
    assert out.exit_code == 0, out.stderr
    assert SECRET not in out.stdout and "pw-beta" not in out.stdout


@pytest.mark.parametrize("statement", STATEMENTS)
async def test_tenant_admin_cannot_touch_or_read_another_tenant(seeded: str, statement: str) -> None:
    admin = await asyncpg.connect(seeded)
    role = "fz_" + seeded.rsplit("/", 1)[1]
    await admin.execute(f"CREATE ROLE {role} LOGIN")
    await admin.execute("SELECT pbx.grant_tenant_admin('acme', $1)", role)
    as_a = await asyncpg.connect(seeded.replace("postgres@", f"{role}@"))
    try:
        attack = await run_attack(admin, as_a, statement)
        assert not attack.leaked, f"{attack.statement}: tenant beta's data in the answer"
        assert not attack.wrote, f"{attack.statement}: tenant beta's rows changed"
    finally:
        await as_a.close()
        await admin.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
        await admin.close()


def test_generators_are_deterministic() -> None:
    a = [declarative_input(random.Random(i)) for i in range(20)]
    b = [declarative_input(random.Random(i)) for i in range(20)]
    assert a == b
    assert asyncio.iscoroutinefunction(run_attack)
