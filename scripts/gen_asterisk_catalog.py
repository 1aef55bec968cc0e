#!/usr/bin/env python3
"""Regenerate sorcery_backend/data/{realtime_columns,pjsip_options}.json for an Asterisk release.

How the shipped files were made (Asterisk 22.10.1):

1. Realtime columns: Asterisk's own alembic scripts (contrib/ast-db-manage/config of the release)
   were run with `alembic upgrade head` against a throwaway Postgres database; this script reads
   the resulting columns back from information_schema (ordinal order, ENUM types expanded):
       gen_asterisk_catalog.py columns --dsn postgresql://.../astref
2. PJSIP options: the documentation XML the Debian package installs
   (/usr/share/asterisk/documentation/core-en_US.xml: configObject/configOption, enum lists) for
   names and enumerations, and the release's C sources (ast_sorcery_object_field_register* calls
   in res/res_pjsip/*.c, res_pjsip_endpoint_identifier_ip.c, res_pjsip_outbound_registration.c)
   for value types:
       gen_asterisk_catalog.py options --xml core-en_US.xml --src DIR_WITH_THE_C_FILES

Then run scripts/gen_realtime_sql.py to turn the data into sql/006 and sql/007.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "sorcery_backend" / "data"
TABLES = (
    "ps_endpoints",
    "ps_aors",
    "ps_auths",
    "ps_endpoint_id_ips",
    "ps_registrations",
    "ps_domain_aliases",
    "ps_contacts",
)
SECTIONS = {"endpoint", "aor", "auth", "identify", "registration", "domain_alias"}
MODULES = {"res_pjsip", "res_pjsip_endpoint_identifier_ip", "res_pjsip_outbound_registration"}
# Options that take several values: given as a YAML list, stored ';'-separated (contract section 2).
MULTI = {
    "set_var",
    "match",
    "contact",
    "permit",
    "deny",
    "acl",
    "contact_permit",
    "contact_deny",
    "contact_acl",
    "allow",
    "disallow",
}
# Enumerations checked strictly: single-token values whose handlers accept exactly the documented
# words (plus the extra words the handler also takes, listed here).
STRICT_ENUMS = {
    "100rel": [],
    "callerid_privacy": [],
    "direct_media_glare_mitigation": [],
    "direct_media_method": [],
    "connected_line_method": [],
    "dtmf_mode": ["none"],
    "redirect_method": [],
    "timers": [],
    "media_encryption": [],
    "t38_udptl_ec": [],
    "dtls_setup": [],
    "incoming_call_offer_pref": [],
    "outgoing_call_offer_pref": [],
    "security_negotiation": [],
    "auth_type": [],
}
C_TYPES = {
    "OPT_BOOL_T": "bool",
    "OPT_YESNO_T": "bool",
    "OPT_UINT_T": "uint",
    "OPT_INT_T": "int",
    "OPT_DOUBLE_T": "double",
    "OPT_CODEC_T": "codec",
}
REGISTER = re.compile(
    r"ast_sorcery_object_field_register(_custom|_nodoc|_alias|_custom_nodoc)?\s*\(\s*[^,]+?\s*,\s*"
    r'("\w+"|[A-Z_]+)\s*,\s*"(\w+)"\s*,\s*("[^"]*"|NULL|[A-Z_0-9]+|__stringify\([A-Z_0-9]+\))\s*,\s*([A-Za-z_]+)'
)
OBJECT_MACROS = {"SIP_SORCERY_AUTH_TYPE": "auth", "SIP_SORCERY_DOMAIN_ALIAS_TYPE": "domain_alias"}


def columns(dsn: str) -> dict[str, object]:
    query = f"""
    SELECT json_object_agg(table_name, cols) FROM (
      SELECT c.table_name, json_agg(json_build_object('name', c.column_name, 'sql_type',
        CASE WHEN c.data_type = 'USER-DEFINED' THEN json_build_object('enum',
               (SELECT json_agg(e.enumlabel ORDER BY e.enumsortorder) FROM pg_enum e
                JOIN pg_type t ON t.oid = e.enumtypid WHERE t.typname = c.udt_name))
             WHEN c.character_maximum_length IS NOT NULL
               THEN to_json(c.data_type || '(' || c.character_maximum_length || ')')
             ELSE to_json(c.data_type) END) ORDER BY c.ordinal_position) AS cols
      FROM information_schema.columns c
      WHERE c.table_schema = 'public' AND c.table_name IN ({", ".join(f"'{t}'" for t in TABLES)})
      GROUP BY c.table_name) s"""
    out = subprocess.run(["psql", dsn, "-Atc", query], check=True, capture_output=True, text=True).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def source_types(src: Path) -> dict[str, dict[str, str]]:
    types: dict[str, dict[str, str]] = {}
    for path in sorted(src.glob("*.c")):
        for m in REGISTER.finditer(path.read_text(errors="replace")):
            kind, obj, name, _default, ctype = m.groups()
            obj = OBJECT_MACROS.get(obj, obj.strip('"'))
            types.setdefault(obj, {})[name] = "custom" if kind and "custom" in kind else ctype
    return types


def options(xml: Path, src: Path) -> dict[str, dict[str, dict[str, object]]]:
    types = source_types(src)
    out: dict[str, dict[str, dict[str, object]]] = {}
    for info in ET.parse(xml).getroot().iter("configInfo"):
        if info.get("name") not in MODULES:
            continue
        for obj in info.iter("configObject"):
            section = obj.get("name")
            if section not in SECTIONS:
                continue
            for opt in obj.findall("configOption"):
                name = opt.get("name") or ""
                ctype = types.get(section, {}).get(name, "custom")
                enum = None
                if name in STRICT_ENUMS:
                    enum = [e.get("name") for e in opt.iter("enum")] + STRICT_ENUMS[name]
                out.setdefault(section, {})[name] = {
                    "type": C_TYPES.get(ctype, "enum" if enum else "string"),
                    "enum": enum,
                    "default": opt.get("default"),
                    "multi": name in MULTI,
                }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    c = sub.add_parser("columns")
    c.add_argument("--dsn", required=True)
    c.add_argument("--release", required=True)
    o = sub.add_parser("options")
    o.add_argument("--xml", type=Path, required=True)
    o.add_argument("--src", type=Path, required=True)
    o.add_argument("--release", required=True)
    args = ap.parse_args()
    DATA.mkdir(exist_ok=True)
    if args.what == "columns":
        doc = {
            "asterisk": args.release,
            "source": "contrib/ast-db-manage alembic head, read back from Postgres",
            "tables": columns(args.dsn),
        }
        target = DATA / "realtime_columns.json"
    else:
        doc = {
            "asterisk": args.release,
            "source": "core-en_US.xml + sorcery field registrations",
            "sections": options(args.xml, args.src),
        }
        target = DATA / "pjsip_options.json"
    target.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
