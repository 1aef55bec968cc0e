"""Stage 1: who is the caller, and the tree of extensions one call can reach.

Loops are cut on the ancestor path of each node (which starts with the caller), so a loop is cut
for this call only; paused members are never expanded; an immediate forward replaces its node;
nodes deeper than MAX_DEPTH are pruned, never an error. Pruned branches are kept with the reason,
for `route explain`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from routing.model import DEFAULT_RING_TIMEOUT_MS, Directory, Extension, RankMode, StaticContact

__all__ = ["MAX_DEPTH", "CallRequest", "Caller", "Node", "Pruned", "RankNode", "Tree", "build_tree", "reachable"]

MAX_DEPTH = 10
NodeKind = Literal["user", "multiring", "group", "trunk"]
_UNSET = object()


@dataclass(frozen=True)
class CallRequest:
    tenant: str
    caller: str
    called: str
    # The PJSIP endpoint the call arrived on; None = unauthenticated, from outside; absent = the
    # caller's first endpoint (contract section 5).
    endpoint: str | object | None = _UNSET
    callername: str | None = None

    @property
    def endpoint_given(self) -> bool:
        return self.endpoint is not _UNSET


@dataclass(frozen=True)
class Caller:
    number: str  # presented number
    name: str  # presented name, before any prefix
    extension: str | None  # the caller's own extension, when internal
    dialout: bool
    trunk: str | None = None  # the trunk extension the call came in through, from outside


@dataclass(frozen=True)
class Pruned:
    number: str
    reason: str  # loop | depth | paused | empty | noroute | forbidden


@dataclass
class RankNode:
    mode: RankMode
    delay_ms: int  # including the delays of left-out ranks before it
    members: list[Node]
    pruned: list[Pruned] = field(default_factory=list)


@dataclass
class Node:
    number: str
    ext: Extension
    kind: NodeKind
    depth: int
    endpoints: tuple[str, ...] = ()
    dialed: str | None = None  # trunk legs: the number sent out
    fallbacks: list[Node] = field(default_factory=list)  # trunk legs: tried in order when this one is unavailable
    # The extension a `refused` event names: the node's own number, but a number dialed out through
    # a trunk (no extension of its own) and a fallback are named by their trunk.
    refused_as: str = ""
    cw_off: bool = False  # call waiting off for this user leg (its own setting or a busy forward above)
    ranks: list[RankNode] = field(default_factory=list)
    timed_forward: tuple[int, Node] | None = None
    busy_forward: Node | None = None
    unavailable_forward: Node | None = None
    pruned: list[Pruned] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)  # extensions whose immediate forward led here


@dataclass
class Tree:
    status: str  # ok | noroute | error:noauth | error:forbidden
    caller: Caller | None = None
    root: Node | None = None
    calledname: str = ""
    prefix: str | None = None  # the dialed extension's short_name
    self_call: bool = False
    pruned: list[Pruned] = field(default_factory=list)
    called: str = ""  # the number routed: as dialed, or what a trunk's DID rule maps it to
    ring_timeout_ms: int = DEFAULT_RING_TIMEOUT_MS  # counted from the start of the call
    static_contacts: Mapping[str, tuple[StaticContact, ...]] = field(default_factory=dict)


def identify_caller(d: Directory, call: CallRequest) -> Caller | str:
    """The presented caller, or an error status (contract section 5)."""
    internal = d.extensions.get(call.caller)
    endpoint = call.endpoint
    if not call.endpoint_given:
        endpoint = internal.endpoints[0] if internal is not None and internal.endpoints else None
    if endpoint is None:
        if internal is not None and internal.type in ("simple", "multiring", "group"):
            return "error:noauth"
        return Caller(call.caller, call.callername or "", None, False)
    owner = d.extensions.get(d.endpoint_owner.get(str(endpoint), ""))
    if owner is not None and owner.type == "trunk":
        # From outside through a trunk: the number is the remote one, the name the one the
        # carrier sent, else the trunk's.
        return Caller(call.caller, call.callername or owner.name, None, False, trunk=owner.number)
    if owner is None:
        return Caller(call.caller, call.callername or "", None, False)
    if owner.number != call.caller:
        return "error:forbidden"
    return Caller(owner.outgoing_number or owner.number, owner.outgoing_name or owner.name, owner.number, owner.dialout)


class _Builder:
    def __init__(self, d: Directory, caller: Caller) -> None:
        self.d = d
        self.caller = caller

    def expand(
        self,
        number: str,
        depth: int,
        path: tuple[str, ...],
        busy_fwd_above: bool,
        via_forward_of: Extension | None = None,
    ) -> Node | Pruned:
        if depth > MAX_DEPTH:
            return Pruned(number, "depth")
        if number in path:
            return Pruned(number, "loop")
        if number in self.d.empty:
            return Pruned(number, "empty")  # left out as if absent
        ext = self.d.extensions.get(number)
        if ext is None:
            trunk = self.d.trunk_for(number)
            if trunk is None:
                return Pruned(number, "noroute")
            if trunk.number in self.d.empty:
                return Pruned(number, "empty")
            if not self._may_dial_out(via_forward_of):
                return Pruned(number, "forbidden")
            return self._trunk_node(number, trunk, depth)
        here = (*path, number)
        fwd = ext.forward
        if fwd is not None and fwd.immediate:
            target = self.expand(fwd.to, depth + 1, here, busy_fwd_above, ext)
            if isinstance(target, Node):
                target.replaced.insert(0, number)
                return target
            pruned_forward = target  # the forward is cut for this call: the extension itself rings
        else:
            pruned_forward = None
        node = self._node(ext, depth, here, busy_fwd_above, via_forward_of)
        if isinstance(node, Node) and pruned_forward is not None:
            node.pruned.append(pruned_forward)
        return node

    def _may_dial_out(self, via_forward_of: Extension | None) -> bool:
        return self.caller.dialout or (via_forward_of is not None and via_forward_of.dialout)

    def _trunk_node(self, number: str, trunk: Extension, depth: int) -> Node:
        """A leg dialing ``number`` out; each fallback applies its own rules to the number as dialed.
        Permission was checked once, for the first trunk."""
        own = number if number in self.d.extensions else trunk.number
        node = Node(number, trunk, "trunk", depth, trunk.endpoints, dialed=trunk.dialed(number), refused_as=own)
        node.fallbacks = [
            Node(number, fb, "trunk", depth, fb.endpoints, dialed=fb.dialed(number), refused_as=fb.number)
            for fb in self.d.fallback_chain(trunk)
            if fb.number not in self.d.empty
        ]
        return node

    def _node(
        self, ext: Extension, depth: int, here: tuple[str, ...], busy_fwd_above: bool, via_forward_of: Extension | None
    ) -> Node | Pruned:
        if ext.type in ("external", "trunk"):
            trunk = ext if ext.type == "trunk" else self.d.trunk_for(ext.number)
            if trunk is None:
                return Pruned(ext.number, "noroute")
            if not self._may_dial_out(via_forward_of):
                return Pruned(ext.number, "forbidden")
            node = self._trunk_node(ext.number, trunk, depth)
        else:
            kind: NodeKind = "group" if ext.type == "group" else ("multiring" if ext.type == "multiring" else "user")
            busy_fwd = busy_fwd_above or (ext.forward is not None and ext.forward.mode == "busy")
            node = Node(
                ext.number,
                ext,
                kind,
                depth,
                ext.endpoints if kind != "group" else (),
                cw_off=busy_fwd or not ext.call_waiting,
            )
            if kind != "user":
                node.ranks = self._ranks(ext, depth, here, busy_fwd)
            busy_fwd_above = busy_fwd
        fwd = ext.forward
        if fwd is not None and not fwd.immediate:
            target = self.expand(fwd.to, depth + 1, here, False, ext)
            if isinstance(target, Pruned):
                node.pruned.append(target)
            elif fwd.mode == "always":
                node.timed_forward = (fwd.delay_ms, target)
            elif fwd.mode == "busy":
                node.busy_forward = target
            else:
                node.unavailable_forward = target
        return node

    def _ranks(self, ext: Extension, depth: int, here: tuple[str, ...], busy_fwd: bool) -> list[RankNode]:
        out: list[RankNode] = []
        carried = 0
        for rank in ext.ranks:
            active = [m for m in rank.members if m.active and m.number not in self.d.empty]
            paused = [
                Pruned(m.number, "paused" if not m.active else "empty")
                for m in rank.members
                if not m.active or m.number in self.d.empty
            ]
            if not active:
                # Left out, but its delay still counts towards the next rank's.
                carried += rank.delay_ms if rank.mode != "default" else 0
                continue
            rn = RankNode(rank.mode, rank.delay_ms + carried, [], paused)
            carried = 0
            for m in active:
                child = self.expand(m.number, depth + 1, here, busy_fwd)
                (rn.pruned if isinstance(child, Pruned) else rn.members).append(child)  # type: ignore[arg-type]
            out.append(rn)
        return out


def build_tree(d: Directory, call: CallRequest) -> Tree:
    caller = identify_caller(d, call)
    if isinstance(caller, str):
        return Tree(caller)
    called = call.called
    if caller.trunk is not None:
        target = d.extensions[caller.trunk].did_target(called)
        if target is None:
            return Tree("noroute", caller, called=called)  # a trunk with dids routes only what they map
        called = target
    dialed = d.extensions.get(called)
    trunk = None if dialed is not None else d.trunk_for(called)
    if dialed is None and trunk is None:
        return Tree("noroute", caller, called=called)
    named = dialed or trunk
    assert named is not None
    tree = Tree(
        "ok",
        caller,
        calledname=named.name,
        prefix=named.short_name,
        called=called,
        ring_timeout_ms=named.ring_timeout_ms or d.ring_timeout_ms,
        static_contacts=d.static_contacts,
    )
    if caller.extension is not None and caller.extension == called:
        tree.self_call = True
        return tree
    path = (caller.extension,) if caller.extension else ()
    root = _Builder(d, caller).expand(called, 0, path, False)
    if isinstance(root, Pruned):
        tree.pruned.append(root)
        if root.reason == "forbidden":
            tree.status = "error:forbidden"
        elif root.reason in ("noroute", "empty"):
            tree.status = "noroute"
        return tree
    tree.root = root
    return tree


def reachable(d: Directory, caller: str, called: str, endpoint_owners: Iterable[str] = ()) -> set[str]:
    """Every extension `build_tree` may read for this call, and the trunks: a store that loads only
    these for a call routes it as on the whole directory.

    Seeds: the caller, the called number, every trunk (prefix routing, and so every fallback), and
    `endpoint_owners`, the extensions listing the endpoint the call arrived on (so that its owner is
    the same as in the whole directory), and what their DID rules map the called number to. From
    them, rank members and forward targets, one step past MAX_DEPTH (the tree prunes there by
    number alone). routing_store.loader's per-call statement recurses by the
    same rule in SQL (one round trip); its tests check both load the same extensions.
    """
    exts = d.extensions
    # A call from a carrier: what the DID rules of the endpoint's trunks map `called` to.
    dids = [t for o in endpoint_owners if o in exts for r in exts[o].dids if (t := r.target(called)) is not None]
    seen = {n for n in (caller, called, *endpoint_owners, *dids) if n in exts}
    seen.update(d.trunks)
    frontier = list(seen)
    for _ in range(MAX_DEPTH + 1):
        nxt = []
        for number in frontier:
            ext = exts[number]
            targets = [m.number for r in ext.ranks for m in r.members]
            if ext.forward is not None:
                targets.append(ext.forward.to)
            for t in targets:
                if t not in seen and t in exts:
                    seen.add(t)
                    nxt.append(t)
        if not nxt:
            break
        frontier = nxt
    return seen
