"""An embedded stack: a private Postgres cluster and one Asterisk 22 node, started together; or,
with ``nodes`` > 1, a cluster: N Asterisk nodes on addresses of their own behind a Kamailio SIP
edge (devstack/kamailio.py), all on the one Postgres.

Everything a stack owns is named by the stack: its state dir, its ports (chosen free once and
kept in stack.json), its Asterisk dirs inside the shared chroot. Two stacks never collide.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from devstack.api_token import ensure_operator_token
from devstack.asterisk import AsteriskNode
from devstack.chroot import asterisk_version, ensure_chroot, mount, umount
from devstack.kamailio import KamailioEdge
from devstack.postgres import PostgresCluster
from devstack.services import ServeProcess, register_node
from devstack.settings import StackSettings, cache_dir, stacks_dir
from pbx_base.errors import StackError
from sorcery_backend.nodes import remove_node
from sorcery_backend.schema import ensure_login, migrate

__all__ = ["Stack", "StackResized", "allow_lab_contexts", "chroot_path", "cluster_policy", "run_sql", "sql"]


def cluster_policy(edge: str) -> str:
    """The operator policy of a cluster behind the SIP edge at ``edge`` (host:port), as one
    statement. Behind the edge every REGISTER carries a Path to it, which Asterisk keeps only on
    an AOR with support_path (and refuses with 420 otherwise); and every request a node sends to
    a device goes through the edge: the controller dials one contact by its URI
    (`PJSIP/endpoint/URI`), for which Asterisk finds no contact record and so applies no Path, so
    the endpoint's outbound proxy is the edge."""
    return (
        "INSERT INTO pbx.option_policy (plan, section, option, forced, why) VALUES "
        "('default', 'aor', 'support_path', '{yes}', 'the cluster''s SIP edge adds a Path to every REGISTER'), "
        f"('default', 'endpoint', 'outbound_proxy', '{{\"sip:{edge};lr\"}}', "
        "'a node reaches every device through the cluster''s SIP edge') "
        "ON CONFLICT (plan, section, option) DO UPDATE SET forced = excluded.forced, allowed = true"
    )


class StackResized(StackError, RuntimeError):
    """The node count of a stack that runs was asked to change."""


def chroot_path() -> Path:
    return cache_dir() / "chroot-sid"


@dataclass
class Stack:
    settings: StackSettings
    chroot: Path

    @classmethod
    def named(cls, name: str, nodes: int | None = None) -> Stack:
        """``nodes``: the Asterisk node count to run (None: as the stack was made); changing it is
        refused while the stack's Asterisk runs."""
        if nodes is not None and (stacks_dir() / name / "stack.json").exists():
            current = cls(StackSettings.load_or_create(name), chroot_path())
            if current.settings.node_count != nodes and any(a.running() for a in current.asterisks):
                raise StackResized(
                    f"stack {name} runs with {current.settings.node_count} node(s): `pbxctl dev down` it before "
                    f"starting it with --nodes {nodes}"
                )
        return cls(StackSettings.load_or_create(name, nodes), chroot_path())

    @property
    def state_dir(self) -> Path:
        return stacks_dir() / self.settings.name

    @property
    def postgres(self) -> PostgresCluster:
        return PostgresCluster(
            root=self.state_dir / "pg", port=self.settings.pg_port, password=self.settings.pg_password
        )

    @property
    def asterisk(self) -> AsteriskNode:
        """The stack's Asterisk; in a cluster, node 1 (the one its `pbxctl serve` controls)."""
        return AsteriskNode(self.chroot, self.settings)

    @property
    def asterisks(self) -> list[AsteriskNode]:
        return [AsteriskNode(self.chroot, s) for s in self.settings.nodes()]

    @property
    def edge(self) -> KamailioEdge | None:
        """The cluster's SIP edge; None on a single-node stack."""
        return KamailioEdge(self.settings) if self.settings.cluster is not None else None

    @property
    def serve(self) -> ServeProcess:
        """`pbxctl serve` of this stack (routing API, change pusher): restart, kill, read its log."""
        return ServeProcess(self.state_dir, self.settings)

    @property
    def node_serves(self) -> list[ServeProcess]:
        """A cluster's nodes 2..N: each its own ARI controller (a call has one controller, the
        node it entered), without a pusher of its own (the stack's pushes to every node)."""
        return [ServeProcess(stacks_dir() / s.name, s, push=False) for s in self.settings.nodes()[1:]]

    def up(self) -> None:
        ensure_chroot(self.chroot)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o755)
        self.state_dir.parent.chmod(0o755)
        pg = self.postgres
        pg.start()
        pg.create_database(self.settings.db_name)
        asyncio.run(self._prepare_database())
        db_host = pg.local_socket if pg.local_socket_up() else "127.0.0.1"
        mount(self.chroot)
        for node in self.asterisks:
            node.render(db_host=db_host)
            node.start()
            register_node(node.settings)
        asyncio.run(self._drop_former_nodes())
        edge = self.edge
        if edge is not None:
            edge.start()  # after the nodes are rows: it reads them at start
        self.serve.start()
        for serve in self.node_serves:
            serve.start()

    async def _prepare_database(self) -> None:
        s = self.settings
        conn = await asyncpg.connect(s.database_url())
        try:
            await migrate(conn)
            await ensure_operator_token(conn, s.name)
            await ensure_login(conn, s.db_user, s.db_password, "pbx_asterisk")
            if s.cluster is not None:
                await ensure_login(conn, s.cluster.edge_db_user, s.cluster.edge_db_password, "pbx_kamailio")
                await conn.execute(cluster_policy(s.sip_addr))
        finally:
            await conn.close()

    async def _drop_former_nodes(self) -> None:
        """Nodes ``<stack>-<i>`` of an earlier, larger cluster of this stack: no longer pushed to."""
        keep = {n.name for n in self.settings.nodes()}
        prefix = self.settings.name + "-"
        conn = await asyncpg.connect(self.settings.database_url())
        try:
            for (name,) in await conn.fetch("SELECT name FROM pbx.nodes WHERE starts_with(name, $1)", prefix):
                if name not in keep and name[len(prefix) :].isdigit():
                    await remove_node(conn, name)
        finally:
            await conn.close()

    def down(self) -> None:
        for serve in self.node_serves:
            serve.stop()
        self.serve.stop()
        edge = self.edge
        if edge is not None:
            edge.stop()
        for node in self.asterisks:
            node.stop()
        self.postgres.stop()
        if not any_stack_running(self.chroot):
            umount(self.chroot)

    def status(self) -> dict[str, object]:
        state: dict[str, object] = {
            "name": self.settings.name,
            "postgres": "running" if self.postgres.initialized() and self.postgres.running() else "stopped",
            "asterisk": "running" if self.asterisk.running() else "stopped",
            "serve": "running" if self.serve.running() else "stopped",
            "asterisk_version": asterisk_version(self.chroot) if self.chroot.exists() else None,
            "state_dir": str(self.state_dir),
        }
        edge = self.edge
        if edge is not None:
            state["nodes"] = [
                {
                    "name": a.settings.name,
                    "sip_addr": a.settings.node_sip_addr,
                    "ari_url": a.settings.ari_url,
                    "ami_addr": a.settings.ami_addr,
                    "asterisk": "running" if a.running() else "stopped",
                    "serve": "running" if serve.running() else "stopped",
                }
                for a, serve in zip(self.asterisks, [self.serve, *self.node_serves], strict=True)
            ]
            state["edge"] = {
                "sip_addr": self.settings.sip_addr,
                "kamailio": "running" if edge.running() else "stopped",
                "dispatching_to": _destinations(edge),
            }
        state.update(self.settings.exports())
        return state

    def destroy(self) -> None:
        """Stop and remove everything the stack owns (the chroot stays)."""
        import shutil

        self.down()
        for node in self.asterisks:
            shutil.rmtree(node.dir, ignore_errors=True)
        for serve in self.node_serves:
            shutil.rmtree(serve.state_dir, ignore_errors=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)


def _destinations(edge: KamailioEdge) -> dict[str, str] | None:
    """What the edge dispatches to (URI: flags), None when it does not answer."""
    from sorcery_backend.kamailio_rpc import EdgeRefused, EdgeUnreachable

    if not edge.running():
        return None
    try:
        return edge.destinations()
    except (EdgeUnreachable, EdgeRefused):
        return None


def any_stack_running(chroot: Path) -> bool:
    base = chroot / "stacks"
    if not base.exists():
        return False
    for d in base.iterdir():
        settings_file = stacks_dir() / d.name / "stack.json"
        if settings_file.exists():
            settings = StackSettings.model_validate_json(settings_file.read_text())
            if any(AsteriskNode(chroot, s).running() for s in settings.nodes()):
                return True
    return False


async def sql(st: Stack, query: str, *args: object) -> list[asyncpg.Record]:
    """One query on the stack's database, on a connection of its own."""
    conn = await asyncpg.connect(st.settings.database_url())
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


def run_sql(st: Stack, query: str, *args: object) -> list[asyncpg.Record]:
    return asyncio.run(sql(st, query, *args))


def allow_lab_contexts(st: Stack) -> None:
    """Let endpoints of this lab stack name the node's own contexts (pbx-dial-test, pbx-ari-floor:
    a plain Dial() and a bare ARI app to compare the controller with): the operator's override of
    the reserved-context fence, for the stack tests and bench/calls.py."""
    run_sql(
        st,
        "INSERT INTO pbx.option_policy (plan, section, option, allowed, unfenced) "
        "VALUES ('default', 'endpoint', 'context', true, true) ON CONFLICT DO NOTHING",
    )
