"""Kamailio's RPC (module jsonrpcs) over its unix datagram socket: how the control plane tells the
cluster's SIP edge that the node list changed (``dispatcher.reload``) and reads what it dispatches
to (``dispatcher.list``).

A datagram socket rather than kamcmd's binrpc: no binary on the caller's side, and the socket's
file mode is the access control (the edge's RPC can restart, reload and drop anything). Kamailio
answers to the address the request came from, so each call binds a reply socket of its own.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

from pbx_base.errors import DependencyError, Unavailable

__all__ = ["EdgeRefused", "EdgeUnreachable", "dispatcher_destinations", "reload_dispatcher", "rpc"]

_ids = itertools.count(1)


class EdgeUnreachable(Unavailable, ConnectionError):
    """Kamailio's RPC socket is missing or did not answer in time."""


class EdgeRefused(DependencyError, RuntimeError):
    """Kamailio answered the RPC with an error."""


def rpc(socket_path: Path, method: str, *params: Any, timeout: float = 3.0) -> Any:
    """The ``result`` of one JSON-RPC call."""
    request = json.dumps({"jsonrpc": "2.0", "method": method, "params": list(params), "id": next(_ids)})
    with tempfile.TemporaryDirectory(prefix="pbx-rpc-") as tmp:
        os.chmod(tmp, 0o711)  # Kamailio may run as its own user: it must reach the reply socket
        reply = os.path.join(tmp, "r")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(reply)
            os.chmod(reply, 0o666)
            sock.settimeout(timeout)
            try:
                sock.sendto(request.encode(), str(socket_path))
                data = sock.recv(1 << 20)
            except (OSError, TimeoutError) as exc:
                raise EdgeUnreachable(f"Kamailio RPC {socket_path}: {method}: {exc}") from None
    answer = json.loads(data)
    if "error" in answer:
        err = answer["error"]
        raise EdgeRefused(f"Kamailio RPC {method}: {err.get('code')} {err.get('message')}")
    return answer.get("result")


def reload_dispatcher(socket_path: Path) -> None:
    """Kamailio re-reads its node list (kamailio.dispatcher, sql/021) from Postgres."""
    rpc(socket_path, "dispatcher.reload")


def dispatcher_destinations(socket_path: Path) -> dict[str, str]:
    """Each destination URI the edge dispatches to, with its state flags (``AP``: active, probing)."""
    result = rpc(socket_path, "dispatcher.list")
    out: dict[str, str] = {}
    for record in (result or {}).get("RECORDS", []):
        for target in record.get("SET", {}).get("TARGETS", []):
            dest = target.get("DEST", {})
            out[str(dest.get("URI"))] = str(dest.get("FLAGS"))
    return out
