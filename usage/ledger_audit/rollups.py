"""The daily rollups equal their events, per day and billing period."""

from datetime import UTC, datetime
from decimal import Decimal

from django.db.models import Count, F, Q, Sum
from django.db.models.functions import Coalesce, TruncDate

from usage.ledger_audit.common import ZERO, Mismatch, differs, retained
from usage.models import (
    DailyUsageRollup,
    UsageEvent,
)
from usage.overage import overage_quantity_sql

ROLLUP_KEY = ("customer_id", "meter_id", "member_id", "action", "dimension_value", "day", "period_start")
ROLLUP_TOTALS = (
    "quantity",
    "billable_quantity",
    "overage_quantity",
    "event_count",
    "cost",
    "overage_amount",
    "serving_cost",
)


def rollup_mismatches(now: datetime | None = None) -> list[Mismatch]:
    """Each daily rollup equals its events, per key and billing period: a day that two periods share (a
    period end, a plan change) is two rollups, one per period, or the period's pages count the wrong days."""
    billable = Q(billable=True)
    event_rows = (
        retained(UsageEvent.objects.all())
        .annotate(day=TruncDate("timestamp", tzinfo=UTC))
        .values(*ROLLUP_KEY)
        .annotate(
            quantity_total=Sum("quantity"),
            billable_quantity_total=Coalesce(
                Sum(F("quantity") - F("included_quantity"), filter=billable), ZERO
            ),
            overage_quantity_total=Coalesce(Sum(overage_quantity_sql(), filter=billable), ZERO),
            event_count_total=Count("id"),
            cost_total=Coalesce(Sum("cost", filter=billable), ZERO),
            overage_amount_total=Coalesce(Sum("overage_amount", filter=billable), ZERO),
            serving_cost_total=Coalesce(Sum("serving_cost"), ZERO),
        )
        .order_by()
    )
    rollup_rows = (
        retained(DailyUsageRollup.objects.all())
        .values(*ROLLUP_KEY)
        .annotate(**{f"{name}_total": Sum(name) for name in ROLLUP_TOTALS})
        .order_by()
    )
    from_events = {tuple(row[name] for name in ROLLUP_KEY): row for row in event_rows}
    from_rollups = {tuple(row[name] for name in ROLLUP_KEY): row for row in rollup_rows}
    mismatches: list[Mismatch] = []
    for key in sorted(set(from_events) | set(from_rollups), key=str):
        customer_id, meter_id, member_id, action, dimension_value, day, period_start = key
        label = (
            f"customer {customer_id} meter {meter_id} member {member_id} action {action!r}"
            f" dimension {dimension_value!r} day {day} period {period_start:%Y-%m-%d %H:%M} rollup"
        )
        events, rollups = from_events.get(key, {}), from_rollups.get(key, {})
        for name in ROLLUP_TOTALS:
            stored = Decimal(rollups.get(f"{name}_total") or 0)
            summed = Decimal(events.get(f"{name}_total") or 0)
            if differs(stored, summed):
                mismatches.append(Mismatch(f"{label} {name}", stored, summed, "rollup has", "events sum to"))
    return mismatches
