"""Each webhook event type is recorded by the real thing that makes it happen, once, with its data.

These tests run in a transaction that never commits, so nothing is sent: what they check is the outbox
(``WebhookEvent`` and its deliveries), which the sending tests (test_webhooks_out.py) take from there.
"""

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing_app.models import DivergenceKind, WebhookDelivery, WebhookEvent
from billing_app.stripe.reconciliation import divergence_check
from billing_app.webhooks_out import webhook_endpoint_create
from customers.events import CustomerEventType
from customers.services import customer_freeze
from tests.billing_app.conftest import calls, ingest
from tests.billing_app.test_alerts import billed_customer, spike  # noqa: F401 -- the fixture is used by name
from tests.catalog_fixtures import event
from usage.services import credit_grant_create, credit_grants_expiring_announce, wallet_top_up

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def endpoint():
    return webhook_endpoint_create(url="http://127.0.0.1:9/hooks", events=list(CustomerEventType.values))


def recorded(event_type: str) -> list[dict]:
    """The bodies recorded for ``event_type``, each owed to the endpoint."""
    events = WebhookEvent.objects.filter(type=event_type).order_by("id")
    assert WebhookDelivery.objects.filter(event__in=events).count() == len(events)
    return [json.loads(row.body) for row in events]


def test_crossing_the_soft_and_reaching_the_hard_limit_are_recorded_once(pro_plan, make_customer):
    make_customer("pro", soft_limit=Decimal("0.3"), hard_limit=Decimal("0.5"))

    ingest(*calls("call", 104))  # 4 over the allowance: $0.40
    ingest(*calls("more", 1))  # $0.50
    ingest(*calls("after", 1), event("after-0", quantity=1))  # a replay and nothing new crosses

    [soft] = recorded(CustomerEventType.SOFT_LIMIT_CROSSED)
    assert soft["customer"] == "acme"
    assert soft["data"]["limit"] == "0.3"
    assert soft["data"]["spend"] == "0.4"
    assert soft["data"]["currency"] == "usd"
    [hard] = recorded(CustomerEventType.HARD_LIMIT_REACHED)
    assert (hard["data"]["limit"], hard["data"]["spend"]) == ("0.5", "0.5")


def test_reaching_a_plans_cap_is_recorded_when_the_last_allowed_unit_is_used(free_plan, make_customer):
    make_customer("free")

    ingest(*[event(f"a-{i}", meter="ai_action") for i in range(19)])
    assert recorded(CustomerEventType.ENTITLEMENT_LIMIT_REACHED) == []
    ingest(event("a-19", meter="ai_action"))

    [reached] = recorded(CustomerEventType.ENTITLEMENT_LIMIT_REACHED)
    assert reached["data"] | {"period_start": None} == {
        "meter": "ai_action",
        "limit": "20",
        "used": "20",
        "period_start": None,
    }


def test_freezing_a_customer_is_recorded_once(pro_plan, make_customer):
    customer = make_customer("pro")

    customer_freeze(customer=customer, reason="runaway usage", period_start=timezone.now())
    customer_freeze(customer=customer, reason="still running away", period_start=timezone.now())

    [frozen] = recorded(CustomerEventType.FROZEN)
    assert frozen["data"]["reason"] == "runaway usage"


def test_a_draw_taking_the_wallet_below_the_low_balance_is_recorded(pro_plan, make_customer, settings):
    settings.WALLET_LOW_BALANCE = "10"
    customer = make_customer("pro")
    wallet_top_up(customer=customer, amount=Decimal("12"))

    ingest(*calls("call", 110))  # 10 over the allowance: $1.00 from the wallet, 11 left
    assert recorded(CustomerEventType.WALLET_LOW_BALANCE) == []
    ingest(*calls("more", 20))  # $2.00: 9 left
    ingest(*calls("yet-more", 5))  # already low: not again

    [low] = recorded(CustomerEventType.WALLET_LOW_BALANCE)
    assert low["data"] == {"balance": "9", "threshold": "10", "currency": "usd"}


def test_a_grant_about_to_expire_is_recorded_once(pro_plan, make_customer, settings):
    settings.CREDITS_EXPIRING_DAYS = 7
    customer = make_customer("pro")
    now = timezone.now()
    soon, _ = credit_grant_create(customer=customer, amount=Decimal("50"), expires_at=now + timedelta(days=3))
    credit_grant_create(customer=customer, amount=Decimal("50"), expires_at=now + timedelta(days=30))

    assert credit_grants_expiring_announce(now=now) == 1
    assert credit_grants_expiring_announce(now=now + timedelta(hours=1)) == 0

    [expiring] = recorded(CustomerEventType.CREDITS_EXPIRING)
    assert expiring["data"]["grant"] == soon.pk
    assert expiring["data"]["remaining"] == "50"
    assert expiring["data"]["expires_at"] == soon.expires_at.isoformat()


def test_an_invoice_spike_is_recorded_once(billed_customer, client):  # noqa: F811 -- the fixture
    assert spike(client, 16_000).status_code == 200
    assert spike(client, 16_000).status_code == 200  # Stripe's retry of the same event

    [flagged] = recorded(CustomerEventType.INVOICE_SPIKE_FLAGGED)
    assert flagged["customer"] == "acme"
    assert flagged["data"]["invoice"] == "in_new"
    assert (flagged["data"]["total"], flagged["data"]["previous_total"]) == ("160", "100")


def test_a_reconciliation_divergence_is_recorded_when_it_opens(pro_plan, make_customer):
    customer = make_customer("pro")
    now = timezone.now()
    period = (now - timedelta(days=1), now + timedelta(days=29))

    for remote in (Decimal("110"), Decimal("112")):
        divergence_check(
            kind=DivergenceKind.METER_USAGE,
            customer=customer,
            subject="mtr_api_call",
            period=period,
            local=Decimal("100"),
            remote=remote,
            smallest_difference=Decimal("1"),
            now=now,
        )

    [divergence] = recorded(CustomerEventType.RECONCILIATION_DIVERGENCE)
    assert divergence["data"]["local"] == "100"
    assert divergence["data"]["stripe"] == "110"
    assert divergence["data"]["subject"] == "mtr_api_call"


def test_nothing_is_recorded_without_an_endpoint_for_the_type(pro_plan, make_customer, endpoint):
    endpoint.delete()
    customer = make_customer("pro")

    customer_freeze(customer=customer, reason="runaway usage", period_start=timezone.now())

    assert not WebhookEvent.objects.exists()
