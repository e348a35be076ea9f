"""The default soft limit: 80% of the median usage charges of the last three closed periods, when the customer
set no soft limit of their own and did not turn the default off."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing_app.customer_emails import customer_emails_send, limit_crossings_record
from customers.events import customer_event_announced
from customers.models import Customer, Notification, NotificationKind, SpendControls, Subscription
from customers.services import spend_controls_update
from customers.spend_limits import default_soft_limit_of
from plans.models import Meter
from tests.billing_app.conftest import calls, ingest
from usage.models import PeriodUsage
from usage.selectors import usage_period_summary

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("pro_plan")]


def with_closed_periods(customer: Customer, *charges: str) -> Customer:
    """Give ``customer`` closed periods before the current one that charged ``charges`` (oldest first).

    Written straight into the period totals, so the customer's stored default (none, computed when they
    were created) is marked not computed, as the migration leaves customers who had periods before it.
    """
    subscription = customer.subscription
    meter = Meter.objects.get(key="api_call")
    for age, cost in enumerate(reversed(charges), start=1):
        start = subscription.current_period_start - timedelta(days=31 * age)
        PeriodUsage.objects.create(
            customer=customer,
            meter=meter,
            period_start=start,
            period_end=start + timedelta(days=31),
            quantity=Decimal(100) + Decimal(cost) * 10,
            included_quantity=Decimal(100),
            cost=Decimal(cost),
            overage_amount=Decimal(cost),
        )
    SpendControls.objects.filter(customer=customer).update(default_soft_limit_period_start=None)
    return customer


def limits(api, external_id: str = "acme") -> dict:
    response = api.get(f"/api/v1/customers/{external_id}/limits")
    assert response.status_code == 200, response.json()
    return response.json()


# --- the rule ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("charges", "expected"),
    [
        ([], None),  # no closed period
        (["50"], "40"),
        (["100", "50"], "60"),  # newest first: the median of two is their mean, 75
        (["100", "10", "40"], "32"),
        (["100", "10", "40", "900"], "32"),  # only the last three count
        (["0", "0", "30"], None),  # a typical period charged nothing: a warning at zero would alarm
        (["12.345"], "9.88"),  # 9.876 rounded to the cent
    ],
)
def test_the_default_is_80_percent_of_the_median_of_the_last_three_closed_periods(charges, expected):
    default = default_soft_limit_of(period_charges=[Decimal(c) for c in charges], currency="usd")
    assert default == (Decimal(expected) if expected else None)


def test_the_default_is_rounded_to_the_currencys_minor_unit():
    assert default_soft_limit_of(period_charges=[Decimal("1001")], currency="jpy") == Decimal("801")


# --- what a customer gets ------------------------------------------------------------------------------


def test_a_customer_in_their_first_period_has_no_default(api, pro_plan, make_customer):
    make_customer("pro")
    body = limits(api)
    assert (body["default_soft_limit"], body["soft_limit_in_force"], body["soft_limit_source"]) == (
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("charges", "expected"),
    [
        (["50"], "40"),
        (["50", "100"], "60"),
        (["10", "100", "40"], "32"),
        (["900", "10", "100", "40"], "32"),
    ],
)
def test_one_to_four_closed_periods_give_the_median_of_the_last_three(api, make_customer, charges, expected):
    with_closed_periods(make_customer("pro"), *charges)

    body = limits(api)

    assert body["soft_limit"] is None  # the customer's own: still none
    assert body["default_soft_limit"] == expected
    assert body["soft_limit_in_force"] == expected
    assert body["soft_limit_source"] == "default"
    assert body["default_soft_limit_off"] is False


def test_the_usage_api_shows_the_default_in_its_limits(api, make_customer):
    with_closed_periods(make_customer("pro"), "10", "20", "30")

    body = api.get("/api/v1/customers/acme/usage").json()

    assert body["limits"]["soft_limit"] is None
    assert body["limits"]["default_soft_limit"] == "16"
    assert body["limits"]["soft_limit_in_force"] == "16"
    assert body["limits"]["soft_limit_source"] == "default"


def test_a_soft_limit_the_customer_set_wins(api, make_customer):
    with_closed_periods(make_customer("pro"), "10", "20", "30")

    response = api.put("/api/v1/customers/acme/limits", {"soft_limit": "5"}, format="json")

    body = response.json()
    assert (body["soft_limit"], body["soft_limit_in_force"], body["soft_limit_source"]) == (
        "5",
        "5",
        "customer",
    )
    assert body["default_soft_limit"] == "16"  # still said, for the customer who removes theirs


def test_turned_off_the_default_applies_no_more_and_can_be_turned_on_again(api, make_customer):
    with_closed_periods(make_customer("pro"), "10", "20", "30")

    off = api.put("/api/v1/customers/acme/limits", {"default_soft_limit_off": True}, format="json").json()
    assert off["default_soft_limit_off"] is True
    assert (off["soft_limit_in_force"], off["soft_limit_source"]) == (None, None)

    # A save that does not name the switch keeps the customer's choice.
    kept = api.put("/api/v1/customers/acme/limits", {"hard_limit": "100"}, format="json").json()
    assert kept["default_soft_limit_off"] is True

    on = api.put("/api/v1/customers/acme/limits", {"default_soft_limit_off": False}, format="json").json()
    assert (on["soft_limit_in_force"], on["soft_limit_source"]) == ("16", "default")


def test_a_bad_switch_value_is_a_400_that_changes_nothing(api, make_customer):
    with_closed_periods(make_customer("pro"), "10", "20", "30")

    response = api.put("/api/v1/customers/acme/limits", {"default_soft_limit_off": "maybe"}, format="json")

    assert response.status_code == 400
    assert response.json()["error"]["code"]
    assert SpendControls.objects.get().default_soft_limit_off is False


# --- the crossing -------------------------------------------------------------------------------------


def test_crossing_the_default_is_told_once_with_its_webhook(make_customer):
    customer = with_closed_periods(make_customer("pro"), "1", "2", "3")  # default: 1.60
    announced = []

    def listen(sender, event_type, customer, data, **kwargs):
        announced.append((event_type, data))

    customer_event_announced.connect(listen)
    try:
        ingest(*calls("a", 110))  # 10 calls past the allowance: $1.00, under the default
        assert not Notification.objects.filter(customer=customer).exists()
        ingest(*calls("b", 10))  # $2.00: crossed
        ingest(*calls("c", 10))  # $3.00: crossed already
    finally:
        customer_event_announced.disconnect(listen)

    [notification] = Notification.objects.filter(customer=customer, kind=NotificationKind.SOFT_LIMIT_CROSSED)
    assert notification.limit == Decimal("1.60")
    assert "default soft limit 1.60 USD" in notification.message
    soft = [data for event_type, data in announced if event_type == "customer.soft_limit_crossed"]
    assert soft == [
        {
            "limit": "1.6",
            "spend": "2",
            "currency": "usd",
            "period_start": customer.subscription.current_period_start.isoformat(),
        }
    ]


def test_no_crossing_when_the_default_is_off(make_customer):
    customer = with_closed_periods(make_customer("pro"), "1", "2", "3")
    spend_controls_update(
        customer=customer, soft_limit=None, hard_limit=None, block_overage=False, default_soft_limit_off=True
    )

    ingest(*calls("a", 130))

    assert not Notification.objects.filter(customer=customer).exists()
    assert limit_crossings_record() == 0


def test_turning_the_default_on_below_the_spend_is_caught_by_the_alerting_job(api, make_customer):
    customer = with_closed_periods(make_customer("pro"), "1", "2", "3")
    spend_controls_update(
        customer=customer, soft_limit=None, hard_limit=None, block_overage=False, default_soft_limit_off=True
    )
    ingest(*calls("a", 130))  # $3.00, past the default of 1.60 while it was off
    customer.email = "billing@acme.test"
    customer.save()

    api.put("/api/v1/customers/acme/limits", {"default_soft_limit_off": False}, format="json")

    assert customer_emails_send() == 1
    assert Notification.objects.get(customer=customer).limit == Decimal("1.60")


def test_the_page_warns_at_the_default(make_customer):
    customer = with_closed_periods(make_customer("pro"), "1", "2", "3")
    ingest(*calls("a", 120))  # $2.00

    spend = usage_period_summary(customer=customer).spend

    assert (spend.soft_limit, spend.default_soft_limit, spend.soft_limit_in_force) == (
        None,
        Decimal("1.60"),
        Decimal("1.60"),
    )
    assert spend.level == "warn"


# --- cost on the hot path -----------------------------------------------------------------------------


def test_the_default_is_computed_once_a_period_and_ingest_reads_no_more_for_it(make_customer):
    """Ingest compares spend with the stored default: after the period's first spend it costs no query, and
    a batch with the default in force reads as many statements as one with a soft limit the customer set."""
    with_closed_periods(make_customer("pro", external_id="acme"), "1", "2", "3")
    with_closed_periods(make_customer("pro", external_id="own"), "1", "2", "3")
    own = Customer.objects.get(external_id="own")
    spend_controls_update(customer=own, soft_limit=Decimal("1.60"), hard_limit=None, block_overage=False)

    def statements(customer: str, prefix: str, count: int) -> int:
        with CaptureQueriesContext(connection) as queries:
            ingest(*calls(prefix, count, customer=customer))
        return len(queries.captured_queries)

    # A customer's first batch reads what later ones keep (the plan's terms, their balance row).
    statements("acme", "warm", 1)
    statements("own", "warm", 1)
    # Within the allowance nothing is spent, so nothing can be crossed and the default is not read.
    assert statements("acme", "free", 99) == statements("own", "free", 99)
    # The first spend of the period reads the closed periods and stores the default: two statements, once.
    first = statements("acme", "first", 1)
    assert first == statements("own", "first", 1) + 2
    stored = SpendControls.objects.get(customer__external_id="acme")
    assert stored.default_soft_limit == Decimal("1.60")
    assert (
        stored.default_soft_limit_period_start
        == Subscription.objects.get(customer=stored.customer).current_period_start
    )

    assert statements("acme", "second", 1) == statements("own", "second", 1) == first - 2
    assert statements("acme", "batch", 50) == statements("own", "batch", 50)
