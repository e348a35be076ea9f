"""A correction reaches Stripe as the difference in overage, and reconciliation agrees afterwards.

Stripe's meter events cannot be edited or deleted, and a meter event adjustment cancels a whole event within
24 hours only, while one of our events sums an hour of many events. So a correction queues its overage
difference in the outbox for the corrected event's hour, and the drain sends it as a positive or negative
meter event that Stripe's sum meter adds to the period, sent or not before.
"""

from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.utils import timezone

from billing_app.stripe.outbox import outbox_drain
from billing_app.stripe.reconciliation import reconciliation_run
from tests.billing_app.conftest import calls, ingest
from usage.corrections import usage_event_correct
from usage.ledger_audit import ledger_mismatches
from usage.models import OutboxStatus, StripeUsageOutbox, UsageEvent

pytestmark = pytest.mark.django_db


def correct(target: UsageEvent, quantity: int, key: str) -> None:
    usage_event_correct(
        event_id=target.pk,
        quantity=Decimal(quantity),
        reason="double-counted",
        idempotency_key=key,
        by="test",
    )


def stripe_values(fake) -> list[int]:
    """What Stripe counted, in cents, event by event."""
    return [event.value for event in fake.meter_events(event_name="api_call") if not event.error_code]


def reconcile_an_hour_later():
    with time_machine.travel(timezone.now() + timedelta(hours=1), tick=False):
        return reconciliation_run()


def test_a_correction_of_overage_already_sent_reaches_stripe_as_a_negative_event(synced_customer, stripe_on):
    ingest(*calls("a", 100))
    [big] = ingest(*calls("b", 1, quantity=50)).results  # 50 over: $5.00, 500 cents
    outbox_drain()
    assert stripe_values(stripe_on) == [500]

    correct(UsageEvent.objects.get(pk=big.id), 20, "fix-1")  # 30 units back: -$3.00
    outbox_drain()

    assert stripe_values(stripe_on) == [500, -300]
    assert not StripeUsageOutbox.objects.filter(status=OutboxStatus.PENDING).exists()
    report = reconcile_an_hour_later()
    assert report.checked == 1 and report.diverged == []
    assert not ledger_mismatches()


def test_corrections_before_the_drain_net_with_the_usage_they_correct(synced_customer, stripe_on):
    ingest(*calls("a", 100))
    [big] = ingest(*calls("b", 1, quantity=50)).results
    target = UsageEvent.objects.get(pk=big.id)

    correct(target, 10, "down")  # 40 back: -$4.00
    correct(target, 35, "up")  # 25 more: +$2.50
    outbox_drain()

    assert sum(stripe_values(stripe_on)) == 350  # 50 - 40 + 25 = 35 units over: $3.50
    report = reconcile_an_hour_later()
    assert report.diverged == []
    assert not ledger_mismatches()
