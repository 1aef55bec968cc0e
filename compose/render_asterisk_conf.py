"""Render the project's asterisk_conf templates for a production node from environment variables."""

import os
import sys
from pathlib import Path

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
values = {
    "stack_dir": "/var",
    "db_host": os.environ.get("PBX_DB_HOST", "127.0.0.1"),
    "db_port": os.environ.get("PBX_DB_PORT", "5432"),
    "db_name": os.environ.get("PBX_DB_NAME", "pbx"),
    "db_user": os.environ.get("PBX_ASTERISK_DB_USER", "asterisk"),
    "db_password": os.environ["PBX_ASTERISK_DB_PASSWORD"],
    "sip_port": os.environ.get("PBX_SIP_PORT", "5060"),
    "http_port": os.environ.get("PBX_ARI_PORT", "8088"),
    "ami_port": os.environ.get("PBX_AMI_PORT", "5038"),
    "rtp_start": "10000",
    "rtp_end": "20000",
    "ari_user": "pbx",
    "ari_password": os.environ["PBX_ARI_PASSWORD"],
    "ari_app": "pbx",
    "ami_user": "pbx",
    "ami_password": os.environ["PBX_AMI_PASSWORD"],
}
for f in src.glob("*.conf"):
    text = f.read_text().format(**values)
    if f.name == "asterisk.conf":  # a container owns the standard directories
        text = "\n".join(line for line in text.splitlines() if "=>" not in line or "astmoddir" in line)
    (dst / f.name).write_text(text)
