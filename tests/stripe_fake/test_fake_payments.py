"""Checkout Sessions, saved cards and off-session PaymentIntents of the fake, through the real stripe SDK."""

import json
import urllib.error
import urllib.request
from datetime import timedelta

import pytest
import stripe
import time_machine

from tests.stripe_fake import FakeStripe
from tests.stripe_fake.errors import StripeError


@pytest.fixture
def client(fake_stripe: FakeStripe) -> stripe.StripeClient:
    return fake_stripe.client()


@pytest.fixture
def customer(client: stripe.StripeClient) -> stripe.Customer:
    return client.v1.customers.create({"name": "Ada", "email": "ada@example.com"})


def session_params(customer_id: str, **extra: object) -> dict:
    return {
        "mode": "payment",
        "customer": customer_id,
        "line_items": [
            {
                "quantity": 1,
                "price_data": {
                    "currency": "usd",
                    "unit_amount": 2500,
                    "product_data": {"name": "Wallet top-up"},
                },
            }
        ],
        "payment_intent_data": {"setup_future_usage": "off_session"},
        "metadata": {"kind": "top_up"},
        "success_url": "https://app.example/ok?session_id={CHECKOUT_SESSION_ID}",
        "cancel_url": "https://app.example/cancel",
        **extra,
    }


def test_a_session_opens_unpaid_with_a_hosted_url(client, customer, fake_stripe):
    session = client.v1.checkout.sessions.create(session_params(customer.id))

    assert session.status == "open"
    assert session.payment_status == "unpaid"
    assert session.amount_total == 2500
    assert session.currency == "usd"
    assert session.url == f"{fake_stripe.url}/pay/{session.id}"
    assert session.metadata["kind"] == "top_up"
    assert session.payment_intent is None
    assert "_line_items" not in session
    items = client.v1.checkout.sessions.line_items.list(session.id)
    assert [(item.description, item.amount_total) for item in items.data] == [("Wallet top-up", 2500)]


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"mode": "subscription"}, "mode"),
        ({"line_items": []}, "line_items"),
        ({"success_url": ""}, "success_url"),
        ({"customer": "cus_missing"}, "customer"),
        ({"expires_at": 1}, "expires_at"),
        (
            {"payment_intent_data": {"setup_future_usage": "always"}},
            "payment_intent_data[setup_future_usage]",
        ),
        (
            {
                "line_items": [
                    {
                        "quantity": 1,
                        "price_data": {"currency": "usd", "unit_amount": 10, "product_data": {"name": "x"}},
                    }
                ]
            },
            "line_items",
        ),
        ({"surprise": "yes"}, "surprise"),
    ],
)
def test_a_bad_session_is_refused_naming_the_param(client, customer, change, param):
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.checkout.sessions.create({**session_params(customer.id), **change})
    assert refused.value.param == param


def test_completing_a_session_pays_it_saves_the_card_and_sends_the_webhook(client, customer, fake_stripe):
    session = client.v1.checkout.sessions.create(session_params(customer.id))

    fake_stripe.checkout_complete(session.id, card_last4="1881")

    paid = client.v1.checkout.sessions.retrieve(session.id, {"expand": ["payment_intent"]})
    assert (paid.status, paid.payment_status) == ("complete", "paid")
    assert paid.payment_intent.status == "succeeded"
    assert paid.payment_intent.amount_received == 2500
    [method] = client.v1.payment_methods.list({"customer": customer.id, "type": "card"}).data
    assert method.card.last4 == "1881"
    assert paid.payment_intent.payment_method == method.id
    [event] = fake_stripe.events("checkout.session.completed")
    assert event["data"]["object"]["id"] == session.id
    with pytest.raises(StripeError, match="can no longer be paid"):
        fake_stripe.checkout_complete(session.id)


def test_an_expired_session_cannot_be_paid(client, customer, fake_stripe):
    session = client.v1.checkout.sessions.create(session_params(customer.id))

    expired = client.v1.checkout.sessions.expire(session.id)

    assert expired.status == "expired"
    assert [e["data"]["object"]["id"] for e in fake_stripe.events("checkout.session.expired")] == [session.id]
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.checkout.sessions.expire(session.id)
    with pytest.raises(StripeError, match="can no longer be paid"):
        fake_stripe.checkout_complete(session.id)


def test_a_session_expires_on_its_own_at_expires_at(client, customer, fake_stripe):
    session = client.v1.checkout.sessions.create(session_params(customer.id))
    with time_machine.travel(timedelta(hours=25)):
        assert client.v1.checkout.sessions.retrieve(session.id).status == "expired"
    assert len(fake_stripe.events("checkout.session.expired")) == 1


def test_the_hosted_page_pays_and_redirects_to_the_success_url(client, customer, fake_stripe):
    session = client.v1.checkout.sessions.create(session_params(customer.id))
    page = urllib.request.urlopen(session.url).read().decode()
    assert "Pay with test card" in page

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as answer:
        opener.open(urllib.request.Request(session.url, data=b"", method="POST"))
    assert answer.value.code == 303
    assert answer.value.headers["Location"] == f"https://app.example/ok?session_id={session.id}"
    assert client.v1.checkout.sessions.retrieve(session.id).payment_status == "paid"


def saved_card(client: stripe.StripeClient, customer_id: str, fake: FakeStripe) -> str:
    session = client.v1.checkout.sessions.create(session_params(customer_id))
    fake.checkout_complete(session.id)
    return client.v1.payment_methods.list({"customer": customer_id}).data[0].id


def test_a_saved_card_is_charged_off_session_once_per_idempotency_key(client, customer, fake_stripe):
    card = saved_card(client, customer.id, fake_stripe)
    params = {
        "amount": 1000,
        "currency": "usd",
        "customer": customer.id,
        "payment_method": card,
        "confirm": True,
        "off_session": True,
        "metadata": {"kind": "auto_top_up"},
    }

    first = client.v1.payment_intents.create(params, {"idempotency_key": "auto-1"})
    again = client.v1.payment_intents.create(params, {"idempotency_key": "auto-1"})

    assert first.status == "succeeded"
    assert again.id == first.id
    assert (
        len(
            [
                e
                for e in fake_stripe.events("payment_intent.succeeded")
                if e["data"]["object"]["id"] == first.id
            ]
        )
        == 1
    )


def test_a_declined_card_answers_402_with_the_intent_until_told_to_succeed(client, customer, fake_stripe):
    card = saved_card(client, customer.id, fake_stripe)
    fake_stripe.payment_method_decline(card, "insufficient_funds")
    params = {"amount": 1000, "currency": "usd", "customer": customer.id, "payment_method": card}

    with pytest.raises(stripe.CardError) as declined:
        client.v1.payment_intents.create({**params, "confirm": True, "off_session": True})

    assert declined.value.code == "card_declined"
    error = declined.value.error
    assert error.decline_code == "insufficient_funds"
    assert error.payment_intent.status == "requires_payment_method"
    assert fake_stripe.events("payment_intent.payment_failed")
    fake_stripe.payment_method_decline(card, None)
    retried = client.v1.payment_intents.confirm(error.payment_intent.id, {"off_session": True})
    assert retried.status == "succeeded"


def test_an_unattached_card_cannot_be_charged_off_session(client, customer, fake_stripe):
    session = client.v1.checkout.sessions.create(
        session_params(customer.id, payment_intent_data={"description": "one-off"})
    )
    fake_stripe.checkout_complete(session.id)
    intent = client.v1.payment_intents.retrieve(
        client.v1.checkout.sessions.retrieve(session.id).payment_intent
    )
    assert client.v1.payment_methods.list({"customer": customer.id}).data == []

    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.payment_intents.create(
            {
                "amount": 1000,
                "currency": "usd",
                "customer": customer.id,
                "payment_method": intent.payment_method,
                "confirm": True,
                "off_session": True,
            }
        )
    assert refused.value.param == "payment_method"


def test_the_control_api_completes_and_declines(client, customer, fake_stripe):
    session = client.v1.checkout.sessions.create(session_params(customer.id))
    request = urllib.request.Request(
        f"{fake_stripe.url}/_fake/checkout_sessions/complete",
        data=json.dumps({"session": session.id}).encode(),
        method="POST",
    )
    answer = json.loads(urllib.request.urlopen(request).read())
    assert answer["status"] == "complete"
