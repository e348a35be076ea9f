"""Invoices the customer reads: mirrored from Stripe's webhooks with lines, status, amounts and hosted link;
the upcoming one previewed locally; and the reconciliation the usage page queues."""

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client

from billing_app.models import StripeInvoice, StripeInvoiceStatus
from billing_app.stripe.outbox import outbox_drain
from customers.services import member_create, subscription_roll_period
from plans.models import Meter
from tests.billing_app.conftest import calls, ingest
from tests.billing_app.webhook_helpers import invoice_event, signed_post
from tests.stripe_fake import FakeStripe

LIST = "/api/v1/customers/acme/invoices"
UPCOMING = "/api/v1/customers/acme/upcoming-invoice"


def deliver(client: Client, fake: FakeStripe, event_type: str) -> None:
    for event in fake.events(event_type):
        signed_post(client, event)


def test_a_period_closed_in_stripe_is_an_invoice_with_lines_status_and_link(
    client, api, synced_customer, stripe_on, mid_hour
):
    ingest(*calls("use", 130))  # 100 included, 30 × $0.10
    outbox_drain()
    subscription = synced_customer.subscription
    [stripe_invoice] = stripe_on.close_period(subscription.stripe_subscription_id)
    for event_type in ("invoice.created", "invoice.finalized"):
        deliver(client, stripe_on, event_type)

    mirrored = StripeInvoice.objects.get(stripe_invoice_id=stripe_invoice["id"])
    assert mirrored.status == StripeInvoiceStatus.OPEN
    assert mirrored.hosted_invoice_url == f"{stripe_on.url}/invoices/{stripe_invoice['id']}"
    assert mirrored.number.startswith("FAKE-")
    assert mirrored.amount_due == mirrored.total == Decimal("3.00")
    assert [(line.amount, line.amount_minor) for line in mirrored.lines.all()] == [(Decimal("3.00"), 300)]

    stripe_on.invoice_payment_fail(stripe_invoice["id"])
    deliver(client, stripe_on, "invoice.payment_failed")
    mirrored.refresh_from_db()
    assert (mirrored.status, mirrored.attempt_count) == ("open", 1)
    assert mirrored.payment_failed_at is not None

    stripe_on.invoice_pay(stripe_invoice["id"])
    deliver(client, stripe_on, "invoice.paid")
    deliver(client, stripe_on, "invoice.finalized")  # a late copy must not make it open again
    mirrored.refresh_from_db()
    assert (mirrored.status, mirrored.amount_paid, mirrored.amount_remaining) == ("paid", Decimal("3.00"), 0)
    assert mirrored.paid_at is not None and mirrored.payment_failed_at is None

    body = api.get(LIST).json()
    assert body["object"] == "list" and body["has_more"] is False
    [listed] = body["data"]
    assert (listed["id"], listed["status"], listed["total"], listed["amount_paid"]) == (
        stripe_invoice["id"],
        "paid",
        "3.00",
        "3.00",
    )
    assert listed["lines"][0]["amount"] == "3.00"
    assert listed["hosted_invoice_url"].endswith(stripe_invoice["id"])


def _invoices(client: Client, customer: Any, count: int) -> list[str]:
    ids = []
    for n in range(count):
        ids.append(f"in_{n:03d}")
        event = invoice_event(
            f"evt_{n}",
            "invoice.finalized",
            invoice_id=ids[-1],
            customer=customer.stripe_customer_id,
            total=100 * n,
            created=1_700_000_000 + n * 86_400,
            status="open",
        )
        assert signed_post(client, event).status_code == 200
    return ids[::-1]  # newest first


def test_invoices_are_listed_newest_first_with_a_stripe_cursor(client, api, synced_customer):
    newest_first = _invoices(client, synced_customer, 7)

    first = api.get(LIST, {"limit": 3}).json()
    second = api.get(LIST, {"limit": 3, "starting_after": first["data"][-1]["id"]}).json()
    last = api.get(LIST, {"limit": 3, "starting_after": second["data"][-1]["id"]}).json()

    assert [i["id"] for i in first["data"] + second["data"] + last["data"]] == newest_first
    assert (first["has_more"], second["has_more"], last["has_more"]) == (True, True, False)


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ({"limit": 0}, "invalid_request"),
        ({"limit": 101}, "invalid_request"),
        ({"limit": "x"}, "invalid_request"),
        ({"starting_after": "in_nope"}, "not_found"),
    ],
)
def test_bad_list_parameters_are_refused(api, synced_customer, query, code):
    response = api.get(LIST, query)
    assert response.status_code in (400, 404)
    assert response.json()["error"]["code"] == code


def test_another_customers_invoices_are_not_listed(client, api, synced_customer, make_customer):
    _invoices(client, synced_customer, 2)
    make_customer("pro", external_id="globex")
    assert api.get("/api/v1/customers/globex/invoices").json()["data"] == []


def test_the_upcoming_invoice_is_what_stripe_bills_at_period_end(
    client, api, synced_customer, stripe_on, mid_hour
):
    ingest(*calls("use", 125))  # 25 calls of overage: $2.50
    body = api.get(UPCOMING).json()

    subscription = synced_customer.subscription
    assert body["period_end"] == subscription.current_period_end.isoformat()
    assert [(line["kind"], line["amount"]) for line in body["lines"]] == [
        ("usage", "2.50"),
        ("base_fee", "20.00"),
    ]
    assert body["lines"][0]["description"] == Meter.objects.get(key="api_call").name
    assert body["total"] == body["amount_due"] == "22.50"

    # Stripe's invoice at period end bills the same usage line, to the cent.
    outbox_drain()
    [invoice] = stripe_on.close_period(subscription.stripe_subscription_id)
    assert sum(line["amount"] for line in invoice["lines"]["data"]) == 250


def test_a_plan_change_adds_the_base_fee_difference_and_a_canceled_plan_has_none(
    api, synced_customer, make_plan
):
    from usage.services import subscription_change

    make_plan(
        "max", base_fee="60.00", prices=[{"meter": "api_call", "model": "per_unit", "unit_amount": "0.05"}]
    )
    from customers.services import plan_version_for_code

    subscription = synced_customer.subscription
    halfway = (
        subscription.current_period_start
        + (subscription.current_period_end - subscription.current_period_start) / 2
    )
    subscription_change(customer=synced_customer, plan_version=plan_version_for_code("max"), at=halfway)

    lines = {line["kind"]: line["amount"] for line in api.get(UPCOMING).json()["lines"]}
    assert lines == {"base_fee_adjustment": "20.00", "base_fee": "60.00"}  # (60 − 20) × half
    subscription.refresh_from_db()
    subscription_roll_period(
        subscription=subscription, now=subscription.current_period_end + timedelta(seconds=1)
    )
    subscription.refresh_from_db()
    assert subscription.base_fee_charged == Decimal(60)

    subscription.status = "canceled"
    subscription.save()
    assert api.get(UPCOMING).status_code == 409


def test_opening_the_usage_page_queues_one_reconciliation_per_window(
    client, synced_customer, stripe_on, django_user_model, monkeypatch, django_capture_on_commit_callbacks
):
    from billing_app import tasks

    queued: list[int] = []
    monkeypatch.setattr(tasks.customer_reconcile_task, "delay", queued.append)
    user = django_user_model.objects.create_user("maya", password="pw")
    member_create(customer=synced_customer, external_id="maya", role="admin", user=user)
    client.force_login(user)
    before = len(stripe_on.requests())

    for _ in range(3):
        with django_capture_on_commit_callbacks(execute=True):
            assert client.get("/settings/usage").status_code == 200

    assert queued == [synced_customer.pk]
    # Nothing reached Stripe in the requests themselves.
    assert stripe_on.requests()[before:] == []


def test_the_queued_reconciliation_checks_the_customers_meters(synced_customer, stripe_on, mid_hour):
    from billing_app.models import ReconciliationDivergence
    from billing_app.tasks import customer_reconcile_task

    ingest(*calls("use", 130))
    outbox_drain()
    assert customer_reconcile_task(synced_customer.pk)["checked"] >= 1
    assert not ReconciliationDivergence.objects.exists()
