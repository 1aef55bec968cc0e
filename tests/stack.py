"""The `stack` fixture: one embedded real stack (Postgres + Asterisk 22 + sipp) per test session.

Its name carries the pid, so a test run never touches the developer's `dev` stack or another run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.chroot import asterisk_version
from devstack.services import ServicesError, wait_pushed
from devstack.stack import Stack, allow_lab_contexts
from sorcery_backend.pusher import DIALPLAN_TARGET


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


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 60.0) -> Any:
    """``probe()`` once it is truthy (returned), polled until ``timeout``; else an AssertionError
    naming ``what``. The one way a real-stack test waits for a state."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


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


def wait_delivered(st: Stack, timeout: float = 60.0) -> None:
    """Until every committed change is delivered to the stack's node (with Sorcery caches, a change
    takes effect then); else an AssertionError with the pusher's log."""
    try:
        wait_pushed(st.settings, timeout)
    except ServicesError as exc:
        raise AssertionError(f"{exc}; pusher log: {st.serve.log_tail(12)}") from None


def wait_routable(st: Stack, context: str, timeout: float = 30.0) -> None:
    """Until a call from ``context`` reaches the controller: every change delivered and the context
    leading to Stasis. A re-apply that changes nothing pushes nothing, and a node restarted or
    reconnected since has the context again only once the pusher has re-added it."""
    wait_delivered(st, timeout)
    try:
        wait_for(
            f"dialplan context {context} leading to {DIALPLAN_TARGET}",
            lambda: DIALPLAN_TARGET in st.asterisk.rx(f"dialplan show {context}"),
            timeout,
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}; pusher log: {st.serve.log_tail(12)}") from None


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


def _live_wrapper(tmp_path: Path, lane: int | None) -> Path:
    """The checker runs `pbxctl route simulate FILE --json --horizon H`: play it live (in ``lane``)."""
    w = tmp_path / f"live-pbxctl-{lane or 0}"
    play = "call play" if lane is None else f"call play --lane {lane}"
    w.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = route ] && [ "$2" = simulate ]; then shift 2; set -- {play} "$@"; fi\n'
        f'exec {sys.executable} -m pbxctl "$@"\n'
    )
    w.chmod(0o755)
    return w


def check_live(st: Stack, shared_dir: Path, files: list[Path], tmp_path: Path, lanes: int = 3) -> None:
    """The shared checker's `--live` run of ``files``, played on ``st`` (a cluster: through its edge).

    The plays mostly wait out their horizons, so they run in ``lanes`` checkers at once, each
    passing `call play --lane N` (its own tenant, domain and loopback addresses), balanced by the
    horizon each scenario will be played to. With ``lanes=1`` the scenarios are played as they are
    (their own tenant and domain: what a test reading them afterwards expects)."""
    env = dict(os.environ, **st.settings.exports())
    checker = [sys.executable, str(shared_dir / "tools" / "check-scenarios"), "--live"]
    procs = []
    for lane, group in enumerate(_balanced(files, lanes), start=1):
        if group:
            wrapper = _live_wrapper(tmp_path, lane if lanes > 1 else None)
            procs.append(
                subprocess.Popen(
                    [*checker, "--pbxctl", str(wrapper), *map(str, group)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=env,
                )
            )
    outputs = [p.communicate(timeout=900) for p in procs]
    logs = "".join(s.log_tail(20) for s in [st.serve, *st.node_serves])
    failed = [out + err for p, (out, err) in zip(procs, outputs, strict=True) if p.returncode != 0]
    assert not failed, "".join(failed) + logs


def _balanced(files: list[Path], lanes: int) -> list[list[Path]]:
    """``files`` in ``lanes`` groups of about equal play time, longest first to the least loaded."""

    def play_s(f: Path) -> float:
        doc = yaml.safe_load(f.read_text())
        times = [float(e.get("t", 0)) for e in (doc.get("expect") or {}).get("timeline") or []]
        return min(float(doc.get("horizon_s") or 120), max(times, default=0.0) + 5)

    groups: list[list[Path]] = [[] for _ in range(max(1, lanes))]
    load = [0.0] * len(groups)
    for f in sorted(files, key=play_s, reverse=True):
        i = load.index(min(load))
        groups[i].append(f)
        load[i] += play_s(f)
    return groups
