"""POST /stripe/webhook: signatures, storage, once-only processing, and what each event changes."""

import threading
import time
from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.core import mail
from django.db import connection
from django.test import Client

from billing_app.models import (
    OperatorAlert,
    OperatorAlertKind,
    ReconciliationDivergence,
    StripeInvoice,
    StripeMeterEvent,
    StripeWebhookEvent,
)
from billing_app.stripe import webhooks
from billing_app.stripe.client import stripe_client
from billing_app.stripe.outbox import outbox_drain
from customers.models import Subscription, SubscriptionStatus
from plans.models import Meter
from tests.billing_app.conftest import calls, ingest
from tests.billing_app.webhook_helpers import URL, signed_post


@pytest.fixture
def canceled_event(synced_customer, stripe_on):
    """A real ``customer.subscription.deleted`` from the fake, for Acme's subscription."""
    stripe_client().v1.subscriptions.cancel(synced_customer.subscription.stripe_subscription_id)
    [event] = stripe_on.events("customer.subscription.deleted")
    return event


@pytest.fixture
def handler_calls(monkeypatch):
    """Counts how often the subscription handler really runs, slowly enough for deliveries to overlap."""
    counted = []
    real = webhooks.HANDLERS["customer.subscription.deleted"]

    def counting(event, prepared):
        counted.append(event["id"])
        time.sleep(0.2)
        real(event, prepared)

    monkeypatch.setitem(webhooks.HANDLERS, "customer.subscription.deleted", counting)
    return counted


def test_a_signed_event_is_stored_and_processed(client, canceled_event, synced_customer):
    response = signed_post(client, canceled_event)

    assert response.status_code == 200
    assert response.json() == {"received": True, "status": "processed"}
    stored = StripeWebhookEvent.objects.get()
    assert (stored.stripe_event_id, stored.type) == (canceled_event["id"], "customer.subscription.deleted")
    assert stored.processed_at is not None
    assert Subscription.objects.get(customer=synced_customer).status == SubscriptionStatus.CANCELED


def test_a_replayed_event_changes_nothing(client, canceled_event, handler_calls):
    first = signed_post(client, canceled_event)
    again = signed_post(client, canceled_event)

    assert (first.json()["status"], again.json()["status"]) == ("processed", "duplicate")
    assert handler_calls == [canceled_event["id"]]
    assert StripeWebhookEvent.objects.count() == 1


def test_a_forged_signature_is_refused(client, canceled_event):
    response = signed_post(client, canceled_event, secret="whsec_someone_else")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_signature"
    assert not StripeWebhookEvent.objects.exists()


def test_a_stale_signature_is_refused(client, canceled_event):
    response = signed_post(client, canceled_event, timestamp=int(time.time()) - 600)

    assert response.status_code == 400
    assert not StripeWebhookEvent.objects.exists()


def test_a_signature_dated_in_the_future_is_refused(client, canceled_event):
    response = signed_post(client, canceled_event, timestamp=int(time.time()) + 600)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_signature"
    assert not StripeWebhookEvent.objects.exists()


def test_a_signature_a_little_ahead_of_our_clock_is_accepted(client, canceled_event):
    assert signed_post(client, canceled_event, timestamp=int(time.time()) + 60).status_code == 200


def test_a_body_changed_after_signing_is_refused(client, canceled_event):
    import json

    from tests.stripe_fake import signature_header

    body = json.dumps(canceled_event)
    header = signature_header(body, "whsec_test_secret", int(time.time()))
    tampered = body.replace("canceled", "active")
    response = client.post(URL, tampered, content_type="application/json", HTTP_STRIPE_SIGNATURE=header)

    assert response.status_code == 400


def test_a_missing_signature_is_refused(client, canceled_event):
    response = client.post(URL, canceled_event, content_type="application/json")

    assert response.status_code == 400


def test_unknown_types_are_stored_and_ignored(client, db):
    response = signed_post(client, {"id": "evt_x", "object": "event", "type": "charge.succeeded", "data": {}})

    assert response.json()["status"] == "ignored"
    assert StripeWebhookEvent.objects.get().processed_at is not None


def test_a_failing_handler_is_recorded_and_answered_500_for_redelivery(client, canceled_event, monkeypatch):
    def broken(event, prepared):
        raise RuntimeError("database said no")

    monkeypatch.setitem(webhooks.HANDLERS, "customer.subscription.deleted", broken)
    response = signed_post(client, canceled_event)

    assert response.status_code == 500
    stored = StripeWebhookEvent.objects.get()
    assert stored.processed_at is None
    assert "database said no" in stored.error
    monkeypatch.undo()
    assert signed_post(client, canceled_event).json()["status"] == "processed"


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_deliveries_are_processed_once(stripe_on, pro_plan, make_customer, handler_calls):
    from billing_app.stripe.sync.pending import stripe_sync_pending

    customer = make_customer("pro")
    stripe_sync_pending()
    customer.refresh_from_db()
    stripe_client().v1.subscriptions.cancel(customer.subscription.stripe_subscription_id)
    [event] = stripe_on.events("customer.subscription.deleted")
    answers = []

    def deliver():
        answers.append(signed_post(Client(), event).json()["status"])
        connection.close()

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(answers) == ["duplicate", "processed"]
    assert handler_calls == [event["id"]]
    assert StripeWebhookEvent.objects.count() == 1


def test_invoice_finalized_records_the_invoice_and_checks_it_against_the_ledger(
    client, synced_customer, stripe_on
):
    ingest(*calls("a", 160))
    outbox_drain()
    stripe_on.close_period(synced_customer.subscription.stripe_subscription_id, wait=False)
    created, finalized = stripe_on.events("invoice.created")[0], stripe_on.events("invoice.finalized")[0]

    signed_post(client, created)
    assert StripeInvoice.objects.get().status == "draft"
    signed_post(client, finalized)

    invoice = StripeInvoice.objects.get()
    assert invoice.customer == synced_customer
    assert invoice.status == "open"
    # 60 calls past the allowance at $0.10: Stripe's metered line and the local preview agree.
    assert invoice.total_minor == 600
    assert invoice.total == invoice.usage_total == invoice.local_preview_total == Decimal("6.00")
    assert invoice.finalized_at is not None
    assert not ReconciliationDivergence.objects.exists()


def test_an_invoice_event_arriving_late_does_not_reopen_a_draft(client, synced_customer, stripe_on):
    stripe_on.close_period(synced_customer.subscription.stripe_subscription_id, wait=False)
    created, finalized = stripe_on.events("invoice.created")[0], stripe_on.events("invoice.finalized")[0]

    signed_post(client, finalized)
    signed_post(client, created)

    assert StripeInvoice.objects.get().status == "open"


def test_a_meter_error_report_is_recorded_and_operators_are_told(
    client, settings, synced_customer, stripe_on, django_capture_on_commit_callbacks, mid_hour
):
    settings.OPERATOR_EMAILS = ["ops@example.com"]
    ingest(*calls("a", 130))
    outbox_drain()
    sent = StripeMeterEvent.objects.get()
    meter_id = Meter.objects.get(key="api_call").stripe_meter_id
    notification = stripe_on.send_meter_error(
        meter_id, code="meter_event_customer_not_found", identifier=sent.identifier, wait=False
    )

    with django_capture_on_commit_callbacks(execute=True):
        response = signed_post(client, notification)

    assert response.json()["status"] == "processed"
    stored = StripeWebhookEvent.objects.get()
    assert stored.thin and stored.type == "v1.billing.meter.error_report_triggered"
    alert = OperatorAlert.objects.get(kind=OperatorAlertKind.METER_ERROR)
    assert "meter_event_customer_not_found × 1" in alert.message
    assert alert.data["ours"] == [sent.identifier]
    assert alert.customer == synced_customer
    assert "Stripe meter error" in StripeMeterEvent.objects.get().last_error
    [email] = mail.outbox
    assert email.to == ["ops@example.com"]
    assert "Stripe meter error" in email.subject


def test_subscription_renewal_in_stripe_rolls_the_local_period(client, synced_customer, stripe_on):
    subscription = Subscription.objects.get(customer=synced_customer)
    with time_machine.travel(subscription.current_period_end + timedelta(minutes=2), tick=False):
        stripe_on.close_period(subscription.stripe_subscription_id, wait=False)
        [updated] = stripe_on.events("customer.subscription.updated")
        signed_post(client, updated)

    ended = subscription.current_period_end
    subscription.refresh_from_db()
    assert subscription.current_period_start == ended


@pytest.mark.django_db(transaction=True)
def test_stripe_delivers_its_own_signed_webhooks_end_to_end(
    live_server, settings, stripe_on, pro_plan, make_customer
):
    from billing_app.stripe.sync.pending import stripe_sync_pending

    stripe_on.configure_webhooks(f"{live_server.url}{URL}", settings.STRIPE_WEBHOOK_SECRET)
    customer = make_customer("pro")
    stripe_sync_pending()
    customer.refresh_from_db()
    ingest(*calls("a", 120))
    outbox_drain()

    stripe_on.close_period(customer.subscription.stripe_subscription_id)

    assert {delivery.status for delivery in stripe_on.webhook_deliveries()} == {200}
    received = set(StripeWebhookEvent.objects.values_list("type", flat=True))
    assert {"invoice.created", "invoice.finalized", "customer.subscription.updated"} <= received
    assert StripeInvoice.objects.get().usage_total == Decimal("2.00")


def test_an_older_update_delivered_after_the_cancellation_does_not_revive_it(
    client, synced_customer, stripe_on
):
    stripe_client().v1.subscriptions.update(
        synced_customer.subscription.stripe_subscription_id, {"metadata": {"note": "before"}}
    )
    [older] = stripe_on.events("customer.subscription.updated")
    stripe_client().v1.subscriptions.cancel(synced_customer.subscription.stripe_subscription_id)
    [deleted] = stripe_on.events("customer.subscription.deleted")

    assert signed_post(client, deleted).json()["status"] == "processed"
    assert signed_post(client, older).json()["status"] == "processed"

    assert Subscription.objects.get(customer=synced_customer).status == SubscriptionStatus.CANCELED
