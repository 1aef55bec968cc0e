"""Every environment variable the product reads, with its default and meaning: one typed object.

``PBX_<FIELD>`` sets a field (``PBX_POOL_SIZE=8``); an empty variable counts as unset. Command-line
options (``--dsn``, ``--http``, ...) override the variable they name. The README's configuration
table is rendered from this class (``python -m pbx_base.settings``) and a test keeps them equal.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pbx_base.errors import InvalidInput

__all__ = ["DEFAULTS", "ENV_PREFIX", "Settings", "SettingsError", "get_settings", "markdown_table"]

ENV_PREFIX = "PBX_"


class SettingsError(InvalidInput, ValueError):
    """An environment variable has a value its field refuses (one line, names the variable)."""


def _host_port(value: str | None) -> str | None:
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected HOST:PORT")
    return value


HostPort = Annotated[str, AfterValidator(_host_port)]
Port = Annotated[int, Field(ge=1, le=65535)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, frozen=True, extra="ignore")

    # --- the control plane: pbxctl and pbxctl serve ----------------------------------------------
    database_url: str | None = Field(
        default=None, description="Postgres DSN of the control plane (`--dsn` overrides it)"
    )
    http_addr: HostPort = Field(
        default="127.0.0.1:8090",
        description="where `pbxctl serve` listens (routing API, `/calls`, `/metrics`) and where "
        "`pbxctl call add-party|list` reach it (`--http` overrides it)",
    )
    http_token: SecretStr = Field(
        default=SecretStr(""),
        description="bearer token `pbxctl call add-party|list` send to `pbxctl serve` (`pbxctl token create` "
        "prints one; `pbxctl dev up` exports an operator token)",
    )
    http_tls_cert: Path | None = Field(
        default=None,
        description="PEM certificate (chain) of `pbxctl serve`'s HTTP API: with `PBX_HTTP_TLS_KEY` it serves "
        "HTTPS, and only then may `PBX_HTTP_ADDR` be other than loopback; `pbxctl call` trusts it",
    )
    http_tls_key: Path | None = Field(default=None, description="PEM private key of `PBX_HTTP_TLS_CERT`")
    metrics_open: bool = Field(
        default=True,
        description="`/metrics` answers without a token while `pbxctl serve` listens on loopback "
        "(`false`: an operator token always; never open on other addresses)",
    )
    pool_size: int = Field(
        default=4, ge=1, description="connections in `pbxctl serve`'s pool (routing API, call lookups)"
    )
    outbox_keep_s: float = Field(
        default=86400.0,
        ge=0,
        description="seconds delivered rows of `pbx.outbox` are kept as history (`pbxctl serve --outbox-keep`)",
    )
    contacts_sync_interval: float = Field(
        default=60.0,
        gt=0,
        description="seconds between full comparisons of each node's registered contacts with `ps_contacts` "
        "(also done at once when the database or a node's AMI comes back)",
    )
    audit_keep_s: float = Field(
        default=7776000.0,
        ge=0,
        description="seconds `pbx.audit` rows are kept; `pbxctl serve`'s pusher trims older ones (90 days)",
    )
    db_retry_max_s: float = Field(
        default=10.0,
        gt=0,
        description="longest wait, in seconds, between reconnects of the change pusher to the database "
        "and of the routing cache's LISTEN connection",
    )
    # Short, for the reason of ari_retry_max_s: a restarted node takes calls at once, but the dialplan
    # contexts the pusher adds over AMI are gone until it reconnects (calls meet an empty context:
    # 404), and a climbing backoff left that window open for up to 10 s after the node was up.
    ami_retry_max_s: float = Field(
        default=1.0,
        gt=0,
        description="longest wait, in seconds, between reconnects of the change pusher to a node's AMI",
    )

    # --- ARI and the Stasis controller ------------------------------------------------------------
    ari_url: str | None = Field(
        default=None,
        description="Asterisk's ARI base URL (`http://host:port`): `pbxctl serve` runs the ARI controller "
        "only when it is set; `pbxctl call play` needs it",
    )
    ari_user: str = Field(default="pbx", description="ARI user (ari.conf)")
    ari_password: SecretStr = Field(default=SecretStr(""), description="ARI password (ari.conf)")
    ari_app: str = Field(default="pbx", description="the Stasis application the controller registers")
    # Short: a restarted node answers SIP (and the edge's probes) at once, and its calls wait in the
    # dialplan only 8 s for the controller; a climbing backoff kept a node's calls failing for up to
    # 16 s after a restart. An attempt costs a refused TCP connect.
    ari_retry_max_s: float = Field(
        default=2.0,
        gt=0,
        description="longest wait, in seconds, between reconnects of the ARI event streams (the node's own, "
        "and the feeds of the other nodes)",
    )
    party_ring_s: int = Field(
        default=60,
        ge=1,
        description="seconds a party dialed into a conference (`call add-party`) rings before Asterisk gives up",
    )
    answered_leg_wait_s: float = Field(
        default=10.0,
        gt=0,
        description="seconds a conference waits for the answered leg to enter Stasis before bridging",
    )
    call_records: bool = Field(
        default=True,
        description="the controller writes a row per call and per leg to `pbx.call_records`/`pbx.call_legs` "
        "(`false`: none; bench/calls.py compares the two)",
    )
    call_records_buffer: int = Field(
        default=10000,
        ge=1,
        description="finished calls the controller holds in memory while the database cannot take their "
        "records; beyond it the oldest are dropped (counted in `pbx_call_records_dropped_total`)",
    )
    call_records_keep_s: float = Field(
        default=7776000.0,
        ge=0,
        description="seconds call records are kept; `pbxctl serve`'s pusher trims older ones (90 days)",
    )

    # --- SIP and AMI of a node (printed by `pbxctl dev up`) ---------------------------------------
    sip_addr: HostPort | None = Field(
        default=None, description="HOST:PORT of Asterisk's UDP SIP transport (`pbxctl call play` calls there)"
    )
    ami_addr: HostPort | None = Field(
        default=None, description="HOST:PORT of the node's AMI (for `pbxctl nodes add --ami`)"
    )
    ami_user: str = Field(default="pbx", description="AMI user (manager.conf; for `pbxctl nodes add --user`)")
    ami_password: SecretStr = Field(
        default=SecretStr(""),
        description="AMI secret: what `pbxctl nodes add` stores (unless `--secret-env` names another)",
    )
    kamailio_rpc: Path | None = Field(
        default=None,
        description="the cluster's SIP edge: Kamailio's JSON-RPC datagram socket; `pbxctl nodes add|remove` "
        "reload its dispatcher there (`pbxctl dev up --nodes N` exports it)",
    )
    endpoint_password: SecretStr = Field(
        default=SecretStr(""),
        description="the new password `pbxctl endpoint passwd` sets (unless `--password-env` names another); "
        "never on the command line",
    )

    # --- the embedded dev stack -----------------------------------------------------------------
    stack: str = Field(default="dev", description="stack `pbxctl dev up|down|status` act on without `--name`")
    cache_dir: Path = Field(
        default=Path("~/.cache/pbx"),
        validate_default=True,
        description="where the venv and the Asterisk chroot are cached",
    )
    stacks_dir: Path = Field(
        default=Path("/var/lib/pbx-dev/stacks"),
        description="state of the dev stacks (Postgres clusters, logs); not under the home directory, "
        "which the `postgres` user cannot enter",
    )

    # --- the Asterisk container (compose/render_asterisk_conf.py) ---------------------------------
    db_host: str = Field(
        default="127.0.0.1", description="Asterisk container: the Postgres host its realtime driver connects to"
    )
    db_port: Port = Field(default=5432, description="Asterisk container: that Postgres' port")
    db_name: str = Field(default="pbx", description="Asterisk container: the control plane's database")
    asterisk_db_user: str = Field(
        default="asterisk", description="Asterisk container: the login role Asterisk uses (granted `pbx_asterisk`)"
    )
    asterisk_db_password: SecretStr = Field(
        default=SecretStr(""), description="Asterisk container: that role's password (required there)"
    )
    sip_port: Port = Field(default=5060, description="Asterisk container: UDP port of the SIP transport")
    ari_port: Port = Field(default=8088, description="Asterisk container: HTTP port (ARI)")
    ami_port: Port = Field(default=5038, description="Asterisk container: AMI port")
    node_host: str = Field(
        default="127.0.0.1",
        description="Asterisk container: the address its SIP transport, ARI and AMI listen on (a cluster node's own)",
    )
    systemname: str = Field(
        default="",
        description="Asterisk container: its systemname, the node's name in a cluster (Asterisk writes it in "
        "`ps_contacts.reg_server`); empty on a single node",
    )

    # --- the SIP edge's container (python -m devstack.edge_container) -----------------------------
    edge_host: str = Field(
        default="127.0.0.1", description="SIP edge container: the address Kamailio listens on (port `PBX_SIP_PORT`)"
    )
    kamailio_db_user: str = Field(
        default="kamailio", description="the SIP edge's login role (granted `pbx_kamailio`: its dispatcher view only)"
    )
    kamailio_db_password: SecretStr = Field(
        default=SecretStr(""),
        description="that role's password: with it set, `pbxctl db migrate` also creates or updates the role; "
        "the edge's container logs in with it",
    )

    @field_validator("cache_dir", "stacks_dir")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()


def _load() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ENV_PREFIX + str(err["loc"][0]).upper() if err["loc"] else "settings"
        # The value is not echoed: it may be a secret.
        raise SettingsError(f"environment variable {name}: {err['msg']}") from None


@functools.cache
def get_settings() -> Settings:
    """The process's settings, read from the environment once (``get_settings.cache_clear()`` rereads)."""
    return _load()


# The defaults alone, without reading the environment: for the defaults of library parameters.
DEFAULTS = Settings.model_construct()


def _shown_default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`" if str(value) else "empty"


def markdown_table() -> str:
    """The README's configuration table, one row per variable."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        meaning = str(field.description).replace("|", "\\|")  # a bare | would end the cell
        rows.append(f"| `{ENV_PREFIX}{name.upper()}` | {_shown_default(field.default)} | {meaning} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
