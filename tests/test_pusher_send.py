"""The pusher's sending of one chunk: what a node's answers mean (a fake AMI session; the real
ones are in test_pusher_ami.py and test_pusher_stack.py)."""

from __future__ import annotations

import pytest

from sorcery_backend.ami import AmiDisconnected, AmiError
from sorcery_backend.nodes import Node
from sorcery_backend.push_plan import CacheAction
from sorcery_backend.pusher import NodeWorker, PusherSettings, _PartlyDone


class _StoppingNode:
    """An AMI session to a node that answers some actions and then says it is shutting down."""

    def __init__(self, answered: int, message: str) -> None:
        self.left = answered
        self.message = message

    async def send(self, fields: dict[str, str]) -> dict[str, str]:
        if self.left > 0:
            self.left -= 1
            return {"Response": "Success"}
        raise AmiError(fields["Action"], self.message)


def _expiry(n: int) -> CacheAction:
    fields = (("Action", "SorceryMemoryCacheExpireObject"), ("Cache", "res_pjsip/endpoint"), ("Object", f"{n}@a"))
    return CacheAction(fields, (n,), 1)


async def test_a_node_shutting_down_loses_the_session_and_refuses_nothing() -> None:
    """Its actions are retried after the reconnect; recorded as refusals they would stay, since a
    restarted node gets whole-cache expiries, not the per-object action that clears one."""
    worker = NodeWorker("postgresql://unused", Node(1, "n", "127.0.0.1", 5038, "pbx", "x"), PusherSettings(window=1))
    actions = [_expiry(n) for n in range(4)]
    with pytest.raises(_PartlyDone) as partly:
        await worker._send_all(_StoppingNode(2, "Asterisk is shutting down"), actions)  # type: ignore[arg-type]
    assert partly.value.done == actions[:2] and isinstance(partly.value.cause, AmiDisconnected)
    assert worker.refused == []
    # A real refusal is still one.
    assert await worker._send_all(_StoppingNode(0, "No such object"), actions[:1]) == actions[:1]  # type: ignore[arg-type]
    assert [a for a, _ in worker.refused] == actions[:1]
