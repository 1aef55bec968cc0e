#!/usr/bin/env bash
# Installs the Debian packages the embedded stack needs on the host, only when missing.
set -euo pipefail
need=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v sipp >/dev/null 2>&1 || need+=(sip-tester)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
# compose/ on podman (runc: crun refuses these hosts' hybrid cgroups, see compose/containers.conf)
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v runc >/dev/null 2>&1 || need+=(runc)
# The cluster's SIP edge (`pbxctl dev up --nodes N`, N > 1): Kamailio 5.6 and its Postgres driver.
command -v kamailio >/dev/null 2>&1 || need+=(kamailio)
[ -e /usr/lib/x86_64-linux-gnu/kamailio/modules/db_postgres.so ] || ls /usr/lib/*/kamailio/modules/db_postgres.so >/dev/null 2>&1 || need+=(kamailio-postgres-modules)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "pbx: missing Debian packages (${need[*]}) and not root: install them or run as root" >&2
    exit 1
  fi
  echo "pbx: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
