#!/usr/bin/env bash
# Starts the services the test suite needs that the machine may not be running:
# PostgreSQL (the suite runs the store on SQLite and PostgreSQL).
set -euo pipefail
if command -v pg_lsclusters >/dev/null 2>&1; then
  while read -r ver name _port status _rest; do
    if [ "$status" != "online" ]; then
      echo "services: starting PostgreSQL $ver/$name"
      pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start || true
    fi
  done < <(pg_lsclusters --no-header)
  for _ in $(seq 1 30); do
    pg_isready -q -h 127.0.0.1 -p 5432 && break
    sleep 1
  done
  pg_isready -h 127.0.0.1 -p 5432 || { echo "services: PostgreSQL is not answering on 127.0.0.1:5432"; exit 1; }
else
  echo "services: PostgreSQL not installed; PostgreSQL tests will be skipped (outside CI)"
fi
