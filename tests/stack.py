"""The `stack` fixture: one embedded real stack (Postgres + Asterisk 22 + sipp) per test session.

Its name carries the pid, so a test run never touches the developer's `dev` stack or another run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from devstack.chroot import asterisk_version
from devstack.stack import Stack, allow_lab_contexts


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    st = Stack.named(f"test-{os.getpid()}")
    try:
        st.up()
        allow_lab_contexts(st)
        print(f"\n[stack] {asterisk_version(st.chroot)} on {st.settings.sip_addr}", file=sys.stderr)
        yield st
    finally:
        st.destroy()


def pbxctl(st: Stack, *args: str, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **st.settings.exports())
    return subprocess.run(
        [sys.executable, "-m", "pbxctl", *args], capture_output=True, text=True, env=env, input=input_text, timeout=300
    )


def apply_yaml(st: Stack, text: str, tmp_path: object) -> str:
    from pathlib import Path

    f = Path(str(tmp_path)) / "config.yaml"
    f.write_text(textwrap.dedent(text))
    p = pbxctl(st, "apply", str(f), "--json")
    assert p.returncode == 0, p.stderr
    return p.stdout


@contextmanager
def no_controller(st: Stack) -> Iterator[None]:
    """The stack without its `pbxctl serve` (so without the ARI controller) for the block: for
    tests that take the ARI app themselves or need Stasis() to find no app."""
    st.serve.stop()
    try:
        yield
    finally:
        st.serve.start()


def serve_url(st: Stack) -> str:
    return f"http://127.0.0.1:{st.serve.http_port}"


@pytest.fixture
def without_controller(stack: Stack) -> Iterator[Stack]:
    with no_controller(stack):
        yield stack


def _live_wrapper(tmp_path: Path) -> Path:
    """The checker runs `pbxctl route simulate FILE --json --horizon H`: play it live instead."""
    w = tmp_path / "live-pbxctl"
    w.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = route ] && [ "$2" = simulate ]; then shift 2; set -- call play "$@"; fi\n'
        f'exec {sys.executable} -m pbxctl "$@"\n'
    )
    w.chmod(0o755)
    return w


def check_live(st: Stack, shared_dir: Path, files: list[Path], tmp_path: Path) -> None:
    """The shared checker's `--live` run of ``files``, played on ``st`` (a cluster: through its edge)."""
    env = dict(os.environ, **st.settings.exports())
    checker = [sys.executable, str(shared_dir / "tools" / "check-scenarios"), "--live"]
    p = subprocess.run(
        [*checker, "--pbxctl", str(_live_wrapper(tmp_path)), *map(str, files)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    logs = "".join(s.log_tail(20) for s in [st.serve, *st.node_serves])
    assert p.returncode == 0, p.stdout + p.stderr + logs
