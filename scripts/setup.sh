#!/usr/bin/env bash
# Installs everything XPlane and its tests need on a fresh Debian machine:
# a virtualenv in .venv with XPlane and its dev extras, and, when running as
# root with apt available, PowerDNS (pdns-server + SQLite backend), dig and wrk.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  need=()
  command -v pdns_server >/dev/null 2>&1 || need+=(pdns-server pdns-backend-sqlite3)
  command -v dig >/dev/null 2>&1 || need+=(dnsutils)
  command -v wrk >/dev/null 2>&1 || need+=(wrk)
  if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${need[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
      || echo "setup: could not install ${need[*]}; XPlane falls back to a dry-run DNS provider and tests needing PowerDNS are skipped"
  fi
else
  command -v pdns_server >/dev/null 2>&1 || echo "setup: pdns_server not found and not root: install pdns-server pdns-backend-sqlite3 for real DNS"
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.xplane-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing Python packages into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
  touch "$stamp"
fi
echo "setup: ready (.venv/bin/xplane)"
