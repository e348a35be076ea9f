#!/usr/bin/env bash
# `make run` with the fake Stripe server (tests/stripe_fake) standing in for Stripe, so the Stripe side of the
# demo (catalog sync, meter events, signed webhooks back to the app) works offline. The worker and beat of
# `make run` sync the catalog and drain the outbox to it; the fake stops when the app does.
set -euo pipefail

BIN=${BIN:-.venv/bin}
PORT=${PORT:-8000}
FAKE_PORT=${FAKE_PORT:-12111}
export STRIPE_API_KEY=${STRIPE_API_KEY:-sk_test_demo}
export STRIPE_API_BASE="http://127.0.0.1:${FAKE_PORT}"
export STRIPE_WEBHOOK_SECRET=${STRIPE_WEBHOOK_SECRET:-whsec_demo}

"$BIN/python" -m tests.stripe_fake --port "$FAKE_PORT" --quiet &
FAKE_PID=$!
trap 'kill "$FAKE_PID" 2>/dev/null || true' EXIT

# Wait for the fake, then have it post every event to the app's webhook, signed with the demo secret.
"$BIN/python" - <<PY
import json, time, urllib.request
base = "http://127.0.0.1:${FAKE_PORT}/_fake"
for _ in range(50):
    try:
        urllib.request.urlopen(f"{base}/requests", timeout=1)
        break
    except OSError:
        time.sleep(0.1)
body = json.dumps({"url": "http://127.0.0.1:${PORT}/stripe/webhook", "secret": "${STRIPE_WEBHOOK_SECRET}"})
urllib.request.urlopen(urllib.request.Request(f"{base}/webhooks", data=body.encode(), method="POST"), timeout=5)
PY

"$BIN/python" scripts/devstack.py run --port "$PORT"
