"""Each statement written out for the hot paths answers what the ORM query it replaces answers.

The data sits where the two could part: instants given in other time zones, grants and holds that end
exactly at "now" or a microsecond either side, rows of the previous period, voided and used-up grants,
settled holds, other customers' rows. Each test runs the hand-written read and the ORM's, and compares.
"""

import uuid
from datetime import UTC, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.core.exceptions import ObjectDoesNotExist
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from customers.models import Customer
from plans.models import Meter
from tests.usage.factories import CreditGrantFactory, PeriodUsageFactory
from usage.ingest import events_recorded
from usage.locks import customer_consumption_for_update
from usage.models import CreditGrant, PeriodUsage, Reservation, ReservationStatus, UsageEvent
from usage.services import wallet_top_up
from usage.sql_reads import (
    active_holds_read,
    consumption_rows_read,
    customer_for_decision,
    meter_by_key,
    reservation_for_settling,
)

pytestmark = pytest.mark.django_db

TOKYO = ZoneInfo("Asia/Tokyo")
HONOLULU = ZoneInfo("Pacific/Honolulu")
TICK = timedelta(microseconds=1)


def field_values(instance) -> dict:
    return {field.attname: getattr(instance, field.attname) for field in instance._meta.concrete_fields}


@pytest.fixture
def two_customers(pro_plan, make_customer) -> tuple[Customer, Customer]:
    return make_customer("pro", "acme", soft_limit=Decimal("5"), hard_limit=Decimal("9.5")), make_customer(
        "pro", "globex"
    )


def related_values(instance, name: str) -> dict | None:
    try:
        return field_values(getattr(instance, name))
    except ObjectDoesNotExist:
        return None


@pytest.mark.parametrize("external_id", ["acme", "globex"])  # with a wallet and limits; with neither
def test_customer_for_decision_is_the_orm_customer_with_its_relations(two_customers, external_id):
    wallet_top_up(customer=two_customers[0], amount=Decimal("12.5"))
    customer = customer_for_decision(external_id)
    expected = Customer.objects.select_related("subscription__plan_version", "balance", "spend_controls").get(
        external_id=external_id
    )

    assert field_values(customer) == field_values(expected)
    for relation in ("subscription", "balance", "spend_controls"):
        assert related_values(customer, relation) == related_values(expected, relation)
    assert field_values(customer.subscription.plan_version) == field_values(
        expected.subscription.plan_version
    )


def test_meter_by_key_is_the_orm_meter(two_customers):
    assert field_values(meter_by_key("api_call")) == field_values(Meter.objects.get(key="api_call"))


def test_usable_grants_are_the_orm_usable_grants_in_draw_order(two_customers):
    acme, globex = two_customers
    now = timezone.now()
    earlier = now - timedelta(hours=1)
    # Ends, starts and voids at the edges, given in other time zones than the database's UTC.
    for expires_at in (now, now - TICK, now + TICK, None, (now + timedelta(days=3)).astimezone(TOKYO)):
        CreditGrantFactory(customer=acme, expires_at=expires_at, priority=50, effective_at=earlier)
    CreditGrantFactory(customer=acme, effective_at=(now + TICK).astimezone(HONOLULU))
    CreditGrantFactory(customer=acme, effective_at=now.astimezone(TOKYO), priority=10)
    CreditGrantFactory(customer=acme, expired_at=earlier, effective_at=earlier)
    CreditGrantFactory(customer=acme, amount=Decimal(5), remaining=Decimal(0), effective_at=earlier)
    CreditGrantFactory(
        customer=acme,
        priority=50,
        effective_at=earlier,
        expires_at=(now + timedelta(days=3)).astimezone(HONOLULU),
    )
    CreditGrantFactory(customer=globex, effective_at=earlier)

    rows = consumption_rows_read(subscriptions=[acme.subscription], now=now)[acme.pk]
    expected = CreditGrant.objects.usable(now).in_draw_order().filter(customer=acme)

    assert [grant.pk for grant in rows.grants] == [grant.pk for grant in expected]
    assert [field_values(grant) for grant in rows.grants] == [field_values(grant) for grant in expected]
    assert len(rows.grants) == 5


def _hold(
    customer: Customer, meter: Meter, *, expires_at, status=ReservationStatus.HELD, quantity="2"
) -> Reservation:
    return Reservation.objects.create(
        customer=customer,
        meter=meter,
        idempotency_key=uuid.uuid4().hex,
        quantity=Decimal(quantity),
        unit="usd",
        held_cost=Decimal(quantity) / 10,
        held_wallet=Decimal(quantity) / 10,
        status=status,
        expires_at=expires_at,
        created_at=timezone.now(),
    )


def _orm_hold_sums(holds) -> list[tuple]:
    sums = (
        holds.values("meter_id", "unit")
        .annotate(q=Sum("quantity"), c=Sum("held_cost"), cr=Sum("held_credits"), w=Sum("held_wallet"))
        .order_by("meter_id", "unit")
    )
    return [(row["meter_id"], row["unit"], row["q"], row["c"], row["cr"], row["w"]) for row in sums]


def test_active_holds_are_the_orm_active_holds_summed(two_customers):
    acme, globex = two_customers
    meter = Meter.objects.get(key="api_call")
    now = timezone.now()
    for expires_at in (
        now,
        now - TICK,
        (now + TICK).astimezone(TOKYO),
        (now + timedelta(minutes=5)).astimezone(HONOLULU),
    ):
        _hold(acme, meter, expires_at=expires_at)
    _hold(
        acme, meter, expires_at=now + timedelta(minutes=5), status=ReservationStatus.COMMITTED, quantity="7"
    )
    _hold(acme, meter, expires_at=now + timedelta(minutes=5), status=ReservationStatus.RELEASED, quantity="9")
    excluded = _hold(acme, meter, expires_at=now + timedelta(minutes=5), quantity="3")
    _hold(globex, meter, expires_at=now + timedelta(minutes=5), quantity="11")

    def as_tuples(rows) -> list[tuple]:
        return sorted((r.meter_id, r.unit, r.quantity, r.cost, r.credits, r.wallet) for r in rows)

    active = Reservation.objects.active(now).filter(customer=acme)
    assert as_tuples(active_holds_read(customer=acme, now=now)) == _orm_hold_sums(active)
    read = consumption_rows_read(
        subscriptions=[acme.subscription], now=now, exclude_reservation_id=excluded.pk
    )
    assert as_tuples(read[acme.pk].holds) == _orm_hold_sums(active.exclude(pk=excluded.pk))
    assert _orm_hold_sums(active.exclude(pk=excluded.pk))[0][2] == Decimal(4)  # the two still running


def test_period_totals_are_the_current_periods_rows_whatever_the_offset(two_customers):
    acme, globex = two_customers
    subscription = acme.subscription
    meter = Meter.objects.get(key="api_call")
    start, end = subscription.current_period_start, subscription.current_period_end
    previous = start - (end - start)
    PeriodUsageFactory(
        customer=acme, meter=meter, period_start=previous, period_end=start, quantity=Decimal(40)
    )
    PeriodUsageFactory(customer=acme, meter=meter, quantity=Decimal(3))
    PeriodUsageFactory(customer=globex, meter=meter, quantity=Decimal(5))
    # The subscription's start as another zone gives it: the same instant, so the same rows.
    subscription.current_period_start = start.astimezone(TOKYO)

    rows = consumption_rows_read(subscriptions=[subscription], now=timezone.now())[acme.pk].period_rows
    expected = PeriodUsage.objects.filter(customer=acme, period_start=start.astimezone(UTC))

    assert [field_values(row) for row in rows] == [field_values(row) for row in expected]
    assert [row.quantity for row in rows] == [Decimal(3)]


def test_the_lock_reads_the_balance_and_rows_the_orm_reads(two_customers):
    acme, _ = two_customers
    now = timezone.now()
    CreditGrantFactory(customer=acme, expires_at=now + timedelta(days=1))
    with transaction.atomic():
        locked = customer_consumption_for_update(customer=acme, subscription=acme.subscription, now=now)
    assert field_values(locked.balance) == field_values(acme.balance.__class__.objects.get(customer=acme))
    assert [g.pk for g in locked.rows.grants] == list(
        CreditGrant.objects.usable(now).in_draw_order().filter(customer=acme).values_list("pk", flat=True)
    )


def test_reservation_for_settling_is_the_orm_reservation_with_its_relations(two_customers):
    acme, _ = two_customers
    meter = Meter.objects.get(key="api_call")
    hold = _hold(acme, meter, expires_at=timezone.now() + timedelta(minutes=5))

    read = reservation_for_settling(str(hold.pk))
    expected = Reservation.objects.select_related("meter", "member", "customer__subscription").get(pk=hold.pk)

    assert field_values(read) == field_values(expected)
    assert field_values(read.meter) == field_values(expected.meter)
    assert read.member is None and expected.member is None
    assert field_values(read.customer) == field_values(expected.customer)
    assert field_values(read.customer.subscription) == field_values(expected.customer.subscription)


def test_recorded_keys_are_the_orm_events_under_those_keys(api, two_customers):
    acme, globex = two_customers
    for customer, key in (("acme", "k1"), ("acme", "k2"), ("globex", "k1")):
        response = api.post(
            "/api/v1/events",
            {"idempotency_key": key, "customer": customer, "meter": "api_call"},
            format="json",
        )
        assert response.status_code == 200

    class Keyed:
        """An event sent again as it was recorded (its fingerprint too), or a new one."""

        def __init__(self, customer, key: str) -> None:
            self.idempotency_key = key
            recorded = UsageEvent.objects.filter(customer=customer, idempotency_key=key).first()
            self.fingerprint = recorded.fingerprint if recorded else ""

    found = events_recorded(
        {acme.pk: [Keyed(acme, "k1"), Keyed(acme, "k3")], globex.pk: [Keyed(globex, "k2")]}
    )
    expected = {
        (event.customer_id, event.idempotency_key): event.pk
        for event in UsageEvent.objects.filter(
            customer__in=[acme, globex], idempotency_key__in=["k1", "k2", "k3"]
        )
    }
    assert found == expected
    assert set(found) == {(acme.pk, "k1"), (acme.pk, "k2"), (globex.pk, "k1")}
