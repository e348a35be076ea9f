"""A large usage ledger generated into the monthly partitions, then the reads and ingest timed on it.

    .venv/bin/python bench/large_ledger.py build [--events 20000000] [--customers 200] [--months 24] [--jobs 1]
    .venv/bin/python bench/large_ledger.py measure [--requests 50] [--batches 20] [--workers 4]

Runs in its own database, ``BENCH_DB_NAME`` (default ``billing_cap``). A ledger is about two thirds of a
gigabyte per million events with its indexes (64 GB at 100 million): check ``df -h`` before ``build``, and drop
the database when done (``psql -h 127.0.0.1 -U postgres -c 'DROP DATABASE billing_cap'``).

``build`` drops, recreates and migrates the database; publishes the ingest bench's plan (``api_call`` per unit,
``llm_tokens`` priced by ``model``) and subscribes ``--customers`` customers to it, the ingest bench's 20 among
them, on billing periods that are calendar months (the current one is open). It makes the past months'
partitions with the partition job's own function, then, a month at a time (each committed, with progress
printed), inserts that month's events with one ``INSERT ... SELECT ... FROM generate_series`` into the
partitioned ledger (so the keys trigger, the foreign keys and every index do their work, as on ingest),
and the daily rollups and period totals that sum them, aggregated by SQL from the month's events. One
customer, ``cap-big``, has 10% of all events; the others share the rest evenly. 70% of events are
``api_call`` and 30% ``llm_tokens``, from 5 members and 5 actions a customer, with the properties ingest
stores (``action``, and ``model`` for tokens).

``measure`` reads the data built (nothing is rebuilt) and prints:

1. the size of the ledger (its partitions' heap and indexes), the keys table, the rollups and period totals,
   per million events;
2. ``EXPLAIN (ANALYZE, BUFFERS)`` of the statements the app itself sends, captured in-process: the events
   list of one customer for one month (``/api/v1/customers/{id}/events?from=&to=&limit=50``), the usage page's
   rollup reads (``/settings/usage``), and the replay lookup of ingest (``usage.ingest.events_recorded``);
3. p50/p95 of ``/settings/usage`` (logged in as the customer's admin), ``GET /api/v1/customers/{id}/usage`` and
   ``GET /api/v1/customers/{id}/events?limit=50`` through gunicorn, for ``cap-big`` and a typical customer,
   one request at a time; the page and the usage API for the current period and for the last whole month;
4. ingest through gunicorn on the big ledger: the ingest bench's batches (2 clients × 1,000 events over 10
   customers each, then their replay), with the CPU per event. Those events stay in the ledger.
"""

import argparse
import concurrent.futures
import contextlib
import os
import statistics
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("BENCH_DB_NAME", "billing_cap")

if __package__ in (None, ""):  # run as ``python bench/large_ledger.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import psycopg

from bench.common import (
    CORES,
    CPU_HEADER,
    DB_NAME,
    PG_BENCH_DSN,
    api_client,
    api_key_create,
    customers_create,
    database_create,
    django_connections_close,
    django_setup,
    gunicorn_running,
    machine_describe,
    ms,
    percentile,
    rate,
    server_arguments,
    server_warm_up,
    table_print,
)
from bench.ingest import API_BUDGET_S, api_phase, batches_build, catalog_build, warm_up_request

BIG = "cap-big"
TYPICAL = "cap-0001"
BIG_SHARE = 10  # one event in BIG_SHARE is the big customer's
MEMBERS = 5
ACTIONS = ["summarize", "classify", "extract", "translate", "chat"]
MODELS = ["gpt-4o", "gpt-4o-mini"]
RATES = ["0.00001", "0.000001"]
ADMIN_USERNAME = "cap-admin"

EVENTS_INSERT = """
INSERT INTO usage_usageevent (
    customer_id, meter_id, member_id, idempotency_key, quantity, properties, timestamp, received_at,
    period_start, action, dimension_value, billable, cost_unit, cost, included_quantity, credits_amount,
    wallet_amount, overage_amount)
SELECT customer_id, meter_id, members[1 + (g / 7) %% {members}], 'gen-{month}-' || g, quantity,
       CASE WHEN tokens THEN jsonb_build_object('action', action, 'model', model)
            ELSE jsonb_build_object('action', action) END,
       moment, moment, %(start)s, action, CASE WHEN tokens THEN model ELSE '' END, true, 'usd',
       cost, 0, 0, 0, cost
FROM (
    SELECT g, c.customer_id, c.members, tokens,
           CASE WHEN tokens THEN %(tokens)s ELSE %(calls)s END AS meter_id,
           CASE WHEN tokens THEN 100 + (g * 37) %% 4900 ELSE 1 END AS quantity,
           CASE WHEN tokens THEN (100 + (g * 37) %% 4900) * (%(rates)s::numeric[])[1 + (g / 3) %% 2]
                ELSE 0.002 END AS cost,
           (%(actions)s::text[])[1 + (g / 11) %% 5] AS action,
           (%(models)s::text[])[1 + (g / 3) %% 2] AS model,
           %(start)s + (g::float8 / %(count)s * %(span)s) * interval '1 second' AS moment
    FROM generate_series(0::bigint, %(count)s - 1) AS g
    CROSS JOIN LATERAL (SELECT g %% 10 >= 7 AS tokens) t
    JOIN bench_cap_customers c
      ON c.slot = CASE WHEN g %% {big_share} = 0 THEN 0 ELSE 1 + (g * 7919) %% %(others)s END
) generated
"""

# The totals ingest keeps, summed from the month's events (the month is a billing period here).
ROLLUPS_INSERT = """
INSERT INTO usage_dailyusagerollup (
    customer_id, meter_id, member_id, action, dimension_value, day, period_start,
    quantity, billable_quantity, overage_quantity, event_count, cost, overage_amount)
SELECT customer_id, meter_id, member_id, action, dimension_value, (timestamp AT TIME ZONE 'UTC')::date,
       period_start, sum(quantity), sum(quantity - included_quantity), 0, count(*), sum(cost), sum(overage_amount)
FROM usage_usageevent WHERE timestamp >= %(start)s AND timestamp < %(end)s
GROUP BY 1, 2, 3, 4, 5, 6, 7
"""
PERIODS_INSERT = """
INSERT INTO usage_periodusage (
    customer_id, meter_id, period_start, period_end, unit, quantity, non_billable_quantity,
    event_count, cost, included_quantity, credits_amount, wallet_amount, overage_amount)
SELECT customer_id, meter_id, period_start, %(end)s, 'usd', sum(quantity), 0, count(*), sum(cost), 0, 0, 0,
       sum(overage_amount)
FROM usage_usageevent WHERE timestamp >= %(start)s AND timestamp < %(end)s
GROUP BY 1, 2, 3
"""


def month_starts(months: int, now: datetime) -> list[datetime]:
    from usage.partitions import month_start, months_later

    current = month_start(now)
    return [months_later(current, -offset) for offset in range(months - 1, -1, -1)]


def build(*, events: int, customers: int, months: int, jobs: int) -> None:
    started = time.perf_counter()
    database_create()
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction

    from customers.models import Member, MemberRole, Subscription
    from plans.models import Meter
    from usage.partitions import _partition_create, month_partitions, months_later

    now = datetime.now(UTC)
    catalog_build(2)  # the ingest bench's plan and its 21 customers, so ``measure`` can send its batches
    others = [f"cap-{n:04d}" for n in range(1, customers - 21)]
    customers_create("bench-ingest", [BIG, *others])
    starts = month_starts(months, now)
    current, following = starts[-1], months_later(starts[-1], 1)
    # Billing periods are calendar months, the current one open: the page and the usage API read it.
    Subscription.objects.update(
        billing_anchor=current, current_period_start=current, current_period_end=following
    )
    meters = dict(Meter.objects.values_list("key", "pk"))
    admin = get_user_model().objects.create_user(ADMIN_USERNAME)
    from customers.models import Customer

    ordered = sorted(Customer.objects.all(), key=lambda customer: (customer.external_id != BIG, customer.pk))
    Member.objects.bulk_create(
        Member(
            customer=customer,
            external_id=f"user-{n}",
            name=f"User {n}",
            role=MemberRole.ADMIN if n == 0 else MemberRole.MEMBER,
            user=admin if customer.external_id == BIG and n == 0 else None,
        )
        for customer in ordered
        for n in range(MEMBERS)
    )
    members: dict[int, list[int]] = {}
    for member_id, customer_id in Member.objects.order_by("pk").values_list("pk", "customer_id"):
        members.setdefault(customer_id, []).append(member_id)
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE bench_cap_customers (slot int PRIMARY KEY, customer_id bigint, members bigint[])"
        )
        cursor.executemany(
            "INSERT INTO bench_cap_customers VALUES (%s, %s, %s)",
            [(slot, customer.pk, members[customer.pk]) for slot, customer in enumerate(ordered)],
        )
        with transaction.atomic():
            existing = {partition.start for partition in month_partitions()}
            for start in starts:
                if start not in existing:
                    _partition_create(cursor, start=start, end=months_later(start, 1))
    print(
        f"{len(ordered)} customers × {MEMBERS} members, {len(starts)} monthly partitions from {starts[0]:%Y-%m}; "
        f"set up in {time.perf_counter() - started:.0f} s"
    )

    per_month = events // months
    statement = EVENTS_INSERT.format(members=MEMBERS, month="{month}", big_share=BIG_SHARE)
    parameters: dict[str, Any] = {
        "count": per_month,
        "tokens": meters["llm_tokens"],
        "calls": meters["api_call"],
        "rates": RATES,
        "actions": ACTIONS,
        "models": MODELS,
        "others": len(ordered) - 1,
    }
    progress = {"events": 0}
    lock = threading.Lock()

    def month_fill(start: datetime) -> None:
        end = months_later(start, 1)
        # The current month is filled up to an hour ago, so nothing lies in the future.
        span = ((min(end, now - timedelta(hours=1))) - start).total_seconds()
        began = time.perf_counter()
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(
                    statement.replace("{month}", f"{start:%Y%m}"),
                    {**parameters, "start": start, "span": span},
                )
                inserted = time.perf_counter()
                cursor.execute(ROLLUPS_INSERT, {"start": start, "end": end})
                rollups = cursor.rowcount
                cursor.execute(PERIODS_INSERT, {"start": start, "end": end})
        finally:
            connection.close()  # each worker thread has its own connection
        done = time.perf_counter()
        with lock:
            progress["events"] += per_month
            print(
                f"  {start:%Y-%m}: {per_month:,} events inserted in {inserted - began:.0f} s "
                f"({per_month / (inserted - began):,.0f}/s); with {rollups:,} rollup rows, the period totals and "
                f"the commit {done - began:.0f} s; {progress['events']:,} events so far, {done - started:.0f} s",
                flush=True,
            )

    # Months are independent (their own partition, days and periods): ``--jobs`` of them fill at once, each in
    # its own transaction on its own connection, as concurrent ingest would.
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        for future in [pool.submit(month_fill, start) for start in starts]:
            future.result()
    began = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE bench_cap_customers")
        cursor.execute("VACUUM ANALYZE")
    print(
        f"VACUUM ANALYZE {time.perf_counter() - began:.0f} s; built in {time.perf_counter() - started:.0f} s"
    )


# --- measure --------------------------------------------------------------------------------------


def sizes_print() -> int:
    with psycopg.connect(PG_BENCH_DSN) as conn:
        partitions = "SELECT inhrelid FROM pg_inherits WHERE inhparent = 'usage_usageevent'::regclass"
        events, heap, indexes = conn.execute(
            f"SELECT (SELECT count(*) FROM usage_usageevent), sum(pg_table_size(inhrelid))::bigint, "
            f"sum(pg_indexes_size(inhrelid))::bigint FROM ({partitions}) p"
        ).fetchone()  # type: ignore[misc]
        rows = [("usage_usageevent (all partitions)", events, heap, indexes)]
        for table in ("usage_usageeventkey", "usage_dailyusagerollup", "usage_periodusage"):
            count, table_bytes, index_bytes = conn.execute(
                f"SELECT count(*), pg_table_size('{table}'), pg_indexes_size('{table}') FROM {table}"
            ).fetchone()  # type: ignore[misc]
            rows.append((table, count, table_bytes, index_bytes))
        (database,) = conn.execute("SELECT pg_database_size(current_database())").fetchone()  # type: ignore[misc]
    million = events / 1e6
    table_print(
        ["table", "rows", "heap (+TOAST)", "indexes", "total", "MB per million events"],
        [
            (
                name,
                f"{count:,}",
                f"{table_bytes / 2**20:,.0f} MB",
                f"{index_bytes / 2**20:,.0f} MB",
                f"{(table_bytes + index_bytes) / 2**20:,.0f} MB",
                f"{(table_bytes + index_bytes) / 2**20 / million:,.1f}",
            )
            for name, count, table_bytes, index_bytes in rows
        ],
    )
    print(f"database {database / 2**30:.2f} GB, {database / 2**20 / million:,.0f} MB per million events")
    return events


def statements_captured(request: Any) -> list[str]:
    """The SQL the app sent while answering ``request(client)``, parameters in place."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        response = request()
    assert response.status_code == 200, (response.status_code, response.content[:500])
    return [query["sql"] for query in captured.captured_queries]


def explain_print(title: str, sql: str) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}")
        plan = [line for (line,) in cursor.fetchall()]
    print(f"\n--- {title}\n{sql}\n")
    print("\n".join(plan))


def explains_print(api_key: str, month: datetime) -> None:
    from django.contrib.auth import get_user_model
    from django.test import Client

    from usage.ingest import events_recorded
    from usage.models import UsageEvent
    from usage.partitions import month_start, months_later
    from usage.validation import EventInput

    client = Client(HTTP_AUTHORIZATION=f"Bearer {api_key}", HTTP_HOST="127.0.0.1")
    since, until = month.isoformat(), months_later(month, 1).isoformat()
    for external_id, query in (
        (BIG, f"limit=50&from={since}&to={until}".replace("+", "%2B")),
        (TYPICAL, f"limit=50&from={since}&to={until}".replace("+", "%2B")),
        (TYPICAL, "limit=50"),
    ):
        url = f"/api/v1/customers/{external_id}/events?{query}"
        client.get(url)  # the timed run reads what this one brought into memory, as a warm server would
        for sql in statements_captured(lambda url=url: client.get(url)):
            if "usage_usageevent" in sql and "LIMIT" in sql:
                explain_print(f"events list, GET {url}", sql)
    browser = Client(HTTP_HOST="127.0.0.1")
    browser.force_login(get_user_model().objects.get(username=ADMIN_USERNAME))
    # The last whole month's page: the current period may have begun hours ago, with little to read.
    page = f"/settings/usage?period={months_later(month_start(datetime.now(UTC)), -1):%Y-%m-%d}"
    browser.get(page)
    page_statements = statements_captured(lambda: browser.get(page))
    for sql in dict.fromkeys(page_statements):
        if "usage_dailyusagerollup" in sql or "usage_periodusage" in sql:
            explain_print(f"usage page ({BIG}, {page}), rollups and period totals", sql)

    # Ingest's replay lookup: the keys of 1,000 events recorded in an older month, as a replay sends them.
    from django.db import connection

    recorded = list(
        UsageEvent.objects.filter(customer__external_id=BIG, timestamp__gte=month).order_by("timestamp")[
            :1000
        ]
    )
    captured: list[str] = []

    def keep(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        captured.append(connection.ops.compose_sql(sql, params) if params else sql)
        return execute(sql, params, many, context)

    inputs = {
        recorded[0].customer_id: [
            EventInput(
                index=index,
                idempotency_key=event.idempotency_key,
                customer_id=BIG,
                meter_key="api_call",
                quantity=event.quantity,
                timestamp=event.timestamp,
                user=None,
                properties=event.properties,
            )
            for index, event in enumerate(recorded)
        ]
    }
    # Only the statement is wanted: the check of the fingerprints that follows it may refuse these inputs.
    with connection.execute_wrapper(keep), contextlib.suppress(Exception):
        events_recorded(inputs)
    explain_print("ingest replay lookup of 1,000 recorded keys (usage.ingest.events_recorded)", captured[0])


def timings(client: httpx.Client, url: str, requests: int) -> tuple[float, float]:
    for _ in range(3):
        client.get(url)
    values = []
    for _ in range(requests):
        began = time.perf_counter()
        response = client.get(url)
        values.append(time.perf_counter() - began)
        assert response.status_code == 200, (url, response.status_code, response.text[:300])
    return statistics.median(values), percentile(values, 95)


def session_cookie() -> dict[str, str]:
    """A logged-in session of ``cap-big``'s admin, saved where gunicorn reads sessions."""
    from django.contrib.auth import get_user_model
    from django.test import Client

    browser = Client()
    browser.force_login(get_user_model().objects.get(username=ADMIN_USERNAME))
    return {"sessionid": browser.cookies["sessionid"].value}


def measure(*, requests: int, batches: int, workers: int, threads: int) -> None:
    django_setup()
    from customers.models import Customer
    from plans.models import Meter
    from usage.partitions import month_start, months_later

    events = sizes_print()
    api_key = api_key_create()
    explains_print(api_key, months_later(month_start(datetime.now(UTC)), -6))
    customers = {
        customer.external_id: (customer.pk, customer.subscription.current_period_start)
        for customer in Customer.objects.filter(external_id__startswith="ing-").select_related("subscription")
    }
    meters = dict(Meter.objects.values_list("key", "pk"))
    # New keys on every run: an earlier ``measure``'s events stay in the ledger, and the same keys would replay.
    plan = batches_build(clients=2, batches=batches, customers=customers, meters=meters, seed=time.time_ns())
    cookies = session_cookie()
    django_connections_close()
    machine_describe(workers, threads)
    with gunicorn_running(workers=workers, threads=threads) as server:
        rows = []
        # The current period and the last whole one: the current may have begun hours ago.
        last_period = f"period={months_later(month_start(datetime.now(UTC)), -1):%Y-%m-%d}"
        with httpx.Client(base_url=server.base_url, cookies=cookies, timeout=60) as browser:
            for url in ("/settings/usage", f"/settings/usage?{last_period}"):
                p50, p95 = timings(browser, url, requests)
                rows.append((f"{url} ({BIG}'s admin)", ms(p50), ms(p95)))
        with api_client(server, api_key) as client:
            for external_id in (BIG, TYPICAL):
                for path in ("usage", f"usage?{last_period}", "events?limit=50"):
                    url = f"/api/v1/customers/{external_id}/{path}"
                    p50, p95 = timings(client, url, requests)
                    rows.append((f"GET {url}", ms(p50), ms(p95)))
        print(f"\n{requests} requests each, one at a time, after 3 unmeasured:")
        table_print(["request", "p50", "p95"], rows)

        server_warm_up(server, api_key, warm_up_request())
        api = api_phase("API ingest", plan, server, api_key, API_BUDGET_S)
        sent = [client_batches[:count] for client_batches, count in zip(plan, api.done, strict=True)]
        replay = api_phase("API replay", sent, server, api_key, API_BUDGET_S)
    print(f"\ningest on a ledger of {events:,} events:")
    table_print(
        ["phase", "events/s", "batch p50", "batch p99", "wall", CPU_HEADER, "CPU per event"],
        [
            (
                r.name,
                rate(r.per_second),
                ms(percentile(r.latencies, 50)),
                ms(percentile(r.latencies, 99)),
                f"{r.wall:.1f} s",
                r.cpu.cells(),
                f"{(r.cpu.server + r.cpu.postgres) * r.wall / r.events * 1000:.3f} ms",
            )
            for r in (api, replay)
        ],
    )
    print(f"answers: ingest {dict(api.statuses)}, replay {dict(replay.statuses)}")
    others = max(api.cpu.others, replay.cpu.others)
    if others > 0.25:
        print(f"note: other processes used up to {others:.2f} of the {CORES} cores during the ingest phases")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help=f"drop, recreate and fill {DB_NAME}")
    build_parser.add_argument("--events", type=int, default=20_000_000)
    build_parser.add_argument("--customers", type=int, default=200)
    build_parser.add_argument("--months", type=int, default=24)
    build_parser.add_argument("--jobs", type=int, default=1, help="months filled at once")
    measure_parser = commands.add_parser("measure", help="sizes, plans and timings on the data built")
    measure_parser.add_argument("--requests", type=int, default=50, help="timed requests per URL")
    measure_parser.add_argument("--batches", type=int, default=20, help="ingest batches per client")
    server_arguments(measure_parser)
    args = parser.parse_args()
    if args.command == "build":
        if args.customers < 30:
            parser.error("--customers: at least 30 (the ingest bench's 21, cap-big and others)")
        build(events=args.events, customers=args.customers, months=args.months, jobs=args.jobs)
    else:
        measure(requests=args.requests, batches=args.batches, workers=args.workers, threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
