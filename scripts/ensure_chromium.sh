#!/usr/bin/env bash
# Chromium for the browser tests (Playwright drives Debian's build; it cannot download its own here).
set -euo pipefail

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if [ ! -x /usr/bin/chromium ]; then
  echo "Installing Chromium for the browser tests…"
  as_root apt-get install -y -qq chromium >/dev/null 2>&1 \
    || { as_root apt-get update -qq >/dev/null && as_root apt-get install -y -qq chromium >/dev/null; } || {
    echo "Chromium is missing and could not be installed (apt-get install chromium)." >&2
    exit 1
  }
fi
