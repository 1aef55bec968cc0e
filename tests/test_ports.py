"""devstack.ports: a port handed out is never handed out again, to any process; it was free."""

from __future__ import annotations

import multiprocessing
import socket
from pathlib import Path

from devstack.ports import RANGE, PortRegistry, port_free


def _reserve_many(directory: str, count: int, out: multiprocessing.Queue[list[int]]) -> None:
    registry = PortRegistry(Path(directory))
    out.put([registry.reserve("udp") for _ in range(count)])


def test_processes_asking_in_parallel_never_get_the_same_port(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[list[int]] = ctx.Queue()
    procs = [ctx.Process(target=_reserve_many, args=(str(tmp_path), 40, out)) for _ in range(4)]
    for p in procs:
        p.start()
    got = [port for _ in procs for port in out.get(timeout=60)]
    for p in procs:
        p.join(10)
    assert len(got) == 160 and len(set(got)) == 160
    assert all(port in RANGE for port in got)


def test_a_port_in_use_is_not_handed_out(tmp_path: Path) -> None:
    registry = PortRegistry(tmp_path)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squat:
        port = registry.reserve("udp")
        squat.bind(("127.0.0.1", port))
        assert not port_free(port, "udp")
        # Forget the reservation: the bind check alone must still keep the squatted port out.
        (tmp_path / "ports.json").write_text("{}")
        assert all(registry.reserve("udp") != port for _ in range(200))


def test_both_means_free_for_tcp_and_udp(tmp_path: Path) -> None:
    port = PortRegistry(tmp_path).reserve("both")
    assert port_free(port, "tcp") and port_free(port, "udp")
