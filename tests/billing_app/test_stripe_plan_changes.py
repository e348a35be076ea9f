"""Changes and cancellations invoice what was used: a plan change mid-period, a migration at renewal and a
cancellation, each run with the real SDK against the fake to the invoice Stripe finalizes.

The fake bills an item's meter only from when the item was added or moved to another price, and never the
usage of an item deleted before the period's invoice, as Stripe documents for meter prices: the old sync
(swap every item on a change) lost the usage of the period before the change.
"""

from collections import defaultdict
from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.db import transaction
from django.utils import timezone

from billing_app.models import StripeSubscriptionSync
from billing_app.stripe.carries import usage_carries_finalize
from billing_app.stripe.client import stripe_client
from billing_app.stripe.outbox import outbox_drain
from billing_app.stripe.reconciliation import reconciliation_run
from billing_app.stripe.sync.pending import stripe_sync_pending
from billing_app.stripe.sync.subscriptions import plan_version_items
from core.money import round_money
from customers.models import Customer, Subscription
from customers.services import subscription_roll_period
from tests.billing_app.conftest import calls, ingest
from tests.catalog_fixtures import event
from usage.models import UsageEvent
from usage.services import subscription_change

D = Decimal


def local_usage_lines(customer: Customer, period_start) -> dict[str, Decimal]:
    """Each meter's post-paid overage money in the period (plans priced in money), rounded once."""
    exact: dict[str, Decimal] = defaultdict(Decimal)
    for usage in UsageEvent.objects.filter(customer=customer, period_start=period_start).select_related(
        "meter"
    ):
        exact[usage.meter.key] += usage.overage_amount
    return {key: round_money(amount, "usd") for key, amount in exact.items() if amount}


def usage_lines(fake, invoice) -> dict[str, Decimal]:
    lines = {}
    for line in invoice["lines"]["data"]:
        if line["parent"]["type"] != "subscription_item_details" or not line["amount"]:
            continue
        price = fake.get(line["pricing"]["price_details"]["price"])
        lines[price["metadata"]["meter"]] = D(line["amount"]) / 100
    return lines


def invoice_item_lines(invoice) -> list[Decimal]:
    return [
        D(line["amount"]) / 100
        for line in invoice["lines"]["data"]
        if line["parent"]["type"] == "invoice_item_details"
    ]


def stripe_items(fake, subscription: Subscription) -> dict[str, str]:
    """The Stripe subscription's items: price id by Stripe meter id ("base" for the licensed price)."""
    remote = fake.get(subscription.stripe_subscription_id)
    return {
        item["price"]["recurring"].get("meter") or "base": item["price"]["id"]
        for item in remote["items"]["data"]
    }


@pytest.fixture
def starter_and_growth(make_plan):
    """Starter: $10 a month, calls at 10c, exports at $1. Growth: $40 a month, calls at 5c, no exports."""
    starter = make_plan(
        "starter",
        base_fee="10.00",
        prices=[
            {"meter": "api_call", "model": "per_unit", "unit_amount": "0.10"},
            {"meter": "export", "model": "per_unit", "unit_amount": "1.00"},
        ],
    )
    growth = make_plan(
        "growth", base_fee="40.00", prices=[{"meter": "api_call", "model": "per_unit", "unit_amount": "0.05"}]
    )
    return starter, growth


def test_a_mid_period_upgrade_invoices_the_old_plans_usage_and_the_prorated_base_fee(
    stripe_on, starter_and_growth, make_customer
):
    _, growth = starter_and_growth
    customer = make_customer("starter")
    assert not stripe_sync_pending().errors
    subscription = Subscription.objects.get(customer=customer)
    start, end = subscription.current_period_start, subscription.current_period_end
    halfway = start + (end - start) / 2
    with time_machine.travel(start + timedelta(days=1, minutes=30), tick=True):
        ingest(*calls("before", 30), event("export-1", meter="export", quantity=2))  # $3.00 and $2.00
        outbox_drain()

    with time_machine.travel(halfway, tick=False), transaction.atomic():
        subscription_change(customer=customer, plan_version=growth)
    with time_machine.travel(halfway + timedelta(minutes=1), tick=True):
        assert not stripe_sync_pending().errors
    with time_machine.travel(halfway + timedelta(days=1), tick=True):
        ingest(*calls("after", 40))  # 40 calls at Growth's 5c: $2.00
        outbox_drain()
    subscription.refresh_from_db()
    # Starter's $10 for half the period and Growth's $40 for the other half.
    assert round_money(subscription.period_base_fee(growth.base_fee), "usd") == D("25.00")
    with time_machine.travel(end + timedelta(minutes=1), tick=True):
        usage_carries_finalize()
        outbox_drain()
        [invoice] = stripe_on.close_period(subscription.stripe_subscription_id)

    assert local_usage_lines(customer, start) == {"api_call": D("5.00"), "export": D("2.00")}
    assert usage_lines(stripe_on, invoice) == {"api_call": D("5.00"), "export": D("2.00")}
    # Stripe charged Starter's $10 in advance; the change owes $15 more for the period.
    assert invoice_item_lines(invoice) == [D("15.00")]
    assert D(invoice["total"]) / 100 == D("22.00")


def test_the_item_of_a_meter_the_new_plan_dropped_stays_until_stripe_invoiced_it(
    stripe_on, starter_and_growth, make_customer
):
    starter, growth = starter_and_growth
    customer = make_customer("starter")
    stripe_sync_pending()
    subscription = Subscription.objects.get(customer=customer)
    export_meter = next(
        meter
        for meter in plan_version_items(starter).by_meter
        if meter not in plan_version_items(growth).by_meter
    )
    with (
        time_machine.travel(subscription.current_period_start + timedelta(days=3), tick=False),
        transaction.atomic(),
    ):
        subscription_change(customer=customer, plan_version=growth)
    with time_machine.travel(subscription.current_period_start + timedelta(days=3, minutes=1), tick=True):
        stripe_sync_pending()
    subscription.refresh_from_db()
    growth.refresh_from_db()

    items = stripe_items(stripe_on, subscription)
    assert export_meter in items
    assert items["base"] == growth.stripe_base_price_id
    assert not StripeSubscriptionSync.objects.get(subscription=subscription).complete

    with time_machine.travel(subscription.current_period_end + timedelta(minutes=2), tick=True):
        stripe_on.close_period(subscription.stripe_subscription_id)
        assert subscription_roll_period(subscription=subscription, now=timezone.now())
        assert not stripe_sync_pending().errors

    assert export_meter not in stripe_items(stripe_on, subscription)
    assert StripeSubscriptionSync.objects.get(subscription=subscription).complete


def test_a_migration_at_renewal_is_in_stripe_before_stripe_starts_the_period(
    stripe_on, make_plan, make_customer
):
    v1 = make_plan(
        "pro", base_fee="10.00", prices=[{"meter": "api_call", "model": "per_unit", "unit_amount": "0.10"}]
    )
    customer = make_customer("pro")
    stripe_sync_pending()
    v2 = make_plan(
        "pro",
        base_fee="20.00",
        prices=[
            {"meter": "api_call", "model": "per_unit", "unit_amount": "0.08"},
            {"meter": "export", "model": "per_unit", "unit_amount": "1.00"},
        ],
    )
    subscription = Subscription.objects.get(customer=customer)
    start, end = subscription.current_period_start, subscription.current_period_end
    with time_machine.travel(start + timedelta(days=1, minutes=30), tick=True):
        ingest(*calls("old", 10))  # $1.00 at v1's 10c
        outbox_drain()
        Subscription.objects.filter(pk=subscription.pk).update(pending_plan_version=v2)
        assert stripe_sync_pending().subscriptions == 1
    v2.refresh_from_db()

    # Before the renewal: the next period's base fee is v2's, the call meter keeps its item (its usage so far
    # stays billable), and the new meter has one.
    items = stripe_items(stripe_on, subscription)
    assert items["base"] == v2.stripe_base_price_id
    assert set(items) == {"base", *plan_version_items(v2).by_meter}
    assert items[next(iter(plan_version_items(v1).by_meter))] in set(plan_version_items(v1).by_meter.values())

    subscription.refresh_from_db()
    with time_machine.travel(end + timedelta(minutes=1), tick=True):
        [renewal] = stripe_on.close_period(subscription.stripe_subscription_id)
        assert subscription_roll_period(subscription=subscription, now=timezone.now())
        assert not stripe_sync_pending().errors
    assert usage_lines(stripe_on, renewal) == local_usage_lines(customer, start) == {"api_call": D("1.00")}
    assert invoice_item_lines(renewal) == []

    subscription.refresh_from_db()
    next_start, next_end = subscription.current_period_start, subscription.current_period_end
    with time_machine.travel(next_start + timedelta(days=1, minutes=30), tick=True):
        ingest(*calls("new", 10), event("export-new", meter="export", quantity=1))  # 80c and $1.00
        outbox_drain()
    with time_machine.travel(next_end + timedelta(minutes=1), tick=True):
        usage_carries_finalize()
        outbox_drain()
        [second] = stripe_on.close_period(subscription.stripe_subscription_id)
    expected = {"api_call": D("0.80"), "export": D("1.00")}
    assert local_usage_lines(customer, next_start) == expected
    assert usage_lines(stripe_on, second) == expected
    assert invoice_item_lines(second) == []


def test_a_cancellation_sends_all_usage_and_issues_a_final_invoice(stripe_on, make_plan, make_customer):
    make_plan("payg", prices=[{"meter": "api_call", "model": "per_unit", "unit_amount": "0.015"}])
    customer = make_customer("payg")
    stripe_sync_pending()
    subscription = Subscription.objects.get(customer=customer)
    with time_machine.travel(subscription.current_period_start + timedelta(days=2, minutes=30), tick=True):
        ingest(*calls("sent", 3))  # 4.5c: 4 sent, half a cent carried
        outbox_drain()
        ingest(*calls("queued", 2))  # 3c more, still in the outbox when the customer leaves
        Subscription.objects.filter(pk=subscription.pk).update(status="canceled")

        assert not stripe_sync_pending().errors

        refused = ingest(event("too-late"))
    assert refused.results[0].status == "refused" and refused.results[0].code == "subscription_canceled"
    remote = stripe_on.get(subscription.stripe_subscription_id)
    assert remote["status"] == "canceled"
    [final] = [
        invoice.to_dict() for invoice in stripe_client().v1.invoices.list({"subscription": remote["id"]})
    ]
    # 5 calls at 1.5c = 7.5c, rounded once: 8c on both sides.
    assert local_usage_lines(customer, subscription.current_period_start) == {"api_call": D("0.08")}
    assert usage_lines(stripe_on, final) == {"api_call": D("0.08")}
    assert final["status"] == "open"


def test_reconciliation_checks_only_customers_with_activity(stripe_on, pro_plan, make_customer):
    busy = make_customer("pro", external_id="busy")
    make_customer("pro", external_id="idle")
    stripe_sync_pending()
    ingest(*calls("busy", 130, customer="busy"))
    outbox_drain()
    busy.refresh_from_db()
    before = len(stripe_on.requests(method="GET"))

    with time_machine.travel(timezone.now() + timedelta(hours=1), tick=False):
        report = reconciliation_run()

    summaries = [
        request for request in stripe_on.requests(method="GET")[before:] if "event_summaries" in request.path
    ]
    assert summaries and all(request.params["customer"] == busy.stripe_customer_id for request in summaries)
    assert report.checked == len(summaries)
    with time_machine.travel(timezone.now() + timedelta(days=3), tick=False):
        assert reconciliation_run().checked == 0


@pytest.mark.parametrize("interval", ["month", "year"])
def test_stripe_holds_the_local_period_for_monthly_and_annual_plans(
    stripe_on, make_plan, make_customer, interval
):
    make_plan(
        "plan",
        base_fee="120.00",
        interval=interval,
        prices=[{"meter": "api_call", "model": "per_unit", "unit_amount": "0.10"}],
    )
    signup = timezone.now().replace(microsecond=250000) - timedelta(minutes=7)
    with time_machine.travel(signup, tick=False):
        customer = make_customer("plan")
    assert not stripe_sync_pending().errors  # minutes after signup

    subscription = Subscription.objects.get(customer=customer)
    remote = stripe_on.get(subscription.stripe_subscription_id)
    for item in remote["items"]["data"]:
        assert item["current_period_start"] == int(subscription.current_period_start.timestamp())
        assert item["current_period_end"] == int(subscription.current_period_end.timestamp())
    days = (subscription.current_period_end - subscription.current_period_start).days
    assert days in ((28, 29, 30, 31) if interval == "month" else (365, 366))
