"""The hand-written reads of the hot paths give the same objects the ORM would, in fewer statements."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from core.errors import NotFound
from customers.models import SpendControls, Subscription
from customers.services import customer_create
from plans.models import Meter
from usage.models import CustomerBalance
from usage.services import credit_grant_create, reservation_create, wallet_top_up
from usage.sql_reads import (
    consumption_rows_read,
    customer_and_meter,
    customer_for_decision,
    reservation_for_settling,
)

pytestmark = pytest.mark.django_db


def test_customer_comes_with_plan_balance_and_limits_in_one_statement(pro_plan, make_customer):
    wallet_top_up(customer=make_customer("pro", hard_limit=Decimal("50")), amount=Decimal(5))

    with CaptureQueriesContext(connection) as queries:
        customer = customer_for_decision("acme")
        assert customer.subscription.plan_version == pro_plan
        assert customer.subscription.customer is customer
        assert customer.balance.wallet_balance == Decimal(5)
        assert customer.spend_controls.hard_limit == Decimal("50")

    assert len(queries) == 1


def test_customer_and_meter_come_in_one_round_trip(pro_plan, make_customer):
    make_customer("pro")

    with CaptureQueriesContext(connection) as queries:
        customer, meter = customer_and_meter("acme", "api_call")
        assert customer.subscription.plan_version == pro_plan
        assert meter == Meter.objects.get(key="api_call")

    assert len(queries) == 2  # the round trip, then the ORM's meter above


def test_an_unknown_customer_is_reported_before_an_unknown_meter(pro_plan, make_customer):
    make_customer("pro")
    with pytest.raises(NotFound) as unknown_both:
        customer_and_meter("nobody", "no_meter")
    with pytest.raises(NotFound) as unknown_meter:
        customer_and_meter("acme", "no_meter")

    assert (unknown_both.value.details, unknown_meter.value.details) == (
        {"param": "customer"},
        {"param": "meter"},
    )


def test_missing_related_rows_read_as_missing_without_a_query(pro_plan):
    customer_create(external_id="bare", name="Bare")
    SpendControls.objects.filter(customer__external_id="bare").delete()  # as for customers made before limits

    customer = customer_for_decision("bare")
    with CaptureQueriesContext(connection) as queries:
        for relation, model in (
            ("subscription", Subscription),
            ("balance", CustomerBalance),
            ("spend_controls", SpendControls),
        ):
            with pytest.raises(model.DoesNotExist):
                getattr(customer, relation)

    assert len(queries) == 0


def test_check_for_a_customer_without_subscription_is_a_409(api, pro_plan):
    customer_create(external_id="bare", name="Bare")

    response = api.post("/api/v1/check", {"customer": "bare", "meter": "api_call"}, format="json")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "no_subscription"


def test_reservation_for_settling_carries_meter_member_and_customer(credits_plan, make_customer):
    customer = make_customer("credits")
    credit_grant_create(customer=customer, amount=Decimal(10))
    held, _ = reservation_create(
        customer=customer,
        meter=Meter.objects.get(key="workflow_run"),
        quantity=Decimal(2),
        idempotency_key="r1",
        user="ada",
        properties={"complexity": "standard", "temperature": 0.7},
    )

    with CaptureQueriesContext(connection) as queries:
        reservation = reservation_for_settling(str(held.pk))
        assert (reservation.meter.key, reservation.member.external_id) == ("workflow_run", "ada")
        assert reservation.customer.subscription.plan_version == credits_plan
        assert reservation.properties == {"complexity": "standard", "temperature": 0.7}
        assert reservation.held_credits == Decimal(10)

    assert len(queries) == 1  # two statements, one round trip


def test_grants_without_expiry_are_drawn_after_expiring_ones_of_the_same_priority(
    credits_plan, make_customer
):
    customer = make_customer("credits")
    now = timezone.now()
    forever, _ = credit_grant_create(customer=customer, amount=Decimal(1), priority=10)
    later, _ = credit_grant_create(
        customer=customer, amount=Decimal(1), priority=10, expires_at=now + timedelta(days=9)
    )
    sooner, _ = credit_grant_create(
        customer=customer, amount=Decimal(1), priority=10, expires_at=now + timedelta(days=2)
    )
    first, _ = credit_grant_create(customer=customer, amount=Decimal(1), priority=5)

    rows = consumption_rows_read(subscriptions=[customer.subscription], now=timezone.now())[customer.pk]

    assert [grant.pk for grant in rows.grants] == [first.pk, sooner.pk, later.pk, forever.pk]
