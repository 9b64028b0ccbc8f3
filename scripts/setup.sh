#!/usr/bin/env bash
# Installs everything XPlane and its tests need on a fresh Debian machine:
# a virtualenv in .venv with XPlane and its dev extras, and, when running as
# root with apt available, PowerDNS (pdns-server + SQLite backend), dig, wrk and
# Chromium (the console's browser tests drive /usr/bin/chromium through Playwright).
# A package that cannot be installed fails the script (CI must not run without it).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  need=()
  command -v pdns_server >/dev/null 2>&1 || need+=(pdns-server pdns-backend-sqlite3)
  command -v dig >/dev/null 2>&1 || need+=(dnsutils)
  command -v wrk >/dev/null 2>&1 || need+=(wrk)
  [ -x /usr/bin/chromium ] || need+=(chromium)
  if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${need[*]}"
    apt-get update -qq >/dev/null
    # A failed install stops here: carrying on would leave CI without PowerDNS.
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; then
      echo "setup: could not install ${need[*]} (apt-get install failed)" >&2
      exit 1
    fi
  fi
elif ! command -v pdns_server >/dev/null 2>&1; then
  echo "setup: pdns_server not found and not root: install pdns-server pdns-backend-sqlite3 for real DNS" >&2
  case "${CI:-}" in '' | 0 | false | no) ;; *) exit 1 ;; esac # CI must not run without it
fi
if [ ! -x /usr/bin/chromium ]; then
  echo "setup: /usr/bin/chromium not found: install Debian's chromium for the console's browser tests" >&2
  case "${CI:-}" in '' | 0 | false | no) ;; *) exit 1 ;; esac
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
