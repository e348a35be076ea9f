"""What the database cannot enforce on the partitioned usage ledger: every reference to an event finds it,
every event has its idempotency key, and a reservation has one event."""

from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import Count, Exists, F, OuterRef, QuerySet

from usage.ledger_audit.common import ZERO, Mismatch, retained
from usage.models import (
    CreditLedgerEntry,
    StripeUsageOutbox,
    UsageEvent,
    UsageEventKey,
)
from usage.partitions import retained_since


def event_reference_mismatches(now: datetime | None = None) -> list[Mismatch]:
    """Every reference to a usage event finds it; every event has its key; a reservation has one event.

    The ledger is partitioned by month, so nothing in the database can reference an event by id alone, and
    (customer, idempotency key) is unique in ``UsageEventKey``, not on the events. A reference to an event of
    a detached month is kept (the event is archived, not lost): its key, which outlives it, proves it existed.
    """
    since = retained_since()
    recorded = UsageEvent.objects.filter(pk=OuterRef("event_id"))
    archived = (
        UsageEventKey.objects.filter(event_id=OuterRef("event_id"), timestamp__lt=since)
        if since
        else UsageEventKey.objects.none()
    )
    references: list[tuple[str, QuerySet[Any], str]] = [
        ("ledger row", CreditLedgerEntry.objects.filter(usage_event_id__isnull=False), "usage_event_id"),
        ("Stripe outbox row", StripeUsageOutbox.objects.all(), "last_event_id"),
        ("correction", UsageEvent.objects.filter(corrects_id__isnull=False), "corrects_id"),
    ]
    mismatches: list[Mismatch] = []
    for label, rows, column in references:
        missing = (
            rows.alias(event_id=F(column))
            .exclude(Exists(recorded))
            .exclude(Exists(archived))
            .values_list("id", column)
        )
        mismatches += [
            Mismatch(f"{label} {row_id} points at a missing event", Decimal(event_id), ZERO, "event", "found")
            for row_id, event_id in missing
        ]
    keyed = UsageEventKey.objects.filter(
        event_id=OuterRef("id"),
        customer_id=OuterRef("customer_id"),
        idempotency_key=OuterRef("idempotency_key"),
        timestamp=OuterRef("timestamp"),
    )
    for event_id in UsageEvent.objects.exclude(Exists(keyed)).values_list("id", flat=True):
        mismatches.append(
            Mismatch(
                f"event {event_id} has no idempotency key recorded", Decimal(event_id), ZERO, "event", "keys"
            )
        )
    keys = retained(UsageEventKey.objects.all(), "timestamp")
    for event_id in keys.exclude(Exists(UsageEvent.objects.filter(pk=OuterRef("event_id")))).values_list(
        "event_id", flat=True
    ):
        mismatches.append(
            Mismatch(f"key of event {event_id} without its event", Decimal(event_id), ZERO, "event", "found")
        )
    for reservation_id, count in (
        UsageEvent.objects.filter(reservation_id__isnull=False)
        .values_list("reservation_id")
        .annotate(events=Count("id"))
        .filter(events__gt=1)
        .order_by()
    ):
        mismatches.append(
            Mismatch(f"reservation {reservation_id} events", Decimal(count), Decimal(1), "has", "must have")
        )
    return mismatches
