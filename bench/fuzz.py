#!/usr/bin/env python3
"""Hostile input against the configuration store, at volume: the generators of tests/fuzzing.py.

Two suites on a private Postgres cluster, each input seeded so a failure can be replayed:

- declarative files (wrong types, unknown keys, cycles, cross-tenant references, huge and hostile
  strings, YAML 1.1 traps, broken YAML) through `pbxctl apply`, in-process: every refusal must be
  exit 1 with one line and leave the database exactly as it was (`partial_writes` counts those
  that did not); an accepted file must be idempotent;
- tenant A's admin against tenant B's rows (read, insert, update, delete, functions, views,
  sequences): `cross_tenant_leaks` counts statements that returned B's data or changed B's rows.

Prints a JSON object as its LAST line:
{"inputs", "accepted", "refused_clean", "refused_unclean", "escaped", "partial_writes",
 "secret_printed", "cross_tenant_attempts", "cross_tenant_leaks"}. --quick: 1,000 files and every
attack statement once (about two minutes here); without it, 5,000 files and 5 rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fuzzing import (  # noqa: E402
    SECRET,
    STATEMENTS,
    apply_dict,
    base_config,
    beta_config,
    db_fingerprint,
    declarative_input,
    run_apply,
    run_attack,
)

from bench._common import private_postgres  # noqa: E402


def fuzz_files(dsn: str, count: int, seed: int) -> dict[str, int]:
    figures = dict.fromkeys(
        ("inputs", "accepted", "refused_clean", "refused_unclean", "escaped", "partial_writes", "secret_printed"), 0
    )
    for i in range(count):
        if i % 200 == 0:  # back to the known base now and then, so mutations keep hitting real objects
            apply_dict(dsn, base_config())
        data = declarative_input(random.Random(seed * 1_000_003 + i))
        before = db_fingerprint(dsn)
        outcome = run_apply(dsn, data)
        figures["inputs"] += 1
        if SECRET in outcome.stdout + outcome.stderr:
            figures["secret_printed"] += 1
        if outcome.escaped is not None:
            figures["escaped"] += 1
            print(f"seed {seed} input {i}: exception escaped\n{outcome.escaped}", file=sys.stderr)
        elif outcome.exit_code == 0:
            figures["accepted"] += 1
        elif outcome.clean_refusal:
            figures["refused_clean"] += 1
        else:
            figures["refused_unclean"] += 1
            print(f"seed {seed} input {i}: exit {outcome.exit_code}: {outcome.stderr[:300]!r}", file=sys.stderr)
        if outcome.exit_code != 0 and db_fingerprint(dsn) != before:
            figures["partial_writes"] += 1
            print(f"seed {seed} input {i}: refused but the database changed", file=sys.stderr)
    return figures


async def fuzz_tenants(dsn: str, rounds: int) -> dict[str, int]:
    admin = await asyncpg.connect(dsn)
    role = "fuzz_acme_admin"
    await admin.execute(f"DROP ROLE IF EXISTS {role}")
    await admin.execute(f"CREATE ROLE {role} LOGIN")
    await admin.execute("SELECT pbx.grant_tenant_admin('acme', $1)", role)
    as_a = await asyncpg.connect(dsn.replace("postgres@", f"{role}@"))
    attempts = leaks = 0
    try:
        for _ in range(rounds):
            for statement in STATEMENTS:
                attack = await run_attack(admin, as_a, statement)
                attempts += 1
                if attack.leaked or attack.wrote:
                    leaks += 1
                    what = "read" if attack.leaked else "wrote"
                    print(f"cross-tenant {what}: {attack.statement}", file=sys.stderr)
    finally:
        await as_a.close()
        await admin.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
        await admin.close()
    return {"cross_tenant_attempts": attempts, "cross_tenant_leaks": leaks}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 files, one round of attacks")
    parser.add_argument("--dsn", help="an existing database to migrate and use (default: a private cluster)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    files, rounds = (1000, 1) if args.quick else (5000, 5)
    t0 = time.monotonic()
    with private_postgres(args.dsn) as dsn:
        apply_dict(dsn, beta_config())
        apply_dict(dsn, base_config())
        figures: dict[str, object] = {**fuzz_files(dsn, files, args.seed), **asyncio.run(fuzz_tenants(dsn, rounds))}
    figures["seconds"] = round(time.monotonic() - t0, 1)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
