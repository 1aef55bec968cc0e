"""Render the project's asterisk_conf templates for a production node from the PBX_* settings.

Usage: render_asterisk_conf.py TEMPLATE_DIR OUT_DIR (the names and defaults: pbx_base/settings.py).
"""

import sys
from pathlib import Path

from pbx_base.settings import SettingsError, get_settings

REQUIRED_SECRETS = ("asterisk_db_password", "ari_password", "ami_password")


def values() -> dict[str, object]:
    s = get_settings()
    missing = [f"PBX_{name.upper()}" for name in REQUIRED_SECRETS if not getattr(s, name).get_secret_value()]
    if missing:
        raise SettingsError(f"the Asterisk container needs {', '.join(missing)}")
    return {
        "stack_dir": "/var",
        "host": s.node_host,
        "systemname": s.systemname,
        "db_host": s.db_host,
        "db_port": s.db_port,
        "db_name": s.db_name,
        "db_user": s.asterisk_db_user,
        "db_password": s.asterisk_db_password.get_secret_value(),
        "sip_port": s.sip_port,
        "http_port": s.ari_port,
        "ami_port": s.ami_port,
        "rtp_start": 10000,
        "rtp_end": 20000,
        "ari_user": s.ari_user,
        "ari_password": s.ari_password.get_secret_value(),
        "ari_app": s.ari_app,
        "ami_user": s.ami_user,
        "ami_password": s.ami_password.get_secret_value(),
    }


def render(src: Path, dst: Path) -> None:
    conf = values()
    for f in src.glob("*.conf"):
        text = f.read_text().format(**conf)
        if f.name == "asterisk.conf":  # a container owns the standard directories
            text = "\n".join(line for line in text.splitlines() if "=>" not in line or "astmoddir" in line)
        (dst / f.name).write_text(text)


if __name__ == "__main__":
    try:
        render(Path(sys.argv[1]), Path(sys.argv[2]))
    except SettingsError as exc:
        sys.exit(f"render_asterisk_conf: {exc}")
