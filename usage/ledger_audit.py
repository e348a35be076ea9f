"""Proof that every cached balance and total equals the rows it summarizes."""

from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db.models import Count, Q, Sum

from usage.models import (
    CreditGrant,
    CreditLedgerEntry,
    CustomerBalance,
    DailyUsageRollup,
    PeriodUsage,
    UsageEvent,
)

ZERO = Decimal(0)


def _differs(cached: Decimal, summed: Decimal) -> bool:
    """PostgreSQL sums decimals exactly, so a cached total and its rows agree to the last digit."""
    return Decimal(cached) != Decimal(summed)


@dataclass
class Mismatch:
    what: str
    cached: Decimal
    summed: Decimal

    def __str__(self) -> str:
        return f"{self.what}: cached {self.cached}, rows sum to {self.summed}"


def ledger_mismatches() -> list[Mismatch]:
    """Every balance or total that disagrees with its rows; empty when the ledger is consistent."""
    mismatches: list[Mismatch] = []

    grant_sums = dict(
        CreditLedgerEntry.objects.filter(grant__isnull=False)
        .values_list("grant_id")
        .annotate(total=Sum("amount"))
    )
    for grant_id, remaining in CreditGrant.objects.values_list("id", "remaining"):
        summed = grant_sums.get(grant_id, ZERO)
        if _differs(remaining, summed):
            mismatches.append(Mismatch(f"credit grant {grant_id} remaining", remaining, summed))

    wallet_sums = dict(
        CreditLedgerEntry.objects.filter(grant__isnull=True)
        .values_list("customer_id")
        .annotate(total=Sum("amount"))
    )
    for customer_id, wallet in CustomerBalance.objects.values_list("customer_id", "wallet_balance"):
        summed = wallet_sums.get(customer_id, ZERO)
        if _differs(wallet, summed):
            mismatches.append(Mismatch(f"customer {customer_id} wallet", wallet, summed))

    event_totals = {
        (row["customer_id"], row["meter_id"], row["period_start"]): row
        for row in UsageEvent.objects.values("customer_id", "meter_id", "period_start").annotate(
            billable_total=Sum("quantity", filter=Q(billable=True)),
            non_billable_total=Sum("quantity", filter=Q(billable=False)),
            events=Count("id"),
            cost_total=Sum("cost"),
            overage_total=Sum("overage_amount"),
        )
    }
    rollup_totals: dict[tuple[int, int, Any], dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for row in DailyUsageRollup.objects.values("customer_id", "meter_id", "period_start").annotate(
        quantity_total=Sum("quantity"), events=Sum("event_count"), cost_total=Sum("cost")
    ):
        rollup_totals[(row["customer_id"], row["meter_id"], row["period_start"])].update(row)

    for period in PeriodUsage.objects.all():
        key = (period.customer_id, period.meter_id, period.period_start)
        events = event_totals.pop(key, {})
        rollups = rollup_totals.pop(key, {})
        label = f"customer {period.customer_id} meter {period.meter_id} period {period.period_start:%Y-%m-%d}"
        checks = [
            ("billable quantity", period.quantity, events.get("billable_total") or ZERO),
            ("non-billable quantity", period.non_billable_quantity, events.get("non_billable_total") or ZERO),
            ("event count", Decimal(period.event_count), Decimal(events.get("events") or 0)),
            ("cost", period.cost, events.get("cost_total") or ZERO),
            ("overage", period.overage_amount, events.get("overage_total") or ZERO),
            (
                "rollup quantity",
                period.quantity + period.non_billable_quantity,
                rollups.get("quantity_total") or ZERO,
            ),
            ("rollup event count", Decimal(period.event_count), Decimal(rollups.get("events") or 0)),
            ("rollup cost", period.cost, rollups.get("cost_total") or ZERO),
        ]
        mismatches.extend(
            Mismatch(f"{label} {name}", cached, summed)
            for name, cached, summed in checks
            if _differs(cached, summed)
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
