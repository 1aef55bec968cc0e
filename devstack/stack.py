"""An embedded stack: a private Postgres cluster and one Asterisk 22 node, started together.

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
from devstack.postgres import PostgresCluster
from devstack.services import ServeProcess, register_node
from devstack.settings import StackSettings, cache_dir, stacks_dir
from sorcery_backend.schema import ensure_asterisk_login, migrate

__all__ = ["Stack", "allow_lab_contexts", "chroot_path", "run_sql", "sql"]


def chroot_path() -> Path:
    return cache_dir() / "chroot-sid"


@dataclass
class Stack:
    settings: StackSettings
    chroot: Path

    @classmethod
    def named(cls, name: str) -> Stack:
        return cls(StackSettings.load_or_create(name), chroot_path())

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
        return AsteriskNode(self.chroot, self.settings)

    @property
    def serve(self) -> ServeProcess:
        """`pbxctl serve` of this stack (routing API, change pusher): restart, kill, read its log."""
        return ServeProcess(self.state_dir, self.settings)

    def up(self) -> None:
        ensure_chroot(self.chroot)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o755)
        self.state_dir.parent.chmod(0o755)
        pg = self.postgres
        pg.start()
        pg.create_database(self.settings.db_name)
        asyncio.run(self._prepare_database())
        node = self.asterisk
        node.render(db_host=pg.local_socket if pg.local_socket_up() else "127.0.0.1")
        mount(self.chroot)
        node.start()
        register_node(self.settings)
        self.serve.start()

    async def _prepare_database(self) -> None:
        s = self.settings
        conn = await asyncpg.connect(s.database_url())
        try:
            await migrate(conn)
            await ensure_operator_token(conn, s.name)
            await ensure_asterisk_login(conn, s.db_user, s.db_password)
        finally:
            await conn.close()

    def down(self) -> None:
        self.serve.stop()
        self.asterisk.stop()
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
        state.update(self.settings.exports())
        return state

    def destroy(self) -> None:
        """Stop and remove everything the stack owns (the chroot stays)."""
        import shutil

        self.down()
        shutil.rmtree(self.asterisk.dir, ignore_errors=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)


def any_stack_running(chroot: Path) -> bool:
    base = chroot / "stacks"
    if not base.exists():
        return False
    for d in base.iterdir():
        settings_file = stacks_dir() / d.name / "stack.json"
        if settings_file.exists():
            node = AsteriskNode(chroot, StackSettings.model_validate_json(settings_file.read_text()))
            if node.running():
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
