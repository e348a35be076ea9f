"""Reconciliation: local ledger vs Stripe meter summaries and invoices; divergences over 1% are recorded."""

import logging
from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.utils import timezone

from billing_app.models import DivergenceKind, OperatorAlert, OperatorAlertKind, ReconciliationDivergence
from billing_app.stripe.client import stripe_client
from billing_app.stripe.outbox import outbox_drain
from billing_app.stripe.reconciliation import percent_difference, reconciliation_run
from billing_app.tasks import stripe_reconcile_task
from plans.models import Meter
from tests.billing_app.conftest import calls, ingest
from tests.billing_app.webhook_helpers import signed_post


@pytest.fixture
def thousand_over(synced_customer, stripe_on):
    """200 calls: 100 past the allowance at $0.10, $10.00 (1,000 cents) drained to Stripe."""
    ingest(*calls("a", 200))
    outbox_drain()
    return synced_customer


def inject(customer, value, identifier):
    """Usage (in cents) that reached Stripe without passing through the ledger (another system, a bug)."""
    stripe_client().v1.billing.meter_events.create(
        {
            "event_name": "api_call",
            "identifier": identifier,
            "payload": {"stripe_customer_id": customer.stripe_customer_id, "value": str(value)},
        }
    )


def reconcile_an_hour_later():
    with time_machine.travel(timezone.now() + timedelta(hours=1), tick=False):
        return reconciliation_run()


def test_percent_difference():
    assert percent_difference(local=Decimal(1000), remote=Decimal(1020)) == Decimal("2.00")
    assert percent_difference(local=Decimal(1000), remote=Decimal(995)) == Decimal("0.50")
    assert percent_difference(local=Decimal(0), remote=Decimal(3)) == Decimal(100)
    assert percent_difference(local=Decimal(0), remote=Decimal(0)) == Decimal(0)


def test_agreeing_numbers_record_nothing(thousand_over):
    report = reconcile_an_hour_later()

    assert report.checked == 1
    assert report.diverged == []
    assert not ReconciliationDivergence.objects.exists()


def test_a_two_percent_divergence_is_recorded_logged_and_raised(thousand_over, caplog):
    inject(thousand_over, 20, "injected-2pct")

    with caplog.at_level(logging.WARNING, logger="billing_app.stripe.reconciliation"):
        report = reconcile_an_hour_later()

    [divergence] = report.diverged
    assert divergence.kind == DivergenceKind.METER_USAGE
    assert divergence.customer == thousand_over
    assert divergence.meter == Meter.objects.get(key="api_call")
    assert (divergence.local_value, divergence.stripe_value) == (Decimal(1000), Decimal(1020))
    assert divergence.percent == Decimal("2.00")
    assert divergence.period_start == thousand_over.subscription.current_period_start
    assert any(
        "local 1000" in record.getMessage() and "Stripe 1020" in record.getMessage()
        for record in caplog.records
    )
    assert (
        OperatorAlert.objects.filter(kind=OperatorAlertKind.RECONCILIATION, customer=thousand_over).count()
        == 1
    )


def test_a_half_percent_difference_is_ignored(thousand_over):
    inject(thousand_over, 5, "injected-half-pct")

    report = reconcile_an_hour_later()

    assert report.checked == 1
    assert report.diverged == []
    assert not ReconciliationDivergence.objects.exists()


def test_a_divergence_stays_one_row_and_resolves_when_the_numbers_agree(thousand_over):
    inject(thousand_over, 50, "injected-5pct")
    reconcile_an_hour_later()
    inject(thousand_over, 10, "injected-more")
    reconcile_an_hour_later()

    divergence = ReconciliationDivergence.objects.get()
    assert (divergence.local_value, divergence.stripe_value) == (Decimal(1000), Decimal(1060))
    assert OperatorAlert.objects.filter(kind=OperatorAlertKind.RECONCILIATION).count() == 1

    # Someone corrects Stripe (a negative meter event); the next run finds the numbers agree.
    inject(thousand_over, -60, "correction")
    reconcile_an_hour_later()

    divergence.refresh_from_db()
    assert divergence.resolved_at is not None


def test_the_task_reports_divergences(thousand_over):
    inject(thousand_over, 30, "injected-3pct")

    with time_machine.travel(timezone.now() + timedelta(hours=1), tick=False):
        result = stripe_reconcile_task.apply().get()

    assert result["checked"] == 1
    assert result["diverged"] == [ReconciliationDivergence.objects.get().pk]


def test_a_finalized_invoice_that_differs_from_the_local_preview_is_recorded(
    client, synced_customer, stripe_on
):
    ingest(*calls("a", 160))
    outbox_drain()
    inject(synced_customer, 20, "injected-invoice")  # cents
    stripe_on.close_period(synced_customer.subscription.stripe_subscription_id, wait=False)

    signed_post(client, stripe_on.events("invoice.finalized")[0])

    divergence = ReconciliationDivergence.objects.get(kind=DivergenceKind.INVOICE_TOTAL)
    assert (divergence.local_value, divergence.stripe_value) == (Decimal("6.00"), Decimal("6.20"))
    assert divergence.percent == Decimal("3.33")
    assert divergence.invoice.local_preview_total == Decimal("6.00")


def test_the_reconciliation_admin_shows_local_and_stripe_side_by_side(
    admin_client, thousand_over, settings, stripe_on
):
    inject(thousand_over, 20, "injected-admin")
    reconcile_an_hour_later()

    page = admin_client.get("/admin/billing_app/reconciliationdivergence/").content.decode()

    for text in ("Acme", "api_call", "1,000", "1,020", "+20", "2.00%", "Local", "Stripe"):
        assert text in page
