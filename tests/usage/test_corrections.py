"""Corrections of recorded usage: an adjusting event for the difference, re-rated and paid back exactly."""

from decimal import Decimal

import pytest

from customers.models import Customer
from tests.catalog_fixtures import event
from usage.corrections import usage_event_correct
from usage.ingest import usage_events_ingest
from usage.ledger_audit import ledger_mismatches
from usage.models import (
    CustomerBalance,
    DailyUsageRollup,
    PeriodUsage,
    StripeUsageOutbox,
    UsageEvent,
)

pytestmark = pytest.mark.django_db


def record(key: str, quantity, **fields) -> UsageEvent:
    [result] = usage_events_ingest(raw_events=[event(key, quantity=str(quantity), **fields)]).results
    assert result.status == "accepted", result.message
    return UsageEvent.objects.get(pk=result.id)


def correct(target: UsageEvent, quantity, key: str = "fix-1", **options):
    return usage_event_correct(
        event_id=target.pk,
        quantity=Decimal(str(quantity)),
        reason=options.pop("reason", "double-counted retries"),
        idempotency_key=key,
        by=options.pop("by", "api_key:test backend"),
        **options,
    )


def period(meter: str = "api_call") -> PeriodUsage:
    return PeriodUsage.objects.get(meter__key=meter)


def wallet(customer: Customer) -> Decimal:
    return CustomerBalance.objects.get(customer=customer).wallet_balance


def test_a_decrease_of_overage_gives_the_overage_back(pro_plan, make_customer):
    make_customer("pro")
    record("a", 100)  # the allowance
    over = record("b", 50)  # 50 over at $0.10: $5 of overage
    assert over.overage_amount == Decimal("5")

    result = correct(over, 20)

    correction = result.correction
    assert result.created and result.corrected_quantity == 20
    assert correction.quantity == -30 and correction.corrects_id == over.pk
    assert correction.cost == Decimal("-3") and correction.overage_amount == Decimal("-3")
    assert correction.correction_reason == "double-counted retries"
    assert correction.corrected_by == "api_key:test backend"
    assert correction.timestamp == over.timestamp and correction.period_start == over.period_start
    row = period()
    assert (row.quantity, row.cost, row.overage_amount) == (120, Decimal("2"), Decimal("2"))
    assert sum(r.amount for r in StripeUsageOutbox.objects.all()) == Decimal("2")
    assert sum(r.quantity for r in StripeUsageOutbox.objects.all()) == Decimal("20")
    rollup = DailyUsageRollup.objects.get()
    assert (rollup.quantity, rollup.overage_quantity, rollup.cost) == (120, 20, Decimal("2"))
    assert not ledger_mismatches()
