"""Where a stack lives and what it listens on. Persisted per stack so `dev up` is idempotent."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from pydantic import BaseModel

from devstack.ports import free_port, rtp_range
from pbx_base.settings import DEFAULTS, get_settings

__all__ = ["StackSettings", "cache_dir", "stacks_dir"]


def cache_dir() -> Path:
    return get_settings().cache_dir


def stacks_dir() -> Path:
    # Not under the cache dir: ~ is private to root, and the Postgres server runs as `postgres`.
    return get_settings().stacks_dir


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

    @classmethod
    def load_or_create(cls, name: str) -> StackSettings:
        path = stacks_dir() / name / "stack.json"
        if path.exists():
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
        path.write_text(json.dumps(settings.model_dump(), indent=1))
        return settings

    @property
    def sip_addr(self) -> str:
        return f"127.0.0.1:{self.sip_port}"

    @property
    def ari_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def database_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.pg_port}/{self.db_name}"

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
