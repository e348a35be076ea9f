"""Server-side render time of /settings/usage for a customer with 10k and with 1M events in the period.

    .venv/bin/python bench/usage_page.py            # builds the data (about a minute), then measures
    .venv/bin/python bench/usage_page.py --reuse    # measures again on the data already built

Runs on its own PostgreSQL database, BENCH_DATABASE_URL (default ``billing_bench_usage_page`` on
127.0.0.1), which it drops and recreates. Two customers on the Hybrid plan of ``catalog/demo.json``,
each with five members and a period that began 20 days ago, get 10,000 and 1,000,000 usage events spread over
those days, five actions and three models. The events are inserted with one ``INSERT ... SELECT``
(ingesting a million through the API would take longer than the point needs), and the period totals
and daily rollups are then built by aggregating those events, the totals ingest keeps.

The page must read rollups only, so its render time must not grow with events: the script fails
when the 1M customer's p50 is 1.5 times the 10k customer's or more.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BENCH_DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/billing_bench_usage_page"
)
os.environ.update(
    DATABASE_URL=BENCH_DATABASE_URL,
    DJANGO_SETTINGS_MODULE="billing_app.settings",
    DEBUG="false",
    SECRET_KEY=os.environ.get("SECRET_KEY", "bench-only-secret"),
    ALLOWED_HOSTS="*",
    REDIS_URL="",
    PASSWORD_HASHERS="django.contrib.auth.hashers.MD5PasswordHasher",
)

import warnings  # noqa: E402

import django  # noqa: E402

# WhiteNoise serves from the finders here; it only notes that collectstatic has not run.
warnings.filterwarnings("ignore", message="No directory at")

SIZES = {"bench-10k": 10_000, "bench-1m": 1_000_000}
DAYS = 20
MAX_RATIO = 1.5
ACTIONS = ["generate_report", "summarize_thread", "draft_email", "classify_ticket", "translate_doc"]
MODELS = {"gpt-4o": "0.00001", "gpt-4o-mini": "0.0000006", "claude-sonnet": "0.000015"}


def recreate_database() -> None:
    import psycopg

    name = BENCH_DATABASE_URL.rsplit("/", 1)[1]
    admin_url = BENCH_DATABASE_URL.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
        connection.execute(f'CREATE DATABASE "{name}"')


def build() -> None:
    import json
    from datetime import timedelta
    from decimal import Decimal

    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection, transaction
    from django.utils import timezone

    from customers.models import MemberRole
    from customers.services import customer_create, member_create, spend_controls_update, subscription_start
    from plans.catalog.importing import catalog_import
    from plans.models import Meter, PlanVersion, VersionStatus
    from usage.models import CreditLedgerEntry, LedgerEntryKind
    from usage.services import credit_grant_create, wallet_top_up

    call_command("migrate", verbosity=0)
    catalog_import(data=json.loads((ROOT / "catalog" / "demo.json").read_text()))
    hybrid = PlanVersion.objects.filter(plan__code="hybrid", status=VersionStatus.PUBLISHED).latest("number")
    actions, tokens = Meter.objects.get(key="ai_action"), Meter.objects.get(key="llm_tokens")
    now = timezone.now()
    start = (now - timedelta(days=DAYS)).replace(hour=0, minute=0, second=0, microsecond=0)
    for external_id, count in SIZES.items():
        began = time.perf_counter()
        customer = customer_create(external_id=external_id, name=f"Bench {count:,}")
        subscription = subscription_start(customer=customer, plan_version=hybrid, at=start)
        member_ids = []
        for n in range(5):
            user = (
                get_user_model().objects.create_user(f"{external_id}-{n}", password="bench")
                if n == 0
                else None
            )
            role = MemberRole.ADMIN if n == 0 else MemberRole.MEMBER
            member_ids.append(
                member_create(
                    customer=customer, external_id=f"m{n}", name=f"Member {n}", role=role, user=user
                ).pk
            )
        spend_controls_update(
            customer=customer, soft_limit=Decimal(250), hard_limit=None, block_overage=False
        )
        credit_grant_create(customer=customer, amount=Decimal(50), unit="usd", description="Promotion")
        wallet_top_up(customer=customer, amount=Decimal(100))
        span = (now - timedelta(hours=1) - start).total_seconds()
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                """
                INSERT INTO usage_usageevent (
                    customer_id, meter_id, member_id, idempotency_key, quantity, properties, timestamp,
                    received_at, period_start, action, dimension_value, billable, cost_unit, cost,
                    included_quantity, credits_amount, wallet_amount, overage_amount)
                SELECT %(customer)s,
                       CASE WHEN g %% 2 = 0 THEN %(actions)s ELSE %(tokens)s END,
                       (%(members)s::bigint[])[1 + g %% 5],
                       'bench-' || g,
                       CASE WHEN g %% 2 = 0 THEN 40 ELSE 2400 END,
                       '{}'::jsonb,
                       %(start)s + (g::float8 / %(count)s * %(span)s) * interval '1 second',
                       %(start)s + (g::float8 / %(count)s * %(span)s) * interval '1 second',
                       %(start)s,
                       (%(action_names)s::text[])[1 + (g / 2) %% 5],
                       CASE WHEN g %% 2 = 1 THEN (%(models)s::text[])[1 + (g / 10) %% 3] ELSE '' END,
                       true,
                       'usd',
                       CASE WHEN g %% 2 = 1 THEN 2400 * (%(rates)s::numeric[])[1 + (g / 10) %% 3] ELSE 0 END,
                       0, 0, 0,
                       CASE WHEN g %% 2 = 1 THEN 2400 * (%(rates)s::numeric[])[1 + (g / 10) %% 3] ELSE 0 END
                FROM generate_series(1, %(count)s) AS g
                """,
                {
                    "customer": customer.pk,
                    "actions": actions.pk,
                    "tokens": tokens.pk,
                    "members": member_ids,
                    "start": start,
                    "count": count,
                    "span": span,
                    "action_names": ACTIONS,
                    "models": list(MODELS),
                    "rates": [Decimal(rate) for rate in MODELS.values()],
                },
            )
            # The totals ingest keeps, rebuilt from the events they sum.
            cursor.execute(
                """
                INSERT INTO usage_dailyusagerollup (
                    customer_id, meter_id, member_id, action, dimension_value, day, period_start,
                    quantity, billable_quantity, overage_quantity, event_count, cost, overage_amount)
                SELECT customer_id, meter_id, member_id, action, dimension_value,
                       (timestamp AT TIME ZONE 'UTC')::date, period_start,
                       sum(quantity), sum(quantity - included_quantity), 0, count(*), sum(cost),
                       sum(overage_amount)
                FROM usage_usageevent WHERE customer_id = %(customer)s
                GROUP BY 1, 2, 3, 4, 5, 6, 7
                """,
                {"customer": customer.pk},
            )
            cursor.execute(
                """
                INSERT INTO usage_periodusage (
                    customer_id, meter_id, period_start, period_end, unit, quantity, non_billable_quantity,
                    event_count, cost, included_quantity, credits_amount, wallet_amount, overage_amount)
                SELECT customer_id, meter_id, period_start, %(end)s, 'usd', sum(quantity), 0, count(*),
                       sum(cost), 0, 0, 0, sum(overage_amount)
                FROM usage_usageevent WHERE customer_id = %(customer)s
                GROUP BY 1, 2, 3
                """,
                {"customer": customer.pk, "end": subscription.current_period_end},
            )
        # One draw-down row per ingested batch of 1,000 events, as ingest writes them.
        CreditLedgerEntry.objects.bulk_create(
            [
                CreditLedgerEntry(
                    customer=customer, kind=LedgerEntryKind.DRAWDOWN, amount=Decimal("-0.01"), unit="usd"
                )
                for _ in range(max(count // 1000, 1))
            ]
        )
        rollups = customer.daily_rollups.count()
        print(
            f"{external_id}: {count:,} events, {rollups:,} rollup rows, built in {time.perf_counter() - began:.1f}s"
        )


def settle() -> None:
    """Vacuum and analyze now, so autovacuum does not wake on the new million rows mid-measurement."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")


def measure(*, runs: int) -> dict[str, dict[str, float]]:
    """Render times per customer. The customers take turns, so any background noise hits both alike."""
    from django.contrib.auth import get_user_model
    from django.test import Client

    clients = {}
    for external_id in SIZES:
        clients[external_id] = Client()
        clients[external_id].force_login(get_user_model().objects.get(username=f"{external_id}-0"))
        for _ in range(3):  # warm the connection and the template cache
            clients[external_id].get("/settings/usage")
    timings: dict[str, dict[str, list[float]]] = {
        external_id: {"page": [], "summary partial": []} for external_id in SIZES
    }
    for _ in range(runs):
        for external_id, client in clients.items():
            for name, url, headers in (
                ("page", "/settings/usage", {}),
                ("summary partial", "/settings/usage/partials/summary", {"HTTP_HX_REQUEST": "true"}),
            ):
                began = time.perf_counter()
                response = client.get(url, **headers)
                timings[external_id][name].append((time.perf_counter() - began) * 1000)
                assert response.status_code == 200, response.status_code
    results: dict[str, dict[str, float]] = {}
    for external_id, by_name in timings.items():
        results[external_id] = {}
        for name, values in by_name.items():
            values.sort()
            results[external_id][f"{name} p50"] = statistics.median(values)
            results[external_id][f"{name} p95"] = values[
                min(len(values) - 1, round(0.95 * (len(values) - 1)))
            ]
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reuse", action="store_true", help="measure the data already built")
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    if not args.reuse:
        recreate_database()
    django.setup()
    if not args.reuse:
        build()
    settle()
    results = measure(runs=args.runs)
    print(f"\n{'':20}{'10k events':>14}{'1M events':>14}")
    for key in results["bench-10k"]:
        print(f"{key:20}{results['bench-10k'][key]:>11.1f} ms{results['bench-1m'][key]:>11.1f} ms")
    ratio = results["bench-1m"]["page p50"] / results["bench-10k"]["page p50"]
    print(f"\npage p50 ratio 1M / 10k: {ratio:.2f} (must stay under {MAX_RATIO})")
    return 0 if ratio < MAX_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
