"""Corrections racing new usage and each other, on real threads with their own connections and row locks."""

from decimal import Decimal

import pytest

from core.errors import IdempotencyKeyReused
from tests.catalog_fixtures import event
from tests.usage.test_concurrency import run_concurrently
from usage.corrections import usage_event_correct
from usage.ingest import usage_events_ingest
from usage.ledger_audit import ledger_mismatches
from usage.models import PeriodUsage, UsageEvent
from usage.services import wallet_top_up

pytestmark = pytest.mark.django_db(transaction=True)


def record(key: str, quantity: int) -> UsageEvent:
    [result] = usage_events_ingest(raw_events=[event(key, quantity=quantity)]).results
    return UsageEvent.objects.get(pk=result.id)


def correct(target: UsageEvent, quantity: int, key: str):
    return usage_event_correct(
        event_id=target.pk, quantity=Decimal(quantity), reason="race", idempotency_key=key, by="test"
    )


def test_corrections_racing_new_usage_leave_the_ledger_consistent(pro_plan, make_customer):
    """Half the threads send usage, half correct one event up and down; the wallet pays part of it.

    Without the customer lock the corrections would read the event's earlier corrections and the period's
    totals before another writer's commit, and overwrite its period totals (``ledger_check`` finds them).
    """
    customer = make_customer("pro")
    wallet_top_up(customer=customer, amount=Decimal("3"))
    target = record("target", 150)

    def work(index):
        if index % 2:
            return usage_events_ingest(raw_events=[event(f"new-{index}", quantity=5)]).results[0].status
        return correct(target, 100 + index * 5, f"fix-{index}").created

    outcomes = run_concurrently(12, work)

    assert outcomes.count("accepted") == 6
    corrected = target.quantity + sum(c.quantity for c in UsageEvent.objects.filter(corrects=target))
    assert corrected in {Decimal(100 + index * 5) for index in range(0, 12, 2)}
    assert PeriodUsage.objects.get().quantity == corrected + 30
    assert not ledger_mismatches()


def test_two_corrections_of_one_event_serialize(pro_plan, make_customer):
    make_customer("pro")
    target = record("target", 150)

    outcomes = run_concurrently(8, lambda index: correct(target, 120, f"same-{index}").created)

    # The first to take the lock records -30; every other one finds the event already at 120.
    assert outcomes.count(True) == 1
    assert [c.quantity for c in UsageEvent.objects.filter(corrects=target)] == [-30]
    assert PeriodUsage.objects.get().quantity == 120
    assert not ledger_mismatches()


def test_one_correction_sent_at_once_by_many_threads_is_recorded_once(pro_plan, make_customer):
    make_customer("pro")
    target = record("target", 150)

    def work(_):
        try:
            return correct(target, 110, "one-key").correction.pk
        except IdempotencyKeyReused:
            return "reused"

    outcomes = run_concurrently(6, work)

    assert len(set(outcomes)) == 1 and "reused" not in outcomes
    assert PeriodUsage.objects.get().quantity == 110
    assert not ledger_mismatches()
