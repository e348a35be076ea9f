"""Post-paid overage, give-backs netted, equals what the Stripe outbox holds."""

from collections import defaultdict
from datetime import datetime
from decimal import Decimal

from django.db.models import Sum

from core.money import CREDITS, ledger_amount
from usage.ledger_audit.common import ZERO, Mismatch, TermsByCustomer, differs, retained
from usage.models import (
    StripeUsageOutbox,
    UsageEvent,
)
from usage.overage import overage_quantity


def overage_outbox_mismatches(now: datetime | None = None) -> list[Mismatch]:
    """Per customer, meter, dimension value and period: the overage events record, give-backs netted, equals
    what the outbox holds for Stripe, in overage units and in money.

    Every outbox row counts, whatever its status: the outbox is the record of what Stripe was (or will be)
    told. Overage priced in credits is money at the customer's current plan's credit rate (the event does not
    record the rate it was rated at); when that plan has no rate, only the units are compared.
    """
    terms = TermsByCustomer()
    Key = tuple[int, int, str, datetime]
    event_units: dict[Key, Decimal] = defaultdict(Decimal)
    event_money: dict[Key, Decimal] = defaultdict(Decimal)
    unpriced: set[Key] = set()  # credits overage whose rate the current plan does not know
    events = (
        retained(UsageEvent.objects.filter(billable=True))
        .exclude(overage_amount=0)
        .values_list(
            "customer_id",
            "meter_id",
            "dimension_value",
            "period_start",
            "cost_unit",
            "quantity",
            "included_quantity",
            "cost",
            "overage_amount",
        )
    )
    for (
        customer_id,
        meter_id,
        dimension_value,
        period_start,
        unit,
        quantity,
        included,
        cost,
        overage,
    ) in events:
        key = (customer_id, meter_id, dimension_value, period_start)
        event_units[key] += overage_quantity(
            quantity=quantity, included_quantity=included, cost=cost, overage_amount=overage
        )
        rate = terms.credit_rate(customer_id)
        if unit != CREDITS:
            event_money[key] += overage
        elif rate is None:
            unpriced.add(key)
        else:
            event_money[key] += ledger_amount(overage * rate)
    outbox = {
        (row["customer_id"], row["meter_id"], row["dimension_value"], row["period_start"]): row
        for row in retained(StripeUsageOutbox.objects.all())
        .values("customer_id", "meter_id", "dimension_value", "period_start")
        .annotate(units=Sum("quantity"), money=Sum("amount"))
        .order_by()
    }
    mismatches: list[Mismatch] = []
    for key in sorted(set(event_units) | set(event_money) | set(outbox)):
        customer_id, meter_id, dimension_value, period_start = key
        label = (
            f"customer {customer_id} meter {meter_id}"
            + (f" ({dimension_value})" if dimension_value else "")
            + f" period {period_start:%Y-%m-%d %H:%M} overage"
        )
        sent = outbox.get(key, {})
        compared = [("units", event_units.get(key, ZERO), sent.get("units") or ZERO)]
        if key not in unpriced:
            compared.append(("money", event_money.get(key, ZERO), sent.get("money") or ZERO))
        for name, recorded, queued in compared:
            if differs(recorded, queued):
                mismatches.append(
                    Mismatch(f"{label} {name}", recorded, queued, "events record", "the Stripe outbox holds")
                )
    return mismatches
