"""A node's realtime families through res_config_odbc and res_odbc's connection pool (psqlODBC)
instead of res_config_pgsql's one connection: the files it needs, rendered next to its other
configuration. Used by bench/register.py --odbc; not the shipped configuration.

unixODBC finds the driver and the DSN through ODBCSYSINI (devstack/asterisk.py sets it to the
node's etc dir), so each node of a shared chroot has its own DSN.
"""

from __future__ import annotations

import re
from pathlib import Path

from devstack.settings import StackSettings

__all__ = ["CLASS", "PSQLODBC", "REALTIME_FAMILIES", "odbc_files", "render_odbc", "route_families", "with_odbc_modules"]

CLASS = "pbx"  # res_odbc's class name, which extconfig.conf's odbc mappings name as their database
PSQLODBC = "/usr/lib/x86_64-linux-gnu/odbc/psqlodbcw.so"
REALTIME_FAMILIES = (
    "ps_endpoints",
    "ps_auths",
    "ps_aors",
    "ps_contacts",
    "ps_domain_aliases",
    "ps_endpoint_id_ips",
    "ps_registrations",
)
# res_odbc requires res_odbc_transaction (its AST_MODULE_INFO); with autoload = no it must be listed.
_MODULES = ("res_odbc_transaction.so", "res_odbc.so", "res_config_odbc.so")


def odbc_files(s: StackSettings, db_host: str, max_connections: int, server_prepare: bool = True) -> dict[str, str]:
    """odbcinst.ini, odbc.ini and res_odbc.conf for a node of ``s`` reaching Postgres at ``db_host``
    (an address, or the abstract socket ``@name`` that libpq under psqlODBC understands too)."""
    if max_connections < 1:
        raise ValueError(f"res_odbc max_connections {max_connections}: must be at least 1")
    odbcinst = f"[psqlodbc]\nDriver = {PSQLODBC}\n"
    # UseServerSidePrepare = 1: res_config_odbc's bound values go as protocol parameters (Parse, Bind,
    # Describe, Execute per statement); 0: psqlODBC substitutes them and sends one simple query.
    odbc_ini = (
        f"[{CLASS}]\nDriver = psqlodbc\nServername = {db_host}\nPort = {s.pg_port}\nDatabase = {s.db_name}\n"
        f"UseServerSidePrepare = {int(server_prepare)}\n"
    )
    # pre-connect opens the first connection at load (a wrong DSN fails at boot, not at the first
    # REGISTER); the pool grows to max_connections on demand and keeps what it opened.
    res_odbc = (
        f"[{CLASS}]\nenabled => yes\ndsn => {CLASS}\nusername => {s.db_user}\npassword => {s.db_password}\n"
        f"pre-connect => yes\nmax_connections => {max_connections}\n"
    )
    return {"odbcinst.ini": odbcinst, "odbc.ini": odbc_ini, "res_odbc.conf": res_odbc}


def route_families(extconfig: str, families: tuple[str, ...]) -> str:
    """extconfig.conf with ``families`` mapped to the ODBC class instead of res_config_pgsql."""
    unknown = sorted(set(families) - set(REALTIME_FAMILIES))
    if unknown:
        raise ValueError(f"realtime family {unknown[0]}: not one of {', '.join(REALTIME_FAMILIES)}")
    out = extconfig
    for family in families:
        # The table, when the mapping names one (ps_contacts: the view ps_node_contacts), stays.
        out, n = re.subn(rf"^{family} => pgsql,\w+(,\w+)?$", rf"{family} => odbc,{CLASS}\1", out, flags=re.MULTILINE)
        if n != 1:
            raise ValueError(f"extconfig.conf: no pgsql mapping of {family} to replace")
    return out


def with_odbc_modules(modules: str) -> str:
    """modules.conf (autoload = no) that also loads res_odbc and res_config_odbc, before Sorcery's
    realtime wizard needs them."""
    anchor = "load => res_config_pgsql.so\n"
    if anchor not in modules:
        raise ValueError("modules.conf: no res_config_pgsql load line to put the ODBC modules after")
    if all(f"load => {m}\n" in modules for m in _MODULES):
        return modules
    return modules.replace(anchor, anchor + "".join(f"load => {m}\n" for m in _MODULES), 1)


def render_odbc(
    etc: Path,
    s: StackSettings,
    db_host: str,
    families: tuple[str, ...],
    max_connections: int,
    server_prepare: bool = True,
) -> None:
    """Rewrite a rendered node's etc dir so ``families`` go through ODBC (takes effect at restart)."""
    for name, text in odbc_files(s, db_host, max_connections, server_prepare).items():
        (etc / name).write_text(text)
    (etc / "extconfig.conf").write_text(route_families((etc / "extconfig.conf").read_text(), families))
    (etc / "modules.conf").write_text(with_odbc_modules((etc / "modules.conf").read_text()))
