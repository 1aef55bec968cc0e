"""What a plain `pip install .` ships: the wheel of what compose/controller.Dockerfile copies,
installed into a venv outside the checkout, migrates a database and finds every run-time file; a
node's configuration carries no test dialplan.

The wheel is built as pip builds it, in an isolated environment (setuptools from PyPI, pip-cached).
The venv (the dependencies from PyPI, ~30 s) is cached under $PBX_CACHE_DIR by the dependency list;
each run installs the freshly built wheel into it again, so a warm run takes a few seconds.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO

from devstack.asterisk import DEV_DIALPLAN, AsteriskNode
from devstack.postgres import PostgresCluster
from devstack.settings import StackSettings, cache_dir
from pbx_base import resources
from sorcery_backend.schema import migrations

DOCKERFILE = REPO / "compose" / "controller.Dockerfile"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# Not the sources of a package: the checkout's own tooling and state, and the catalog data that
# scripts/ turns into sql/ (nothing reads it at run time).
_NOT_SHIPPED = {".git", "tests", "bench", "scripts", "compose", "build", ".state", "sorcery_backend/data"}
_TEST_CONTEXTS = ("[pbx-dial-test]", "[pbx-hold]")


def _sources(tmp: Path) -> Path:
    """What compose/controller.Dockerfile copies before its `pip install .`, copied the same way
    (its first stage: the edge's stage copies the built venv, no sources)."""
    src = tmp / "src"
    stages = DOCKERFILE.read_text().split("\nFROM ")
    for line in stages[1].splitlines():
        if not line.startswith("COPY "):
            continue
        *paths, dest = line.split()[1:]
        for path in paths:
            target = src / (Path(path).name if dest == "./" else dest)
            if (REPO / path).is_dir():
                shutil.copytree(REPO / path, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(REPO / path, target)
    return src


def _env() -> dict[str, str]:
    """No PYTHONPATH: the installed package must not be shadowed by the checkout."""
    return {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A venv outside the checkout with the wheel of this checkout installed; yields its bin dir."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = _sources(tmp)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), str(src)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp / "dist").glob("*.whl")
    deps = "\n".join(PYPROJECT["project"]["dependencies"]) + sys.version
    venv = cache_dir() / "wheel-venv" / hashlib.sha256(deps.encode()).hexdigest()[:16]
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be installing into the same venv
        if not (venv / ".complete").exists():
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            r = subprocess.run(
                [str(venv / "bin" / "pip"), "install", "-q", str(wheel)], capture_output=True, text=True, env=_env()
            )
            assert r.returncode == 0, r.stderr
            (venv / ".complete").touch()
        r = subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "--force-reinstall", str(wheel)],
            capture_output=True,
            text=True,
            env=_env(),
        )
        assert r.returncode == 0, r.stderr
        yield venv / "bin"


def test_the_package_list_names_every_package_of_the_tree() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    mapped = PYPROJECT["tool"]["setuptools"]["package-dir"]
    found = set()
    for root, dirs, files in os.walk(REPO):
        rel = Path(root).relative_to(REPO)
        dirs[:] = [d for d in dirs if (rel / d).as_posix() not in _NOT_SHIPPED and not d.startswith((".", "__"))]
        if rel.parts and rel.parts[0] in {"sql", "asterisk_conf", "examples"}:
            continue
        if any(f.endswith(".py") for f in files) or (rel.parts and rel.parts[0] in listed and files):
            found.add(".".join(rel.parts))
    assert found - {""} == listed - set(mapped)


def test_the_installed_wheel_migrates_a_database_from_outside_the_checkout(
    installed: Path, pg: PostgresCluster, tmp_path: Path
) -> None:
    pg.psql('CREATE DATABASE "wheel_migrate"')
    dsn = pg.dsn("wheel_migrate")
    try:
        p = subprocess.run(
            [str(installed / "pbxctl"), "db", "migrate", "--dsn", dsn],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=_env(),
            timeout=120,
        )
        assert p.returncode == 0, p.stderr
        applied = pg.psql("SELECT name FROM pbx.schema_migrations ORDER BY version", "wheel_migrate").split()
        assert applied == [m.name for m in migrations()]
        assert pg.psql("SELECT to_regclass('public.ps_endpoints')", "wheel_migrate").strip() == "ps_endpoints"
    finally:
        pg.psql('DROP DATABASE IF EXISTS "wheel_migrate" WITH (FORCE)')


def test_the_installed_wheel_reads_its_own_package_data(installed: Path, tmp_path: Path) -> None:
    probe = (
        "from pbx_base import resources as r\n"
        "print(r.sql_dir())\n"
        "print(sorted(x.name for x in r.asterisk_conf_dir().iterdir()))\n"
        "print(r.on_disk(r.example('demo-call.yaml')).is_file(), r.sipp_scenario('uac.xml').is_file())\n"
        "print((r.dev_asterisk_conf_dir() / 'extensions_dev.conf').read_text().count('[pbx-'))\n"
    )
    p = subprocess.run(
        [str(installed / "python"), "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=_env()
    )
    assert p.returncode == 0, p.stderr
    sql_dir, conf, files, dev_contexts = p.stdout.splitlines()
    assert sql_dir.startswith(str(installed.parent)) and sql_dir.endswith("pbx_base/sql")
    assert conf == str(sorted(x.name for x in resources.asterisk_conf_dir().iterdir()))
    assert files == "True True"
    assert dev_contexts == "2"


def test_a_node_configuration_has_no_test_context() -> None:
    text = (resources.asterisk_conf_dir() / "extensions.conf").read_text()
    assert not [c for c in _TEST_CONTEXTS if c in text]


def test_the_dev_stack_renders_its_test_contexts_into_its_own_dialplan(tmp_path: Path) -> None:
    settings = StackSettings(
        name="t", pg_port=1, sip_port=2, http_port=3, ami_port=4, rtp_start=5, rtp_end=6,
        db_password="p", ari_password="p", ami_password="p",
    )  # fmt: skip
    node = AsteriskNode(tmp_path, settings)
    node.render()
    etc = node.dir / "etc"
    assert (etc / "extensions.conf").read_text().endswith(f"\n#include {DEV_DIALPLAN}\n")
    dev = (etc / DEV_DIALPLAN).read_text()
    assert all(c in dev for c in _TEST_CONTEXTS)
