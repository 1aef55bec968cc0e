"""devstack.health: the waits every process of a stack shares, and the log tail in its errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from devstack.health import log_tail, wait_gone, wait_healthy


class Down(RuntimeError):
    pass


def test_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    assert log_tail(log) == "(no log)"
    log.write_text("")
    assert log_tail(log) == "(empty log)"
    log.write_text("a\n  b\nc\n")
    assert log_tail(log, 2) == "b | c"


def test_wait_healthy_until_no_problem(tmp_path: Path) -> None:
    answers = iter(["starting", "starting", None])
    wait_healthy("svc", lambda: next(answers), 5, log=tmp_path / "x.log", error=Down, interval=0.001)


def test_wait_healthy_names_the_last_problem_and_the_log(tmp_path: Path) -> None:
    (tmp_path / "x.log").write_text("boom\n")
    with pytest.raises(Down, match=r"^svc not healthy after 0\.05s \(port closed\): boom$"):
        wait_healthy("svc", lambda: "port closed", 0.05, log=tmp_path / "x.log", error=Down, interval=0.01)


def test_wait_healthy_stops_at_once_when_the_process_ended(tmp_path: Path) -> None:
    with pytest.raises(Down, match=r"^svc exited with 1 at start: \(no log\)$"):
        wait_healthy("svc", lambda: "no", 60, log=tmp_path / "x.log", error=Down, ended=lambda: "exited with 1")


def test_wait_gone_kills_a_process_that_does_not_stop() -> None:
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", stubborn], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.readline()  # the handler is in place
    proc.terminate()
    wait_gone(proc.pid, lambda: proc.poll() is None, 0.2)
    assert proc.returncode == -9
