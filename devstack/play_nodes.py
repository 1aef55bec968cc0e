"""Where a live play reaches the stack: its SIP address (a cluster's edge, where every device
registers and the caller dials) and every Asterisk node's ARI, where the scenario's ``in_use``
calls are held.

Behind the edge, the caller's INVITE enters the node the edge's hash of its AOR picks, and that
node's controller decides whether a device is in use from the channels it sees. A call held on one
node only would be invisible to a controller on another (in-use state is per node, README "A
cluster"), so each held call is held on every node: whichever node routes the call sees the
endpoint in use. In-use is a yes/no (routing asks "any channel on it?"), so N copies of a held
call mean what one means.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from devstack.settings import StackSettings, stacks_dir
from pbx_base.errors import InvalidInput
from pbx_base.settings import get_settings

__all__ = ["PlayError", "PlayTarget", "calls_held", "node_ari_urls"]


class PlayError(InvalidInput):
    """The scenario cannot be played live (one line, names the part of the scenario)."""


@dataclass(frozen=True)
class PlayTarget:
    database_url: str
    sip_addr: str  # the edge in a cluster, else the one Asterisk
    ari_urls: tuple[str, ...]  # every node's ARI, node 1 first
    ari_user: str
    ari_password: str

    @classmethod
    def from_env(cls) -> PlayTarget:
        s = get_settings()
        if not s.database_url or not s.sip_addr or not s.ari_url:
            missing = [f"PBX_{k.upper()}" for k in ("database_url", "sip_addr", "ari_url") if not getattr(s, k)]
            raise PlayError(f"call play needs a running stack: {', '.join(missing)} unset (eval $(pbxctl dev up))")
        urls = node_ari_urls(s.ari_url, _stack_settings(s.stack))
        return cls(s.database_url, s.sip_addr, urls, s.ari_user, s.ari_password.get_secret_value())


def _stack_settings(name: str) -> StackSettings | None:
    try:
        return StackSettings.model_validate_json((stacks_dir() / name / "stack.json").read_text())
    except (OSError, ValueError):
        return None


def node_ari_urls(ari_url: str, stack: StackSettings | None) -> tuple[str, ...]:
    """Every node's ARI when ``ari_url`` is node 1 of ``stack`` (``PBX_STACK``, whose `dev up`
    exported it); otherwise ``ari_url`` alone, a stack play knows nothing more about."""
    if stack is None:
        return (ari_url,)
    nodes = stack.nodes()
    if nodes[0].ari_url.rstrip("/") != ari_url.rstrip("/"):
        return (ari_url,)
    return tuple(n.ari_url for n in nodes)


@contextlib.asynccontextmanager
async def calls_held(target: PlayTarget, domain: str, in_use: Mapping[str, int], tmp: Path) -> AsyncIterator[None]:
    """``in_use`` (endpoint -> count) as calls up on every node for the block, hung up after it
    (devstack/play_hold.py)."""
    if not any(in_use.values()):
        yield
        return
    # Imported here: the ARI client (aiohttp) was a third of the start-up of every `call play`
    # process, and most scenarios hold no call.
    from devstack.play_hold import hold_calls

    async with hold_calls(target, domain, in_use, tmp):
        yield
