"""Where a stack lives and what it listens on. Persisted per stack so `dev up` is idempotent."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from pydantic import BaseModel, Field

from devstack.postgres import free_port

__all__ = ["StackSettings", "cache_dir", "stacks_dir"]


def cache_dir() -> Path:
    return Path(os.environ.get("PBX_CACHE_DIR") or Path.home() / ".cache" / "pbx")


def stacks_dir() -> Path:
    # Not under the cache dir: ~ is private to root, and the Postgres server runs as `postgres`.
    return Path(os.environ.get("PBX_STACKS_DIR") or "/var/lib/pbx-dev/stacks")


class StackSettings(BaseModel):
    name: str
    pg_port: int
    sip_port: int
    http_port: int
    ami_port: int
    rtp_start: int
    rtp_end: int
    db_name: str = "pbx"
    db_user: str = "asterisk"
    db_password: str
    ari_user: str = "pbx"
    ari_password: str
    ami_user: str = "pbx"
    ami_password: str
    ari_app: str = "pbx"
    # The cluster's superuser password (nothing is trusted, devstack/postgres.py).
    pg_password: str = Field(default_factory=lambda: secrets.token_hex(16))

    @classmethod
    def load_or_create(cls, name: str) -> StackSettings:
        path = stacks_dir() / name / "stack.json"
        if path.exists():
            path.chmod(0o600)  # a stack.json written before it was kept private
            return cls.model_validate_json(path.read_text())
        rtp = 20000 + (free_port() % 400) * 100  # a private RTP range per stack
        settings = cls(
            name=name,
            pg_port=free_port(),
            sip_port=_free_udp_and_tcp_port(),
            http_port=free_port(),
            ami_port=free_port(),
            rtp_start=rtp,
            rtp_end=rtp + 98,
            db_password=secrets.token_hex(8),
            ari_password=secrets.token_hex(8),
            ami_password=secrets.token_hex(8),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        # It holds the AMI, ARI and database passwords: readable by its owner only.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(settings.model_dump(), indent=1))
        return settings

    @property
    def sip_addr(self) -> str:
        return f"127.0.0.1:{self.sip_port}"

    @property
    def ari_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def database_url(self) -> str:
        return f"postgresql://postgres:{self.pg_password}@127.0.0.1:{self.pg_port}/{self.db_name}"

    def exports(self) -> dict[str, str]:
        return {
            "PBX_STACK": self.name,
            "PBX_DATABASE_URL": self.database_url(),
            "PBX_SIP_ADDR": self.sip_addr,
            "PBX_ARI_URL": self.ari_url,
            "PBX_ARI_USER": self.ari_user,
            "PBX_ARI_PASSWORD": self.ari_password,
            "PBX_ARI_APP": self.ari_app,
            "PBX_AMI_ADDR": f"127.0.0.1:{self.ami_port}",
            "PBX_AMI_USER": self.ami_user,
            "PBX_AMI_PASSWORD": self.ami_password,
        }


def _free_udp_and_tcp_port() -> int:
    import socket

    for _ in range(50):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port for SIP on 127.0.0.1")
