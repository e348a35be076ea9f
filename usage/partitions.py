"""The monthly partitions of the usage ledger: made ahead, and detached (never dropped) past retention.

``usage_usageevent`` is partitioned by range of ``timestamp``, one partition a month named
``usage_usageevent_y2025m03`` (UTC months), and a default partition that takes any event no month holds
yet, so ingest never fails for want of a partition. Validation keeps timestamps within
``USAGE_MAX_EVENT_AGE_DAYS`` past and a few minutes ahead, so the default only fills when this job has
not run for ``USAGE_PARTITIONS_AHEAD_MONTHS`` months.

``usage_partitions_maintain`` (beat, daily; ``manage.py usage_partitions``) makes the months ahead and,
when ``USAGE_EVENT_RETENTION_MONTHS`` is set, detaches the months wholly older than that whose events all
belong to closed billing periods. A detached month stays a table with its rows and is listed in
``DetachedUsagePartition``; archiving and dropping it is the operator's decision.
"""

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.conf import settings
from django.db import connection, transaction
from django.db.backends.utils import CursorWrapper
from django.utils import timezone

from customers.models import Subscription
from usage.models import DetachedUsagePartition, UsageEvent

logger = logging.getLogger(__name__)

TABLE = UsageEvent._meta.db_table
DEFAULT_PARTITION = f"{TABLE}_default"
# Makers of partitions and retention take this lock, so two runs (two beats, a run by hand) do not race.
_MAINTENANCE_LOCK = 7_340_112


def month_start(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def months_later(start: datetime, months: int) -> datetime:
    index = start.year * 12 + start.month - 1 + months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def partition_name(start: datetime) -> str:
    return f"{TABLE}_y{start:%Y}m{start:%m}"


@dataclass(frozen=True)
class MonthPartition:
    name: str
    start: datetime
    end: datetime


def month_partitions() -> list[MonthPartition]:
    """The monthly partitions attached to the ledger, oldest first (the default partition left out)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i
            JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass
            """,
            [TABLE],
        )
        rows = cursor.fetchall()
    partitions = []
    for name, bound in rows:
        if bound == "DEFAULT":
            continue
        # FOR VALUES FROM ('2025-03-01 00:00:00+00') TO ('2025-04-01 00:00:00+00')
        start, end = (datetime.fromisoformat(part.split("'")[1]) for part in bound.split(" TO "))
        partitions.append(MonthPartition(name, start.astimezone(UTC), end.astimezone(UTC)))
    return sorted(partitions, key=lambda partition: partition.start)


@dataclass
class MaintenanceReport:
    created: list[str] = field(default_factory=list)
    moved_from_default: int = 0  # events moved out of the default partition into a new month
    detached: list[DetachedUsagePartition] = field(default_factory=list)
    kept_open: list[str] = field(default_factory=list)  # past retention, but with events of an open period


def usage_partitions_maintain(*, now: datetime | None = None) -> MaintenanceReport:
    """Make the months ahead and detach the months past retention. Safe to run twice or concurrently."""
    now = now or timezone.now()
    report = MaintenanceReport()
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_MAINTENANCE_LOCK])
        _partitions_create_ahead(now=now, report=report)
        retention = settings.USAGE_EVENT_RETENTION_MONTHS
        if retention:
            _partitions_detach_past(now=now, months=retention, report=report)
    for name in report.created:
        logger.info("usage ledger: made partition %s", name)
    for detached in report.detached:
        logger.warning(
            "usage ledger: detached partition %s (%s events, %s to %s); archive or drop it",
            detached.table_name,
            detached.event_count,
            detached.range_start.date(),
            detached.range_end.date(),
        )
    return report


def _partitions_create_ahead(*, now: datetime, report: MaintenanceReport) -> None:
    existing = {partition.start for partition in month_partitions()}
    first = month_start(now)
    with connection.cursor() as cursor:
        for offset in range(settings.USAGE_PARTITIONS_AHEAD_MONTHS + 1):
            start = months_later(first, offset)
            if start in existing:
                continue
            report.moved_from_default += _partition_create(cursor, start=start, end=months_later(start, 1))
            report.created.append(partition_name(start))


def _partition_create(cursor: CursorWrapper, *, start: datetime, end: datetime) -> int:
    """Make the month's partition; returns how many events it took over from the default partition.

    PostgreSQL refuses to attach a range the default partition holds rows of. Such rows are moved: the
    default is detached and renamed, a new empty default and the month are made, and the rows are copied
    into the partitions they belong to, all in the caller's transaction. They are inserted into the
    partitions directly, not through the ledger, so their keys (already in ``UsageEventKey``) are not taken
    a second time, and nothing is deleted: the old default is dropped once its rows are copied.
    """
    name = partition_name(start)
    cursor.execute(
        f"SELECT count(*) FROM {DEFAULT_PARTITION} WHERE timestamp >= %s AND timestamp < %s",  # noqa: S608
        [start, end],
    )
    (stranded,) = cursor.fetchone()
    if not stranded:
        cursor.execute(f"CREATE TABLE {name} PARTITION OF {TABLE} FOR VALUES FROM (%s) TO (%s)", [start, end])
        return 0
    previous = f"{DEFAULT_PARTITION}_moving"
    for statement in (
        # Deferred foreign-key checks still pending on the default's rows would forbid dropping it.
        "SET CONSTRAINTS ALL IMMEDIATE",
        f"ALTER TABLE {TABLE} DETACH PARTITION {DEFAULT_PARTITION}",
        f"ALTER TABLE {DEFAULT_PARTITION} RENAME TO {previous}",
        f"CREATE TABLE {DEFAULT_PARTITION} PARTITION OF {TABLE} DEFAULT",
    ):
        cursor.execute(statement)
    cursor.execute(f"CREATE TABLE {name} PARTITION OF {TABLE} FOR VALUES FROM (%s) TO (%s)", [start, end])
    cursor.execute(
        f"INSERT INTO {name} SELECT * FROM {previous} WHERE timestamp >= %s AND timestamp < %s",  # noqa: S608
        [start, end],
    )
    cursor.execute(
        f"INSERT INTO {DEFAULT_PARTITION} SELECT * FROM {previous} "  # noqa: S608
        "WHERE NOT (timestamp >= %s AND timestamp < %s)",
        [start, end],
    )
    cursor.execute(f"DROP TABLE {previous}")
    return int(stranded)


def _partitions_detach_past(*, now: datetime, months: int, report: MaintenanceReport) -> None:
    """Detach each month that ended ``months`` or more months before the current one, oldest first,
    unless one of its events counts in a billing period still open (the customer's current period)."""
    cutoff = months_later(month_start(now), -months)
    subscriptions = Subscription._meta.db_table
    with connection.cursor() as cursor:
        for partition in month_partitions():
            if partition.end > cutoff:
                break
            cursor.execute(
                f"SELECT EXISTS (SELECT 1 FROM {partition.name} e JOIN {subscriptions} s "  # noqa: S608
                "ON s.customer_id = e.customer_id WHERE e.period_start >= s.current_period_start)"
            )
            (open_period,) = cursor.fetchone()
            if open_period:
                report.kept_open.append(partition.name)
                break  # later months are newer still: keep the retained range contiguous
            cursor.execute(f"ALTER TABLE {TABLE} DETACH PARTITION {partition.name}")
            cursor.execute(f"SELECT count(*) FROM {partition.name}")  # noqa: S608
            (count,) = cursor.fetchone()
            report.detached.append(
                DetachedUsagePartition.objects.create(
                    table_name=partition.name,
                    range_start=partition.start,
                    range_end=partition.end,
                    event_count=count,
                    detached_at=now,
                )
            )


def retained_since() -> datetime | None:
    """Where the ledger's attached months begin after retention: None when no month was ever detached."""
    return DetachedUsagePartition.objects.order_by("-range_end").values_list("range_end", flat=True).first()
