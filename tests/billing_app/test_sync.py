"""Catalog, customer and subscription sync, checked by what the fake Stripe received."""

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from billing_app.models import StripeDimensionMeter, StripeSubscriptionSync
from billing_app.stripe.client import StripeNotConnected, stripe_client
from billing_app.stripe.sync.catalog import AMOUNT_PRICE, plan_version_price_ids
from billing_app.stripe.sync.pending import stripe_sync_pending
from billing_app.stripe.sync.subscriptions import customer_sync
from customers.models import Customer, Subscription
from customers.services import subscription_roll_period
from plans.models import DimensionRate, Meter, Price

GRADUATED = {
    "meter": "ai_action",
    "model": "graduated",
    "tiers": [
        {"up_to": "1000", "unit_amount": "0"},
        {"up_to": "10000", "unit_amount": "0.005", "flat_amount": "5"},
        {"up_to": None, "unit_amount": "0.0025"},
    ],
}
TOKENS = {
    "meter": "llm_tokens",
    "model": "dimensional",
    "dimension": "model",
    "rates": {"gpt-4o": "0.00001", "gpt-4o-mini": "0.0000006"},
}


def posted(fake, path):
    return [request.params for request in fake.requests(path, method="POST") if request.status == 200]


def test_catalog_sync_creates_the_meter_product_and_prices(stripe_on, pro_plan):
    stripe_sync_pending()

    [meter] = posted(stripe_on, "/v1/billing/meters")
    assert meter == {
        "display_name": "Api Call",
        "event_name": "api_call",
        "default_aggregation": {"formula": "sum"},
        "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
        "value_settings": {"event_payload_key": "value"},
    }
    [product] = posted(stripe_on, "/v1/products")
    assert product["name"] == "Pro"
    base, usage = posted(stripe_on, "/v1/prices")
    # $20 a month, in cents, billed in advance; the calls past the allowance are rated locally and their
    # money metered in cents, so the usage price is one cent a unit.
    assert base["unit_amount"] == "2000"
    assert base["recurring"] == {"interval": "month", "usage_type": "licensed"}
    assert (usage["billing_scheme"], usage["unit_amount_decimal"]) == ("per_unit", "1")
    meter_id = Meter.objects.get(key="api_call").stripe_meter_id
    assert usage["recurring"] == {"interval": "month", "usage_type": "metered", "meter": meter_id}
    pro_plan.refresh_from_db()
    assert pro_plan.plan.stripe_product_id and pro_plan.stripe_base_price_id
    assert Price.objects.get(plan_version=pro_plan).stripe_price_id


def test_tiers_stay_local_and_stripe_bills_the_money_we_rated(stripe_on, make_plan):
    make_plan("team", prices=[GRADUATED])

    stripe_sync_pending()

    [price] = posted(stripe_on, "/v1/prices")
    assert "tiers" not in price and "tiers_mode" not in price
    assert {key: price[key] for key in AMOUNT_PRICE} == AMOUNT_PRICE


def test_dimensional_price_gets_a_meter_and_a_price_per_value(stripe_on, make_plan):
    make_plan("ai", prices=[TOKENS])

    stripe_sync_pending()

    meters = posted(stripe_on, "/v1/billing/meters")
    assert sorted(meter["event_name"] for meter in meters) == ["llm_tokens.gpt-4o", "llm_tokens.gpt-4o-mini"]
    prices = {price["metadata"]["dimension_value"]: price for price in posted(stripe_on, "/v1/prices")}
    assert prices["gpt-4o"]["unit_amount_decimal"] == prices["gpt-4o-mini"]["unit_amount_decimal"] == "1"
    by_value = {m.value: m.stripe_meter_id for m in StripeDimensionMeter.objects.all()}
    assert prices["gpt-4o"]["recurring"]["meter"] == by_value["gpt-4o"]
    assert all(rate.stripe_price_id for rate in DimensionRate.objects.all())
    # No default rate: values without a rate are refused at ingest, so no catch-all price exists.
    assert Price.objects.get().stripe_price_id == ""


def test_sync_twice_sends_nothing_new(stripe_on, pro_plan, make_customer):
    make_customer("pro")
    stripe_sync_pending()
    before = len(stripe_on.requests(method="POST"))

    report = stripe_sync_pending()

    assert (report.plan_versions, report.customers, report.subscriptions) == (0, 0, 0)
    assert len(stripe_on.requests(method="POST")) == before


def test_customer_and_subscription_carry_the_plan_prices(stripe_on, pro_plan, make_customer):
    customer = make_customer("pro")
    customer.email = "billing@acme.test"
    customer.save()

    stripe_sync_pending()

    customer.refresh_from_db()
    pro_plan.refresh_from_db()
    [created] = posted(stripe_on, "/v1/customers")
    assert created["metadata"] == {"external_id": "acme", "customer_id": str(customer.pk)}
    assert created["email"] == "billing@acme.test"
    remote = stripe_client().v1.subscriptions.retrieve(customer.subscription.stripe_subscription_id)
    assert remote.customer == customer.stripe_customer_id
    assert sorted(item.price.id for item in remote["items"].data) == sorted(plan_version_price_ids(pro_plan))
    assert StripeSubscriptionSync.objects.get().plan_version == pro_plan


def test_a_retry_after_a_lost_answer_reuses_the_stripe_customer(stripe_on, pro_plan, make_customer):
    customer = make_customer("pro")
    first = customer_sync(customer=customer)
    # The worker died after Stripe created the customer but before the id was saved.
    Customer.objects.filter(pk=customer.pk).update(stripe_customer_id="")
    customer.refresh_from_db()

    again = customer_sync(customer=customer)

    assert again == first
    assert len(stripe_client().v1.customers.list().data) == 1
    assert [request.replayed for request in stripe_on.requests("/v1/customers", method="POST")] == [
        False,
        True,
    ]


def test_a_scheduled_migration_is_put_in_stripe_at_once_keeping_each_meters_item(
    stripe_on, make_plan, make_customer
):
    """Stripe renews on its own clock: a migration at renewal is in Stripe before then, not at the next sync
    after it. A meter both versions price keeps its item (one minor unit a unit on both), so its usage of the
    period so far stays on Stripe's invoice; only the base fee, charged in advance, moves to the new price."""
    v1 = make_plan(
        "pro", base_fee="10.00", prices=[{"meter": "api_call", "model": "per_unit", "unit_amount": "0.10"}]
    )
    customer = make_customer("pro")
    stripe_sync_pending()
    v2 = make_plan(
        "pro", base_fee="12.00", prices=[{"meter": "api_call", "model": "per_unit", "unit_amount": "0.08"}]
    )
    Subscription.objects.filter(customer=customer).update(pending_plan_version=v2)
    subscription = Subscription.objects.select_related("plan_version").get(customer=customer)

    report = stripe_sync_pending()
    v1.refresh_from_db()
    v2.refresh_from_db()

    assert report.subscriptions == 1
    remote = stripe_client().v1.subscriptions.retrieve(subscription.stripe_subscription_id)
    assert sorted(item.price.id for item in remote["items"].data) == sorted(
        [v2.stripe_base_price_id, Price.objects.get(plan_version=v1).stripe_price_id]
    )
    [update] = posted(stripe_on, f"/v1/subscriptions/{subscription.stripe_subscription_id}")
    assert update["proration_behavior"] == "none"
    assert StripeSubscriptionSync.objects.get().pending_plan_version == v2

    with time_machine.travel(subscription.current_period_end + timedelta(minutes=5), tick=False):
        stripe_on.close_period(subscription.stripe_subscription_id)
        subscription.refresh_from_db()
        assert subscription_roll_period(subscription=subscription, now=timezone.now())
        stripe_sync_pending()

    # No item changes after the renewal: they were right before it (only the metadata names the new version).
    [_, after_renewal] = posted(stripe_on, f"/v1/subscriptions/{subscription.stripe_subscription_id}")
    assert "items" not in after_renewal
    assert after_renewal["metadata"]["plan_version"] == str(v2.pk)


def test_a_locally_canceled_subscription_is_canceled_in_stripe(synced_customer, stripe_on):
    Subscription.objects.filter(customer=synced_customer).update(status="canceled")

    stripe_sync_pending()

    remote = stripe_client().v1.subscriptions.retrieve(synced_customer.subscription.stripe_subscription_id)
    assert remote.status == "canceled"


def test_without_a_key_stripe_is_not_connected(settings):
    settings.STRIPE_API_KEY = ""
    with pytest.raises(StripeNotConnected):
        stripe_client()


def test_a_version_stripe_refuses_is_reported_and_does_not_stop_the_others(stripe_on, pro_plan, make_plan):
    # A base fee finer than a cent: Stripe's licensed prices take whole minor units.
    make_plan(
        "bulk",
        base_fee="9.995",
        prices=[{"meter": "export", "model": "package", "package_size": "100", "package_amount": "5"}],
    )

    report = stripe_sync_pending()

    assert report.plan_versions == 1
    assert len(report.errors) == 1 and "9.995" in report.errors[0]
    assert Price.objects.get(meter__key="api_call").stripe_price_id
