"""devstack.sipp: a sipp is started only once it holds its port; a taken port is retried or named."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.play_sipp import device_xml
from devstack.sipp import SippError, SippProcess, free_udp_port, status_code

pytestmark = pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp is not installed")


@pytest.fixture
def squatted() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        port = free_udp_port()
        s.bind(("127.0.0.1", port))
        yield port


def _device(tmp_path: Path, port: int, *, movable: bool) -> SippProcess:
    # A UAS waiting for an INVITE: it sends nothing, so no server is needed.
    proc = SippProcess("dev", port, tmp_path, movable=movable)
    proc.start(f"127.0.0.1:{free_udp_port()}", device_xml({}, 0), ["-"], 30)
    return proc


def test_a_taken_port_is_replaced_when_movable(tmp_path: Path, squatted: int) -> None:
    proc = _device(tmp_path, squatted, movable=True)
    try:
        assert proc.port != squatted
        assert proc.proc is not None and proc.proc.poll() is None
    finally:
        proc.stop()


def test_a_taken_fixed_port_is_one_line_naming_it(tmp_path: Path, squatted: int) -> None:
    with pytest.raises(SippError, match=rf"sipp dev: UDP port {squatted} on 127.0.0.1 is taken"):
        _device(tmp_path, squatted, movable=False)


def test_status_code() -> None:
    assert status_code("SIP/2.0 486 Busy Here") == 486
    assert status_code("INVITE sip:1@x SIP/2.0") is None
