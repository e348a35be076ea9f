"""The usage ledger partitioned by month: the trigger and keys every partition inherits, the months made ahead,
events that land in the default partition, retention that detaches and never drops, and the migration that
converts a populated ledger."""

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from tests.catalog_fixtures import event
from usage.ingest import usage_events_ingest
from usage.ledger_audit import event_reference_mismatches, ledger_mismatches
from usage.models import CreditLedgerEntry, DetachedUsagePartition, LedgerEntryKind, UsageEvent, UsageEventKey
from usage.partitions import (
    DEFAULT_PARTITION,
    month_partitions,
    month_start,
    months_later,
    partition_name,
    usage_partitions_maintain,
)

pytestmark = pytest.mark.django_db
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def metered(make_plan, make_customer):
    make_plan(
        "metered",
        prices=[{"meter": "api_call", "model": "per_unit", "unit_amount": "0.10", "included": "10"}],
    )
    return make_customer("metered")


def scalar(statement: str, params: list[object] | None = None):
    with connection.cursor() as cursor:
        cursor.execute(statement, params or [])
        return cursor.fetchone()[0]


def old_event(customer, *, key: str, at: datetime) -> UsageEvent:
    """An event recorded as if long ago, by the ORM (the keys trigger applies to every way in)."""
    return UsageEvent.objects.create(
        customer=customer,
        meter_id=scalar("SELECT id FROM plans_meter WHERE key = 'api_call'"),
        idempotency_key=key,
        quantity=Decimal(1),
        timestamp=at,
        received_at=at,
        period_start=at,
    )


def test_ingested_events_land_in_their_month_with_their_keys(metered):
    usage_events_ingest(raw_events=[event("a", quantity=3), event("b", quantity=4)])
    month = partition_name(month_start(timezone.now()))
    assert scalar(f"SELECT count(*) FROM {month}") == 2  # noqa: S608
    keys = set(UsageEventKey.objects.values_list("idempotency_key", "event_id", "timestamp"))
    assert keys == set(UsageEvent.objects.values_list("idempotency_key", "id", "timestamp"))
    replay = usage_events_ingest(raw_events=[event("a", quantity=3)])
    assert [result.status for result in replay.results] == ["duplicate"]
    assert UsageEvent.objects.count() == 2
    assert ledger_mismatches() == []


def test_a_taken_key_is_refused_in_another_month(metered):
    old_event(metered, key="k", at=timezone.now())
    with pytest.raises(IntegrityError, match="usage_event_idempotency_unique"), transaction.atomic():
        old_event(metered, key="k", at=timezone.now() + timedelta(days=40))


@pytest.mark.parametrize("statement", ["UPDATE {table} SET timestamp = timestamp", "DELETE FROM {table}"])
def test_a_partition_is_append_only_too(metered, statement):
    now = timezone.now()
    old_event(metered, key="k", at=now)
    for table in (partition_name(month_start(now)), "usage_usageevent", "usage_usageeventkey"):
        with (
            pytest.raises(IntegrityError, match="append-only"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(statement.format(table=table))


def test_months_are_made_ahead_once(settings):
    settings.USAGE_PARTITIONS_AHEAD_MONTHS = 5
    later = datetime(2031, 5, 17, tzinfo=UTC)
    report = usage_partitions_maintain(now=later)
    assert report.created == [partition_name(datetime(2031, month, 1, tzinfo=UTC)) for month in range(5, 11)]
    assert usage_partitions_maintain(now=later).created == []
    starts = [partition.start for partition in month_partitions()]
    assert starts == sorted(set(starts))
    assert datetime(2031, 10, 1, tzinfo=UTC) in starts


def test_events_in_the_default_partition_move_to_their_new_month(metered):
    far = datetime(2032, 3, 9, 12, tzinfo=UTC)
    stranded = old_event(metered, key="far", at=far)
    kept = old_event(metered, key="farther", at=far + timedelta(days=400))
    assert scalar(f"SELECT count(*) FROM {DEFAULT_PARTITION}") == 2  # noqa: S608
    report = usage_partitions_maintain(now=far)
    assert report.moved_from_default == 1
    assert scalar(f"SELECT id FROM {partition_name(datetime(2032, 3, 1, tzinfo=UTC))}") == stranded.pk  # noqa: S608
    assert scalar(f"SELECT id FROM {DEFAULT_PARTITION}") == kept.pk  # noqa: S608
    assert UsageEventKey.objects.count() == 2
    assert event_reference_mismatches() == []


def test_retention_detaches_closed_months_and_never_drops_them(metered, settings):
    now = timezone.now()
    long_ago = months_later(month_start(now), -6) + timedelta(days=3)
    usage_partitions_maintain(now=long_ago)  # the months from then on
    archived = old_event(metered, key="old", at=long_ago)
    CreditLedgerEntry.objects.create(
        customer=metered, kind=LedgerEntryKind.ADJUSTMENT, amount=0, unit="usd", usage_event_id=archived.pk
    )
    usage_events_ingest(raw_events=[event("new", quantity=2)])
    settings.USAGE_EVENT_RETENTION_MONTHS = 4

    report = usage_partitions_maintain(now=now)

    old_month = partition_name(month_start(long_ago))
    assert old_month in [partition.table_name for partition in report.detached]
    assert old_month not in [partition.name for partition in month_partitions()]
    assert scalar(f"SELECT id FROM {old_month}") == archived.pk  # noqa: S608  (still there, outside the ledger)
    detached = DetachedUsagePartition.objects.get(table_name=old_month)
    assert detached.event_count == 1
    assert detached.range_end <= months_later(month_start(now), -4)
    assert not UsageEvent.objects.filter(pk=archived.pk).exists()
    assert UsageEventKey.objects.filter(event_id=archived.pk).exists()  # the key stays taken
    assert ledger_mismatches() == []  # the reference to the archived event is proved by its key
    assert usage_partitions_maintain(now=now).detached == []


def test_a_month_with_events_of_an_open_period_is_kept(metered, settings):
    now = timezone.now()
    long_ago = months_later(month_start(now), -6) + timedelta(days=3)
    usage_partitions_maintain(now=long_ago)
    subscription = metered.subscription
    UsageEvent.objects.create(  # counted in the period still open
        customer=metered,
        meter_id=scalar("SELECT id FROM plans_meter WHERE key = 'api_call'"),
        idempotency_key="open",
        quantity=Decimal(1),
        timestamp=long_ago,
        received_at=long_ago,
        period_start=subscription.current_period_start,
    )
    settings.USAGE_EVENT_RETENTION_MONTHS = 4
    report = usage_partitions_maintain(now=now)
    assert report.detached == []
    assert report.kept_open == [partition_name(month_start(long_ago))]


def test_a_missing_event_is_reported(metered):
    CreditLedgerEntry.objects.create(
        customer=metered, kind=LedgerEntryKind.ADJUSTMENT, amount=0, unit="usd", usage_event_id=987654
    )
    assert [str(m) for m in event_reference_mismatches()] == [
        f"ledger row {CreditLedgerEntry.objects.get().pk} points at a missing event: event 987654, found 0"
    ]


def test_the_command_reports_what_it_made(capsys):
    call_command("usage_partitions")
    assert "monthly partitions attached" in capsys.readouterr().out


# --- the migration, on a populated database of its own ---------------------------------------------


def _manage(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url, "DEBUG": "true", "SECRET_KEY": "migration-test"}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture
def fresh_database():
    main = settings.DATABASES["default"]
    name = f"{main['NAME']}_partitioning"
    admin = f"host={main['HOST']} port={main['PORT'] or 5432} user={main['USER']} dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield (
            f"postgres://{main['USER']}@{main['HOST']}:{main['PORT'] or 5432}/{name}",
            admin.replace("dbname=postgres", f"dbname={name}"),
        )
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


POPULATE = """
INSERT INTO customers_customer (external_id, name, email, currency, status, frozen_reason, stripe_customer_id,
    created_at)
SELECT 'c' || n, 'C' || n, '', 'usd', 'active', '', '', now() FROM generate_series(1, 3) n;
INSERT INTO plans_meter (key, name, unit, aggregation, unique_property, stripe_meter_id, created_at,
    display_divisor, display_mode, display_unit)
VALUES ('api_call', 'API calls', 'call', 'sum', '', '', now(), 1, '', '');
-- 3 customers x 600 events, one every 12 hours: 300 days across 11 months
INSERT INTO usage_usageevent (customer_id, meter_id, idempotency_key, quantity, properties, timestamp,
    received_at, period_start, action, dimension_value, billable, cost_unit, cost, included_quantity,
    credits_amount, wallet_amount, overage_amount)
SELECT c.id, m.id, 'k' || n, 1, '{}', t, t, date_trunc('month', t), '', '', true, 'usd', 0, 1, 0, 0, 0
FROM customers_customer c, plans_meter m, generate_series(1, 600) n,
     LATERAL (SELECT now() - interval '300 days' + n * interval '12 hours' AS t) ts;
INSERT INTO usage_periodusage (customer_id, meter_id, period_start, period_end, unit, quantity,
    non_billable_quantity, event_count, cost, included_quantity, credits_amount, wallet_amount, overage_amount,
    serving_cost)
SELECT customer_id, meter_id, period_start, period_start + interval '1 month', 'usd', sum(quantity), 0, count(*),
    0, sum(included_quantity), 0, 0, 0, 0
FROM usage_usageevent GROUP BY customer_id, meter_id, period_start;
INSERT INTO usage_dailyusagerollup (customer_id, meter_id, member_id, action, dimension_value, day, period_start,
    quantity, billable_quantity, overage_quantity, event_count, cost, overage_amount, serving_cost)
SELECT customer_id, meter_id, NULL, '', '', (timestamp AT TIME ZONE 'UTC')::date, period_start, sum(quantity), 0,
    0, count(*), 0, 0, 0
FROM usage_usageevent GROUP BY 1, 2, 6, 7;
INSERT INTO usage_creditledgerentry (customer_id, kind, amount, unit, usage_event_id, note, created_at)
SELECT customer_id, 'adjustment', 0, 'usd', max(id), '', now() FROM usage_usageevent GROUP BY customer_id;
"""


def test_the_migration_converts_a_populated_ledger(fresh_database):
    url, dsn = fresh_database
    for app, *target in (["usage", "0014"], ["plans"], ["customers"]):
        before = _manage(url, "migrate", app, *target)
        assert before.returncode == 0, before.stderr
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(POPULATE)
        rows_before = conn.execute(
            "SELECT id, customer_id, idempotency_key, timestamp FROM usage_usageevent ORDER BY id"
        ).fetchall()
        (max_id,) = conn.execute("SELECT max(id) FROM usage_usageevent").fetchone()

    forward = _manage(url, "migrate")
    assert forward.returncode == 0, forward.stderr
    check = _manage(url, "ledger_check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "found nothing" in check.stdout

    with psycopg.connect(dsn, autocommit=True) as conn:
        assert (
            conn.execute(
                "SELECT id, customer_id, idempotency_key, timestamp FROM usage_usageevent ORDER BY id"
            ).fetchall()
            == rows_before
        )
        assert len(rows_before) == 1800
        assert (
            conn.execute(
                "SELECT event_id, customer_id, idempotency_key, timestamp FROM usage_usageeventkey ORDER BY event_id"
            ).fetchall()
            == rows_before
        )
        (partitioned,) = conn.execute(
            "SELECT relkind FROM pg_class WHERE relname = 'usage_usageevent'"
        ).fetchone()
        assert partitioned == "p"
        (months,) = conn.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'usage_usageevent'::regclass"
        ).fetchone()
        assert months >= 11 + 3 + 1  # the months of the data, three ahead, the default
        (in_default,) = conn.execute("SELECT count(*) FROM usage_usageevent_default").fetchone()
        assert in_default == 0
        # New ids continue after the old ones, and a taken key is still refused.
        (new_id,) = conn.execute(
            "INSERT INTO usage_usageevent (customer_id, meter_id, idempotency_key, quantity, properties, timestamp,"
            " received_at, period_start, action, dimension_value, billable, cost_unit, cost, included_quantity,"
            " credits_amount, wallet_amount, overage_amount) SELECT customer_id, meter_id, 'fresh', 1, '{}',"
            " now(), now(), now(), '', '', true, 'usd', 0, 1, 0, 0, 0 FROM usage_usageevent LIMIT 1 RETURNING id"
        ).fetchone()
        assert new_id > max_id
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                "INSERT INTO usage_usageevent SELECT * FROM usage_usageevent WHERE idempotency_key = 'k1' LIMIT 1"
            )
        with pytest.raises(psycopg.errors.RestrictViolation):
            conn.execute("DELETE FROM usage_usageevent WHERE idempotency_key = 'k1'")
        # Corrections and outbox rows keep pointing at events by id, without database constraints.
        assert conn.execute(
            "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND confrelid = 'usage_usageevent'::regclass"
        ).fetchone() == (0,)
