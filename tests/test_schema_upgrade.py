"""Migrations upgrade: a database built by any earlier commit's sql/ migrates to the schema of a fresh
migrate; an applied file that changed is refused; sql/006 and 007 match the catalog data.

Earlier databases are rebuilt from git history (`git show <commit>:sql/...`), as the runner of that
time applied them: each file in its own transaction, recorded without a checksum, stopping at the
first that fails. Without the history this module fails: it must not pass by not running.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import subprocess
import sys
from collections.abc import Iterator

import asyncpg
import pytest
from conftest import REPO

from devstack.postgres import PostgresCluster, find_bindir
from sorcery_backend.schema import migrate, migrations

# Every commit that changed sql/ before migrations had checksums, oldest first
# (`git log --reverse --format=%h -- sql/` at that time).
HISTORY = ["d8d7212", "86916b5", "eff28cd", "b6712de", "11d6111", "6bd1fa6", "ed6a23e", "6b1fe3f", "dad26ce"]
_MIGRATION_FILE = re.compile(r"^sql/(\d{3})_[a-z0-9_]+\.sql$")
_names = itertools.count()


def git(*args: str) -> str:
    try:
        r = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        pytest.fail("git is not installed: the upgrade test rebuilds old databases from git history")
    if r.returncode != 0:
        pytest.fail(f"git {' '.join(args)} failed ({r.stderr.strip()}): this test needs the full git history")
    return r.stdout


def historical_files(commit: str) -> list[tuple[int, str, str]]:
    """(version, name, content) of every migration in sql/ at ``commit``."""
    paths = sorted(p for p in git("ls-tree", "--name-only", commit, "sql/").split() if _MIGRATION_FILE.match(p))
    return [(int(p[4:7]), p[4:-4], git("show", f"{commit}:{p}")) for p in paths]


async def _replay(dsn: str, files: list[tuple[int, str, str]]) -> list[str]:
    """Apply ``files`` as the runner before checksums did; returns the names applied."""
    conn = await asyncpg.connect(dsn)
    applied = []
    try:
        await conn.execute(
            """
            CREATE SCHEMA IF NOT EXISTS pbx;
            CREATE TABLE IF NOT EXISTS pbx.schema_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            );
            """
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM pbx.schema_migrations")}
        for version, name, sql in files:
            if version in done:
                continue
            try:
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO pbx.schema_migrations (version, name) VALUES ($1, $2)", version, name
                    )
            except asyncpg.PostgresError:
                break  # that runner stopped here, and so did the database
            applied.append(name)
    finally:
        await conn.close()
    return applied


async def _migrate(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


def dump(dsn: str) -> str:
    """The schema as pg_dump writes it, without comments, settings and blank lines."""
    r = subprocess.run(
        [str(find_bindir() / "pg_dump"), "--schema-only", dsn], capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, r.stderr
    skip = ("--", "SET ", "SELECT pg_catalog.set_config", "\\restrict", "\\unrestrict")
    return "\n".join(line for line in r.stdout.splitlines() if line.strip() and not line.startswith(skip))


@pytest.fixture
def fresh_db(pg: PostgresCluster) -> Iterator[str]:
    name = f"up{next(_names)}"
    pg.psql(f'CREATE DATABASE "{name}"')
    try:
        yield pg.dsn(name)
    finally:
        pg.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def head_schema(pg: PostgresCluster) -> str:
    pg.psql('CREATE DATABASE "up_head"')
    asyncio.run(_migrate(pg.dsn("up_head")))
    return dump(pg.dsn("up_head"))


def test_the_history_list_is_every_commit_that_changed_sql_before_checksums() -> None:
    log = git("log", "--reverse", "--format=%h", "--abbrev=7", "--", "sql/").split()
    assert log[: len(HISTORY)] == HISTORY


@pytest.mark.parametrize("commit", HISTORY)
def test_a_database_built_at_an_earlier_commit_migrates_to_the_fresh_schema(
    commit: str, fresh_db: str, head_schema: str
) -> None:
    applied = asyncio.run(_replay(fresh_db, historical_files(commit)))
    if commit == HISTORY[0]:
        # 006 and 007 were generated but not committed yet: 008 could not apply there.
        assert applied == ["001_base", "002_routing", "003_rules", "004_resolve", "005_flatten"]
    else:
        assert len(applied) == len(historical_files(commit))
    asyncio.run(_migrate(fresh_db))
    assert dump(fresh_db) == head_schema


def test_the_last_schema_before_checksums_is_the_schema_now(fresh_db: str, head_schema: str) -> None:
    """Restoring the edited files and adding 013 changed no object the code relies on. The
    migrations after 013 are new objects: they are applied on both sides."""
    later = [(m.version, m.name, m.sql) for m in migrations() if m.version > 13]
    asyncio.run(_replay(fresh_db, historical_files(HISTORY[-1]) + later))
    applied_at = "    applied_at timestamp with time zone DEFAULT now() NOT NULL"
    expected = dump(fresh_db).replace(applied_at, applied_at + ",\n    checksum text")
    assert head_schema == expected


def test_a_database_upgraded_at_every_commit_migrates_to_the_fresh_schema(fresh_db: str, head_schema: str) -> None:
    """The life of a database created at the first commit and migrated by each release since."""
    applied = [name for commit in HISTORY for name in asyncio.run(_replay(fresh_db, historical_files(commit)))]
    # 009 as first committed could not apply on 006 as first committed (object_id NOT NULL): stuck.
    assert applied[-1] == "008_roles"
    asyncio.run(_migrate(fresh_db))
    assert dump(fresh_db) == head_schema


def test_the_realtime_rows_of_a_database_from_before_rt_owner_keep_their_owner(
    fresh_db: str, pg: PostgresCluster
) -> None:
    """sql/013 moves object_id/table_key of existing rows into pbx.rt_owner: the new flush finds them."""
    name = fresh_db.rsplit("/", 1)[1]
    asyncio.run(_replay(fresh_db, historical_files("86916b5")))
    pg.psql(
        "INSERT INTO pbx.tenants (name, domain) VALUES ('t', 't.example');"
        "INSERT INTO pbx.objects (tenant_id, kind, name) SELECT id, 'endpoint', '1001' FROM pbx.tenants;"
        "INSERT INTO pbx.object_options (object_id, section, option, value)"
        " SELECT id, 'auth', 'password', '{x}' FROM pbx.objects",
        name,
    )
    owned = "SELECT view || ' ' || id || ' ' || table_key FROM pbx.rt_owner ORDER BY 1"
    asyncio.run(_migrate(fresh_db))
    assert pg.psql(owned, name).splitlines() == [
        "ps_auths 1001@t.example ps_auths",
        "ps_endpoints 1001@t.example ps_endpoints",
    ]
    pg.psql("DELETE FROM pbx.objects", name)
    assert pg.psql(owned, name) == ""
    assert pg.psql("SELECT count(*) FROM pbx.rt_ps_endpoints WHERE id NOT LIKE '~%'", name).strip() == "0"


def test_rows_without_a_checksum_get_the_files_checksum(fresh_db: str) -> None:
    asyncio.run(_replay(fresh_db, historical_files(HISTORY[-1])))
    asyncio.run(_migrate(fresh_db))

    async def recorded() -> dict[str, str]:
        conn = await asyncpg.connect(fresh_db)
        try:
            return {
                r["name"]: r["checksum"] for r in await conn.fetch("SELECT name, checksum FROM pbx.schema_migrations")
            }
        finally:
            await conn.close()

    assert asyncio.run(recorded()) == {m.name: m.checksum for m in migrations()}


def pbxctl_migrate(dsn: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pbxctl", "db", "migrate", "--dsn", dsn],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("UPDATE pbx.schema_migrations SET checksum = 'x' WHERE version = 5", "sql/005_flatten.sql: changed"),
        ("UPDATE pbx.schema_migrations SET name = '009_other' WHERE version = 9", "sql/009_nodes.sql: number 9"),
        ("INSERT INTO pbx.schema_migrations (version, name) VALUES (999, '999_later')", "sql/999_later.sql: applied"),
    ],
)
def test_migrate_refuses_when_the_record_disagrees_with_the_files(
    db: str, pg: PostgresCluster, change: str, named: str
) -> None:
    """A changed checksum stands for a changed file: the comparison is the same either way."""
    name = db.rsplit("/", 1)[1]
    pg.psql(change, name)
    before = pg.psql("SELECT * FROM pbx.schema_migrations ORDER BY version", name)
    p = pbxctl_migrate(db)
    assert p.returncode == 1
    assert p.stderr.count("\n") == 1 and named in p.stderr, p.stderr
    assert pg.psql("SELECT * FROM pbx.schema_migrations ORDER BY version", name) == before


def test_migrate_on_an_up_to_date_database_changes_nothing(db: str) -> None:
    p = pbxctl_migrate(db)
    assert p.returncode == 0, p.stderr
    assert "up to date" in p.stderr


def test_the_generated_migrations_match_the_catalog_data() -> None:
    p = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_realtime_sql.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert p.returncode == 0, p.stderr
