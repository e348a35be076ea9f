"""Top-ups and credit packs paid through Stripe Checkout: the real SDK against the fake, webhooks signed as
Stripe signs them, crediting once however often and however concurrently Stripe tells us."""

import threading
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.test import Client

from billing_app.models import CheckoutSession, CheckoutStatus, SavedPaymentMethod, StripeWebhookEvent
from billing_app.stripe.checkout import checkout_session_refresh
from customers.models import Customer
from tests.billing_app.webhook_helpers import signed_post
from tests.stripe_fake import FakeStripe
from usage.ledger_audit import ledger_mismatches
from usage.models import CreditGrant, CreditLedgerEntry, CustomerBalance
from usage.services import wallet_top_up

SUCCESS = "https://app.example/paid?session_id={CHECKOUT_SESSION_ID}"
CANCEL = "https://app.example/canceled"
URL = "/api/v1/customers/acme/checkout-sessions"


def wallet(customer: Customer) -> Decimal:
    balance = CustomerBalance.objects.filter(customer=customer).first()
    return balance.wallet_balance if balance else Decimal(0)


def open_top_up(api: Any, amount: str = "50.00") -> dict[str, Any]:
    response = api.post(
        URL, {"kind": "top_up", "amount": amount, "success_url": SUCCESS, "cancel_url": CANCEL}, format="json"
    )
    assert response.status_code == 201, response.content
    return response.json()


def completed_event(fake: FakeStripe, session_id: str) -> dict[str, Any]:
    fake.checkout_complete(session_id)
    [event] = [
        e for e in fake.events("checkout.session.completed") if e["data"]["object"]["id"] == session_id
    ]
    return event


def test_the_api_opens_a_payment_session_that_saves_the_card_and_credits_nothing_yet(
    api, synced_customer, stripe_on
):
    body = open_top_up(api)

    assert body["id"].startswith("cs_test_")
    assert body["url"] == f"{stripe_on.url}/pay/{body['id']}"
    assert (body["kind"], body["amount"], body["status"]) == ("top_up", "50.00", "open")
    [request] = stripe_on.requests("/v1/checkout/sessions", method="POST")
    assert request.params["mode"] == "payment"
    assert request.params["customer"] == synced_customer.stripe_customer_id
    assert request.params["payment_intent_data"]["setup_future_usage"] == "off_session"
    assert request.params["line_items"][0]["price_data"]["unit_amount"] == "5000"
    assert request.params["success_url"] == SUCCESS
    assert request.headers["idempotency-key"].startswith("checkout-session-")
    assert wallet(synced_customer) == 0


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"kind": "gift"}, 400, "invalid_request", None),
        ({"kind": "top_up"}, 400, "invalid_request", "amount"),
        ({"kind": "top_up", "amount": "1.00"}, 400, "invalid_request", "amount"),
        ({"kind": "top_up", "amount": "20000"}, 400, "out_of_range", "amount"),
        ({"kind": "top_up", "amount": "10.005"}, 400, "invalid_request", None),
        ({"kind": "credit_pack", "pack": 999}, 404, "not_found", "pack"),
        (
            {"kind": "top_up", "amount": "10", "success_url": "javascript:alert(1)"},
            400,
            "invalid_request",
            "success_url",
        ),
    ],
)
def test_bad_checkout_requests_are_refused_with_a_code_and_open_nothing(
    api, synced_customer, stripe_on, body, status, code, param
):
    response = api.post(URL, {"success_url": SUCCESS, "cancel_url": CANCEL, **body}, format="json")

    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["code"] == code
    if param:
        assert error.get("param") == param or param in str(error.get("fields", ""))
    assert stripe_on.requests("/v1/checkout/sessions") == []
    assert not CheckoutSession.objects.exists()


def test_without_stripe_a_checkout_is_refused_as_unavailable(api, make_customer, pro_plan, settings):
    settings.STRIPE_API_KEY = ""
    make_customer("pro")
    response = api.post(
        URL, {"kind": "top_up", "amount": "10", "success_url": SUCCESS, "cancel_url": CANCEL}, format="json"
    )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "payments_unavailable"


def test_a_paid_session_credits_the_wallet_once_with_a_ledger_row_naming_it(
    client, api, synced_customer, stripe_on
):
    session_id = open_top_up(api)["id"]
    event = completed_event(stripe_on, session_id)

    first = signed_post(client, event)
    again = signed_post(client, event)

    assert first.json()["status"] == "processed"
    assert again.json()["status"] == "duplicate"
    assert wallet(synced_customer) == Decimal("50.00")
    [row] = CreditLedgerEntry.objects.filter(customer=synced_customer, reference=f"checkout:{session_id}")
    assert row.amount == Decimal("50.00")
    checkout = CheckoutSession.objects.get(stripe_session_id=session_id)
    assert (checkout.status, checkout.ledger_entry_id) == (CheckoutStatus.COMPLETE, row.pk)
    [card] = SavedPaymentMethod.objects.filter(customer=synced_customer)
    assert card.last4 == "4242"
    assert ledger_mismatches() == []


def test_a_look_up_and_a_later_webhook_of_another_id_credit_once(client, api, synced_customer, stripe_on):
    session_id = open_top_up(api, "25.00")
    event = completed_event(stripe_on, session_id["id"])
    checkout = CheckoutSession.objects.get(stripe_session_id=session_id["id"])

    checkout_session_refresh(checkout=checkout)
    signed_post(client, event)
    signed_post(client, {**event, "id": "evt_redelivered_as_new"})

    assert wallet(synced_customer) == Decimal("25.00")
    assert CreditLedgerEntry.objects.filter(reference=f"checkout:{session_id['id']}").count() == 1


def test_an_expired_session_credits_nothing(client, api, synced_customer, stripe_on):
    session_id = open_top_up(api)["id"]
    stripe_on.checkout_expire(session_id)
    [event] = stripe_on.events("checkout.session.expired")

    assert signed_post(client, event).json()["status"] == "processed"

    checkout = CheckoutSession.objects.get(stripe_session_id=session_id)
    assert checkout.status == CheckoutStatus.EXPIRED
    assert checkout_session_refresh(checkout=checkout).status == CheckoutStatus.EXPIRED
    assert wallet(synced_customer) == 0
    assert not CreditLedgerEntry.objects.filter(customer=synced_customer).exists()


def test_an_abandoned_session_credits_nothing_on_look_up(api, synced_customer, stripe_on):
    session_id = open_top_up(api)["id"]
    checkout = checkout_session_refresh(checkout=CheckoutSession.objects.get(stripe_session_id=session_id))
    assert checkout.status == CheckoutStatus.OPEN
    assert wallet(synced_customer) == 0


def test_a_credit_pack_grants_its_credits_once(client, api, make_plan, make_customer, stripe_on):
    from billing_app.stripe.sync.pending import stripe_sync_pending

    make_plan(
        "packs",
        prices=[{"meter": "api_call", "model": "per_unit", "unit": "credits", "unit_amount": "1"}],
        credit_packs=[{"price": "250.00", "credits": "50000"}],
    )
    customer = make_customer("packs")
    stripe_sync_pending()
    pack = customer.subscription.plan_version.credit_packs.get()
    response = api.post(
        URL,
        {"kind": "credit_pack", "pack": pack.pk, "success_url": SUCCESS, "cancel_url": CANCEL},
        format="json",
    )
    assert response.status_code == 201, response.content
    assert (response.json()["amount"], response.json()["credits"]) == ("250.00", "50000")
    event = completed_event(stripe_on, response.json()["id"])

    signed_post(client, event)
    signed_post(client, {**event, "id": "evt_again"})

    [grant] = CreditGrant.objects.filter(customer=customer)
    assert (grant.amount, grant.unit) == (Decimal(50000), "credits")
    assert grant.entries.get().reference == f"checkout:{response.json()['id']}"
    assert wallet(customer) == 0
    assert ledger_mismatches() == []


@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_deliveries_credit_once(api, synced_customer, stripe_on):
    session_id = open_top_up(api, "40.00")["id"]
    event = completed_event(stripe_on, session_id)
    wallet_top_up(customer=synced_customer, amount=Decimal("5"))
    start = threading.Barrier(20)
    statuses: list[int] = []

    def deliver(n: int) -> None:
        try:
            start.wait()
            # Half the same delivery again, half Stripe's other event ids for the same session.
            payload = event if n % 2 else {**event, "id": f"evt_copy_{n}"}
            statuses.append(signed_post(Client(), payload).status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=deliver, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert statuses == [200] * 20
    assert wallet(synced_customer) == Decimal("45.00")
    assert CreditLedgerEntry.objects.filter(reference=f"checkout:{session_id}").count() == 1
    assert StripeWebhookEvent.objects.filter(type="checkout.session.completed").count() == 11
    assert ledger_mismatches() == []
