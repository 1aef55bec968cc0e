"""Where a stack lives and what it listens on. Persisted per stack so `dev up` is idempotent."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from pydantic import BaseModel, Field

from devstack.ports import free_port, rtp_range
from pbx_base.settings import DEFAULTS, get_settings

__all__ = ["StackSettings", "cache_dir", "read_http_token", "serve_port", "stacks_dir", "write_http_token"]


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

    @classmethod
    def load_or_create(cls, name: str) -> StackSettings:
        path = stacks_dir() / name / "stack.json"
        if path.exists():
            path.chmod(0o600)  # a stack.json written before it was kept private
            return cls.model_validate_json(path.read_text())
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
        out = {
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
        # `pbxctl serve`'s API: its address once started, the operator token `dev up` made.
        port = serve_port(self.name)
        if port is not None:
            out["PBX_HTTP_ADDR"] = f"127.0.0.1:{port}"
        token = read_http_token(self.name)
        if token is not None:
            out["PBX_HTTP_TOKEN"] = token
        return out
