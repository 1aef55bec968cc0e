"""Where a stack lives and what it listens on. Persisted per stack so `dev up` is idempotent."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from pydantic import BaseModel, Field

from devstack.ports import free_port, rtp_range
from pbx_base.settings import DEFAULTS, get_settings

__all__ = [
    "EDGE_HOST",
    "ClusterSettings",
    "StackSettings",
    "cache_dir",
    "edge_dir",
    "read_http_token",
    "serve_port",
    "stacks_dir",
    "write_http_token",
]


def cache_dir() -> Path:
    return get_settings().cache_dir


def stacks_dir() -> Path:
    # Not under the cache dir: ~ is private to root, and the Postgres server runs as `postgres`.
    return get_settings().stacks_dir


def serve_port(name: str) -> int | None:
    """The port the stack's `pbxctl serve` listens on, once it has been started (serve.json)."""
    try:
        return int(json.loads((stacks_dir() / name / "serve.json").read_text())["http_port"])
    except (OSError, ValueError, KeyError):
        return None


def edge_dir(name: str) -> Path:
    """The state of a cluster stack's Kamailio (config, log, RPC sockets)."""
    return stacks_dir() / name / "kamailio"


def _token_file(name: str) -> Path:
    return stacks_dir() / name / "http_token"


def read_http_token(name: str) -> str | None:
    try:
        return _token_file(name).read_text().strip() or None
    except OSError:
        return None


def write_http_token(name: str, token: str) -> None:
    """The stack's operator token, readable by its owner only (0600 from the first byte)."""
    path = _token_file(name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, 0o600)  # a file left by an older run may have had another mode
        f.write(token + "\n")


# The cluster's loopback addresses: the SIP edge, and node i (1, 2, ...) at 127.0.0.(10 + i). Every
# part of one stack listens on the same port numbers (reserved once on 127.0.0.1, so no other stack
# has them) on its own address.
EDGE_HOST = "127.0.0.10"
MAX_NODES = 9


def node_host(index: int) -> str:
    return f"127.0.0.{10 + index}"


class ClusterSettings(BaseModel):
    """A stack of several Asterisk nodes behind a Kamailio SIP edge (`pbxctl dev up --nodes N`)."""

    stack: str  # the stack's name (a node's own name is <stack>-<i> from node 2 on)
    nodes: int = Field(ge=2, le=MAX_NODES)
    edge_host: str = EDGE_HOST
    # The edge's database login (granted pbx_kamailio: the dispatcher view only).
    edge_db_user: str = "kamailio"
    edge_db_password: str = Field(default_factory=lambda: secrets.token_hex(8))
    # RTP ports of nodes 2..N (node 1 has the stack's): Asterisk binds RTP on every address.
    node_rtp: list[tuple[int, int]] = Field(default_factory=list)


class StackSettings(BaseModel):
    name: str
    pg_port: int
    sip_port: int
    http_port: int
    ami_port: int
    rtp_start: int
    rtp_end: int
    db_name: str = DEFAULTS.db_name
    db_user: str = DEFAULTS.asterisk_db_user
    db_password: str
    ari_user: str = DEFAULTS.ari_user
    ari_password: str
    ami_user: str = DEFAULTS.ami_user
    ami_password: str
    ari_app: str = DEFAULTS.ari_app
    # The cluster's superuser password (nothing is trusted, devstack/postgres.py).
    pg_password: str = Field(default_factory=lambda: secrets.token_hex(16))
    # This Asterisk's address, and its systemname (empty: none, as on a single node; in a cluster
    # the node's name, which Asterisk writes in ps_contacts.reg_server).
    host: str = "127.0.0.1"
    systemname: str = ""
    cluster: ClusterSettings | None = None

    @classmethod
    def load_or_create(cls, name: str, nodes: int | None = None) -> StackSettings:
        """``nodes``: how many Asterisk nodes (None: as the stack was made, 1 for a new one)."""
        path = stacks_dir() / name / "stack.json"
        if path.exists():
            path.chmod(0o600)  # a stack.json written before it was kept private
            settings = cls.model_validate_json(path.read_text())
            if nodes is None or nodes == settings.node_count:
                return settings
            settings = settings.with_nodes(nodes)
        else:
            settings = cls._new(name).with_nodes(nodes or 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        # It holds the AMI, ARI and database passwords: readable by its owner only.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(settings.model_dump(), indent=1))
        return settings

    @classmethod
    def _new(cls, name: str) -> StackSettings:
        rtp_start, rtp_end = rtp_range()
        settings = cls(
            name=name,
            pg_port=free_port(),
            sip_port=free_port("both"),
            http_port=free_port(),
            ami_port=free_port(),
            rtp_start=rtp_start,
            rtp_end=rtp_end,
            db_password=secrets.token_hex(8),
            ari_password=secrets.token_hex(8),
            ami_password=secrets.token_hex(8),
        )
        return settings

    @property
    def node_count(self) -> int:
        return 1 if self.cluster is None else self.cluster.nodes

    def with_nodes(self, nodes: int) -> StackSettings:
        """The stack with ``nodes`` Asterisk nodes: one is the plain stack on 127.0.0.1; more are a
        cluster whose node 1 is this stack's Asterisk, moved to its own address."""
        if not 1 <= nodes <= MAX_NODES:
            raise ValueError(f"stack {self.name}: --nodes must be 1 to {MAX_NODES}, not {nodes}")
        if nodes == 1:
            return self.model_copy(update={"host": "127.0.0.1", "systemname": "", "cluster": None})
        old = self.cluster
        rtp = list(old.node_rtp[: nodes - 1]) if old is not None else []
        while len(rtp) < nodes - 1:
            rtp.append(rtp_range())
        cluster = ClusterSettings(stack=self.name, nodes=nodes, node_rtp=rtp)
        if old is not None:  # the edge's login stays what the database has
            cluster.edge_db_password = old.edge_db_password
        return self.model_copy(update={"host": node_host(1), "systemname": self.name, "cluster": cluster})

    def nodes(self) -> list[StackSettings]:
        """Every Asterisk node of the stack, the stack's own first. Node i > 1 is named
        ``<stack>-<i>`` (its dir in the chroot, its row in pbx.nodes, its systemname)."""
        out = [self]
        if self.cluster is not None:
            for i, (start, end) in enumerate(self.cluster.node_rtp, start=2):
                name = f"{self.name}-{i}"
                update = {"name": name, "systemname": name, "host": node_host(i), "rtp_start": start, "rtp_end": end}
                out.append(self.model_copy(update=update))
        return out

    @property
    def node_sip_addr(self) -> str:
        """This Asterisk's own SIP address."""
        return f"{self.host}:{self.sip_port}"

    @property
    def sip_addr(self) -> str:
        """Where phones send SIP: the edge in a cluster, else the Asterisk."""
        if self.cluster is not None:
            return f"{self.cluster.edge_host}:{self.sip_port}"
        return self.node_sip_addr

    @property
    def ami_addr(self) -> str:
        return f"{self.host}:{self.ami_port}"

    @property
    def ari_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def database_url(self) -> str:
        return f"postgresql://postgres:{self.pg_password}@127.0.0.1:{self.pg_port}/{self.db_name}"

    def exports(self) -> dict[str, str]:
        out = {
            "PBX_STACK": self.name,
            "PBX_DATABASE_URL": self.database_url(),
            "PBX_SIP_ADDR": self.sip_addr,
            "PBX_ARI_URL": self.ari_url,
            "PBX_ARI_USER": self.ari_user,
            "PBX_ARI_PASSWORD": self.ari_password,
            "PBX_ARI_APP": self.ari_app,
            "PBX_AMI_ADDR": self.ami_addr,
            "PBX_AMI_USER": self.ami_user,
            "PBX_AMI_PASSWORD": self.ami_password,
        }
        # `pbxctl serve`'s API: its address once started, the operator token `dev up` made.
        port = serve_port(self.name)
        if port is not None:
            out["PBX_HTTP_ADDR"] = f"127.0.0.1:{port}"
        token = read_http_token(self.name)
        if token is not None:
            out["PBX_HTTP_TOKEN"] = token
        if self.cluster is not None:
            out["PBX_KAMAILIO_RPC"] = str(edge_dir(self.cluster.stack) / "rpc.sock")
        return out
