"""Every cached balance and period total equals the rows it summarizes."""

from collections import defaultdict
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import Count, Q, Sum

from usage.ledger_audit.common import ZERO, Mismatch, differs, retained
from usage.models import (
    CreditGrant,
    CreditLedgerEntry,
    CustomerBalance,
    DailyUsageRollup,
    PeriodUsage,
    UsageEvent,
)


def cached_total_mismatches(now: datetime | None = None) -> list[Mismatch]:
    """Every grant, wallet and period total equals the sum of its rows."""
    mismatches: list[Mismatch] = []

    grant_sums = dict(
        CreditLedgerEntry.objects.filter(grant__isnull=False)
        .values_list("grant_id")
        .annotate(total=Sum("amount"))
    )
    for grant_id, remaining in CreditGrant.objects.values_list("id", "remaining"):
        summed = grant_sums.get(grant_id, ZERO)
        if differs(remaining, summed):
            mismatches.append(Mismatch(f"credit grant {grant_id} remaining", remaining, summed))

    wallet_sums = dict(
        CreditLedgerEntry.objects.filter(grant__isnull=True)
        .values_list("customer_id")
        .annotate(total=Sum("amount"))
    )
    for customer_id, wallet in CustomerBalance.objects.values_list("customer_id", "wallet_balance"):
        summed = wallet_sums.get(customer_id, ZERO)
        if differs(wallet, summed):
            mismatches.append(Mismatch(f"customer {customer_id} wallet", wallet, summed))

    event_totals = {
        (row["customer_id"], row["meter_id"], row["period_start"]): row
        for row in retained(UsageEvent.objects.all())
        .values("customer_id", "meter_id", "period_start")
        .annotate(
            billable_total=Sum("quantity", filter=Q(billable=True)),
            non_billable_total=Sum("quantity", filter=Q(billable=False)),
            events=Count("id"),
            cost_total=Sum("cost"),
            included_total=Sum("included_quantity"),
            credits_total=Sum("credits_amount"),
            wallet_total=Sum("wallet_amount"),
            overage_total=Sum("overage_amount"),
            serving_cost_total=Sum("serving_cost"),
        )
    }
    rollup_totals: dict[tuple[int, int, Any], dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for row in (
        retained(DailyUsageRollup.objects.all())
        .values("customer_id", "meter_id", "period_start")
        .annotate(
            quantity_total=Sum("quantity"),
            events=Sum("event_count"),
            cost_total=Sum("cost"),
            serving_cost_total=Sum("serving_cost"),
        )
    ):
        rollup_totals[(row["customer_id"], row["meter_id"], row["period_start"])].update(row)

    for period in retained(PeriodUsage.objects.all()):
        key = (period.customer_id, period.meter_id, period.period_start)
        events = event_totals.pop(key, {})
        rollups = rollup_totals.pop(key, {})
        label = f"customer {period.customer_id} meter {period.meter_id} period {period.period_start:%Y-%m-%d %H:%M}"
        checks = [
            ("billable quantity", period.quantity, events.get("billable_total") or ZERO),
            ("non-billable quantity", period.non_billable_quantity, events.get("non_billable_total") or ZERO),
            ("event count", Decimal(period.event_count), Decimal(events.get("events") or 0)),
            ("cost", period.cost, events.get("cost_total") or ZERO),
            ("included quantity", period.included_quantity, events.get("included_total") or ZERO),
            ("credits", period.credits_amount, events.get("credits_total") or ZERO),
            ("wallet", period.wallet_amount, events.get("wallet_total") or ZERO),
            ("overage", period.overage_amount, events.get("overage_total") or ZERO),
            (
                "rollup quantity",
                period.quantity + period.non_billable_quantity,
                rollups.get("quantity_total") or ZERO,
            ),
            ("rollup event count", Decimal(period.event_count), Decimal(rollups.get("events") or 0)),
            ("rollup cost", period.cost, rollups.get("cost_total") or ZERO),
            ("serving cost", period.serving_cost, events.get("serving_cost_total") or ZERO),
            ("rollup serving cost", period.serving_cost, rollups.get("serving_cost_total") or ZERO),
        ]
        mismatches.extend(
            Mismatch(f"{label} {name}", cached, summed)
            for name, cached, summed in checks
            if differs(cached, summed)
        )
    for key in event_totals:
        mismatches.append(
            Mismatch(f"events of customer {key[0]} meter {key[1]} without period totals", ZERO, ZERO)
        )
    for key in rollup_totals:
        mismatches.append(
            Mismatch(f"rollups of customer {key[0]} meter {key[1]} without period totals", ZERO, ZERO)
        )
    return mismatches
