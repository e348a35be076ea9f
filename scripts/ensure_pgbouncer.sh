#!/usr/bin/env bash
# PgBouncer for the test that runs the money paths through a transaction pooler (tests/core/test_transaction_pooler.py).
# The test starts its own pgbouncer process from a generated config; the system service is never used.
set -euo pipefail

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v pgbouncer >/dev/null && [ ! -x /usr/sbin/pgbouncer ]; then
  echo "Installing PgBouncer for the pooler test…"
  as_root apt-get install -y -qq pgbouncer >/dev/null 2>&1 \
    || { as_root apt-get update -qq >/dev/null && as_root apt-get install -y -qq pgbouncer >/dev/null; } || {
    echo "PgBouncer is missing and could not be installed (apt-get install pgbouncer)." >&2
    exit 1
  }
  # Debian starts the packaged service on install; the tests run their own, so leave the port free.
  as_root systemctl disable --now pgbouncer >/dev/null 2>&1 || as_root service pgbouncer stop >/dev/null 2>&1 || true
fi
