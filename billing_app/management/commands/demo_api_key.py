"""The demo's API key, and a curl command that works as pasted: printed by `make run` on every start.

Only the key's hash is in the database, as for any key. So that each run can print the same secret, it is
kept in a development-only file (``DEMO_API_KEY_FILE``, under ``.data/``); the command refuses to run
without ``DEBUG``.
"""

import os
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from billing_app.models import ApiKey, api_key_hash

DEMO_KEY_NAME = "demo (make run)"


class Command(BaseCommand):
    help = "Print the demo's test-mode API key (made on first use) and a curl command that uses it."

    def handle(self, *args: object, **options: object) -> None:
        if not settings.DEBUG:
            raise CommandError("The demo API key is for development only (DEBUG=true).")
        key_file = Path(
            os.environ.get("DEMO_API_KEY_FILE") or Path(settings.BASE_DIR) / ".data" / "demo_api_key"
        )
        raw_key = key_file.read_text().strip() if key_file.exists() else ""
        known = ApiKey.objects.filter(key_hash=api_key_hash(raw_key), revoked_at__isnull=True).exists()
        if not raw_key or not known:
            _, raw_key = ApiKey.generate(name=DEMO_KEY_NAME, test_mode=True)
            key_file.parent.mkdir(parents=True, exist_ok=True)
            key_file.touch(mode=0o600)
            key_file.write_text(raw_key + "\n")
        base = f"http://127.0.0.1:{os.environ.get('PORT') or 8000}"
        event = (
            '{"idempotency_key":"curl-demo-1","customer":"acme","meter":"ai_action",'
            '"user":"raj","properties":{"action":"generate_report"}}'
        )
        self.stdout.write(
            f"Demo API key (test mode, development only): {raw_key}\n"
            f"  curl -sS -X POST {base}/api/v1/events -H 'Authorization: Bearer {raw_key}' "
            f"-H 'Content-Type: application/json' -d '{event}'\n"
        )
