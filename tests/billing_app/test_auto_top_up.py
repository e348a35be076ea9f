"""Automatic top-up: offered with a saved card where overage is blocked, one charge per crossing however many
requests cross together, never past the monthly cap, and off after three declines in a row."""

import threading
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core import mail
from django.db import connection
from django.utils import timezone

from billing_app.auto_top_up import auto_top_up_update
from billing_app.customer_emails import customer_emails_send
from billing_app.models import AutoTopUp, AutoTopUpCharge, AutoTopUpChargeStatus, SavedPaymentMethod
from billing_app.stripe.checkout import checkout_session_create, checkout_session_refresh
from billing_app.tasks import auto_top_up_task
from customers.models import Customer, Notification, NotificationKind
from customers.services import spend_controls_update
from tests.billing_app.conftest import calls, ingest
from tests.billing_app.test_worker import broker, worker  # noqa: F401 - fixtures of the worker test below
from tests.stripe_fake import FakeStripe
from usage.ledger_audit import ledger_mismatches
from usage.models import CreditLedgerEntry, CustomerBalance
from usage.services import wallet_top_up

# Committed for real: a top-up is queued when the transaction that drew the wallet commits.
pytestmark = pytest.mark.django_db(transaction=True)

URL = "/api/v1/customers/acme/auto-top-up"
INTENTS = "/v1/payment_intents"
SETTINGS = {"enabled": True, "threshold": "10.00", "amount": "25.00", "monthly_cap": "100.00"}


def wallet(customer: Customer) -> Decimal:
    return CustomerBalance.objects.get(customer=customer).wallet_balance


def card_saved(customer: Customer, fake: FakeStripe) -> SavedPaymentMethod:
    """The customer pays a $5 top-up through Checkout, which saves their card."""
    checkout = checkout_session_create(
        customer=customer,
        kind="top_up",
        amount=Decimal(5),
        success_url="https://app.example/ok",
        cancel_url="https://app.example/no",
    )
    fake.checkout_complete(checkout.stripe_session_id)
    checkout_session_refresh(checkout=checkout)
    return SavedPaymentMethod.objects.get(customer=customer)


@pytest.fixture
def prepaid(synced_customer: Customer, stripe_on: FakeStripe) -> Customer:
    """Acme on Pro with overage blocked, its 100 included calls used, a saved card and $5 in the wallet."""
    spend_controls_update(customer=synced_customer, soft_limit=None, hard_limit=None, block_overage=True)
    ingest(*calls("included", 100))
    card_saved(synced_customer, stripe_on)
    return synced_customer


def enable(customer: Customer, **overrides: Any) -> AutoTopUp:
    values = {key: Decimal(value) for key, value in SETTINGS.items() if key != "enabled"}
    values.update(overrides)
    return auto_top_up_update(customer=customer, enabled=True, **values)


def charge_posts(fake: FakeStripe) -> list[Any]:
    return fake.requests(INTENTS, method="POST")


def test_it_is_offered_only_with_a_saved_card_and_blocked_overage(api, synced_customer, stripe_on):
    without_card = api.put(URL, SETTINGS, format="json")
    assert without_card.status_code == 409
    assert without_card.json()["error"]["code"] == "auto_top_up_unavailable"
    assert "save a card" in without_card.json()["error"]["message"]

    card_saved(synced_customer, stripe_on)
    overage_billed = api.put(URL, SETTINGS, format="json")
    assert overage_billed.status_code == 409
    assert "Block overage" in overage_billed.json()["error"]["message"]
    assert api.get(URL).json()["offered"] is False

    spend_controls_update(customer=synced_customer, soft_limit=None, hard_limit=None, block_overage=True)
    saved = api.put(URL, SETTINGS, format="json")
    assert saved.status_code == 200, saved.content
    body = saved.json()
    assert (body["enabled"], body["threshold"], body["amount"], body["monthly_cap"]) == (
        True,
        "10.00",
        "25.00",
        "100.00",
    )
    assert body["payment_method"]["last4"] == "4242"


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"threshold": "-1"}, "threshold"),
        ({"amount": "1.00"}, "amount"),
        ({"monthly_cap": "20.00"}, "monthly_cap"),
        ({"enabled": "maybe"}, "enabled"),
    ],
)
def test_bad_settings_are_refused_and_change_nothing(api, prepaid, change, param):
    response = api.put(URL, {**SETTINGS, **change}, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error.get("param") == param or param in error.get("fields", {})
    assert not AutoTopUp.objects.exists()


def test_a_wallet_drawn_below_the_threshold_is_topped_up_once_by_an_off_session_charge(prepaid, stripe_on):
    enable(prepaid)
    ingest(*calls("use", 10))  # $1.00 from the wallet: $4.00 left, below $10

    [post] = charge_posts(stripe_on)
    assert post.params["off_session"] == "true"
    assert post.params["confirm"] == "true"
    assert post.params["amount"] == "2500"
    assert post.idempotency_key == f"auto-top-up:{prepaid.pk}:1"
    [charge] = AutoTopUpCharge.objects.all()
    assert charge.status == AutoTopUpChargeStatus.SUCCEEDED
    assert wallet(prepaid) == Decimal("29.00")
    assert (
        CreditLedgerEntry.objects.get(reference=f"payment_intent:{charge.stripe_payment_intent_id}").amount
        == 25
    )
    ingest(*calls("more", 10))  # $28.00: above the threshold, nothing to do
    assert len(charge_posts(stripe_on)) == 1
    assert ledger_mismatches() == []


def test_a_retried_charge_sends_the_same_key_and_credits_once(prepaid, stripe_on):
    from billing_app.auto_top_up import auto_top_up_charge_run, auto_top_up_intent_settled

    enable(prepaid, threshold=Decimal(30))  # $5 in the wallet: enabling queued the check, which charged
    [charge] = AutoTopUpCharge.objects.all()
    assert charge.status == AutoTopUpChargeStatus.SUCCEEDED

    # A worker that died after Stripe answered, before it wrote the answer down, runs the charge again.
    charge.status = AutoTopUpChargeStatus.PENDING
    auto_top_up_charge_run(charge=charge, client=stripe_on.client())
    [event] = stripe_on.events("payment_intent.succeeded")[-1:]
    auto_top_up_intent_settled(intent=event["data"]["object"])

    posts = charge_posts(stripe_on)
    assert len(posts) == 2 and posts[1].replayed
    assert wallet(prepaid) == Decimal(30)
    assert ledger_mismatches() == []


def test_never_past_the_monthly_cap(prepaid, stripe_on, settings):
    enable(prepaid, amount=Decimal(25), monthly_cap=Decimal(50), threshold=Decimal(30))

    for round_ in range(4):
        ingest(*calls(f"r{round_}", 10))

    assert [c.status for c in AutoTopUpCharge.objects.order_by("sequence")] == ["succeeded", "succeeded"]
    assert len(charge_posts(stripe_on)) == 2


def test_three_declines_in_a_row_turn_it_off_and_say_so(prepaid, stripe_on, settings):
    settings.AUTO_TOP_UP_RETRY_MINUTES = 0
    card = SavedPaymentMethod.objects.get(customer=prepaid)
    stripe_on.payment_method_decline(card.stripe_payment_method_id, "insufficient_funds")
    enable(prepaid)

    ingest(*calls("use", 10))  # the first crossing: declined
    auto_top_up_task(prepaid.pk)  # the retries
    auto_top_up_task(prepaid.pk)
    assert auto_top_up_task(prepaid.pk) is None  # off now: nothing more is charged

    charges = list(AutoTopUpCharge.objects.order_by("sequence"))
    assert [c.status for c in charges] == ["failed"] * 3
    assert charges[0].failure_code == "insufficient_funds"
    assert len(charge_posts(stripe_on)) == 3
    row = AutoTopUp.objects.get(customer=prepaid)
    assert (row.enabled, row.consecutive_failures) == (False, 3)
    assert "3 failed charges in a row" in row.disabled_reason
    kinds = list(Notification.objects.filter(customer=prepaid).values_list("kind", flat=True))
    assert kinds.count(NotificationKind.AUTO_TOP_UP_FAILED) == 3
    assert kinds.count(NotificationKind.AUTO_TOP_UP_DISABLED) == 1
    prepaid.email = "billing@acme.example"
    prepaid.save()
    assert customer_emails_send() == 4
    assert any("turned off" in message.subject for message in mail.outbox)
    assert wallet(prepaid) == Decimal(4)

    # Turned on again by an admin, with the card working: failures start again from zero.
    stripe_on.payment_method_decline(card.stripe_payment_method_id, None)
    enable(prepaid)
    assert AutoTopUpCharge.objects.filter(status="succeeded").count() == 1
    assert AutoTopUp.objects.get(customer=prepaid).consecutive_failures == 0


def test_a_failed_charge_waits_before_trying_again(prepaid, stripe_on):
    card = SavedPaymentMethod.objects.get(customer=prepaid)
    stripe_on.payment_method_decline(card.stripe_payment_method_id)
    enable(prepaid)
    ingest(*calls("use", 10))
    ingest(*calls("again", 1))
    assert len(charge_posts(stripe_on)) == 1


def test_fifty_concurrent_crossings_charge_once(prepaid, stripe_on):
    """50 requests draw the wallet across the threshold together; each one's commit queues the check (run
    in-process, in its own thread, so the checks race each other for real)."""
    wallet_top_up(customer=prepaid, amount=Decimal("5.50"))  # $10.50: one call over the threshold
    enable(prepaid)
    assert charge_posts(stripe_on) == []
    start = threading.Barrier(50)
    errors: list[BaseException] = []

    def request(n: int) -> None:
        try:
            start.wait()
            ingest(*calls(f"t{n}", 1))
        except BaseException as error:
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=request, args=(n,)) for n in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(charge_posts(stripe_on)) == 1
    [charge] = AutoTopUpCharge.objects.all()
    assert charge.status == AutoTopUpChargeStatus.SUCCEEDED
    assert wallet(prepaid) == Decimal("10.50") - Decimal("5.00") + Decimal(25)
    assert ledger_mismatches() == []


@pytest.mark.worker
@pytest.mark.usefixtures("broker", "worker")
def test_on_a_real_worker_concurrent_crossings_charge_once_and_three_declines_turn_it_off(prepaid, stripe_on):
    """The tasks go through Redis to a separate worker process, as in production."""
    from tests.billing_app.test_worker import wait_for

    wallet_top_up(customer=prepaid, amount=Decimal("5.50"))
    enable(prepaid)
    start = threading.Barrier(20)

    def request(n: int) -> None:
        try:
            start.wait()
            ingest(*calls(f"w{n}", 1))
        finally:
            connection.close()

    threads = [threading.Thread(target=request, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    wait_for(
        lambda: AutoTopUpCharge.objects.filter(status=AutoTopUpChargeStatus.SUCCEEDED).exists(),
        what="the worker to charge the card",
    )
    assert len(charge_posts(stripe_on)) == 1
    assert wallet(prepaid) == Decimal("10.50") - Decimal("2.00") + Decimal(25)

    # The card now declines; the worker's retry wait is the suite's default (60 minutes), so each decline is
    # followed by a crossing the test makes look due by moving the last failure back an hour.
    card = SavedPaymentMethod.objects.get(customer=prepaid)
    stripe_on.payment_method_decline(card.stripe_payment_method_id)
    for attempt in range(1, 4):
        AutoTopUpCharge.objects.filter(status=AutoTopUpChargeStatus.FAILED).update(
            settled_at=timezone.now() - timedelta(hours=2)
        )
        ingest(*calls(f"drain{attempt}", 250 if attempt == 1 else 1))
        wait_for(
            lambda n=attempt: (
                AutoTopUpCharge.objects.filter(status=AutoTopUpChargeStatus.FAILED).count() == n
            ),
            what=f"decline {attempt}",
        )
    wait_for(lambda: not AutoTopUp.objects.get(customer=prepaid).enabled, what="auto top-up to turn off")
    assert Notification.objects.filter(kind=NotificationKind.AUTO_TOP_UP_DISABLED).count() == 1
    assert len(charge_posts(stripe_on)) == 4
