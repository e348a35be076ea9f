"""A plan's limit on how fast a customer (or each of its users) may use a meter, counted in the suite's Redis.

The clock stands still at half past a minute (time-machine), so ``Retry-After`` is exact and moving the
clock is how a window ends.
"""

from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.utils import timezone

from customers.models import Customer
from plans.catalog import CatalogInvalid, catalog_parse
from plans.catalog.serialize import version_content_data
from plans.models import Entitlement, Meter, RateLimitScope
from tests.usage.test_concurrency import run_concurrently
from usage.models import Reservation, ReservationStatus, UsageEvent
from usage.rate_limits import RateLimited
from usage.services import reservation_create

CHECK = "/api/v1/check"
EVENTS = "/api/v1/events"
RESERVATIONS = "/api/v1/reservations"


@pytest.fixture
def half_past() -> datetime:
    """Half past a minute a little ahead, so the subscriptions the fixtures start at the real now have begun."""
    return (timezone.now() + timedelta(minutes=2)).replace(second=30, microsecond=0)


@pytest.fixture
def clock(half_past: datetime) -> Iterator[time_machine.Traveller]:
    with time_machine.travel(half_past, tick=False) as traveller:
        yield traveller


@pytest.fixture
def limited_plan(make_plan):
    """AI actions free, at most 3 a minute per customer; exports at most 2 a minute per user."""
    return make_plan(
        "limited",
        prices=[
            {"meter": "ai_action", "model": "per_unit", "unit_amount": "0.01"},
            {"meter": "export", "model": "per_unit", "unit_amount": "0.10"},
        ],
        entitlements=[
            {"feature": "ai_action", "rate_limit": {"per_minute": 3, "per": "customer"}},
            {"feature": "export", "rate_limit": {"per_minute": 2, "per": "user"}},
        ],
    )


@pytest.fixture
def acme(limited_plan, make_customer) -> Customer:
    return make_customer("limited")


def reserve(api, key: str, *, meter: str = "ai_action", user: str | None = None):
    body = {"customer": "acme", "meter": meter, "quantity": 1, "idempotency_key": key}
    if user:
        body["user"] = user
    return api.post(RESERVATIONS, body, format="json")


def events(api, *keys: str, meter: str = "ai_action", **fields):
    batch = [
        {"idempotency_key": key, "customer": "acme", "meter": meter, "quantity": 5, **fields} for key in keys
    ]
    return api.post(EVENTS, {"events": batch}, format="json").json()["results"]


# --- the catalog and the admin ---------------------------------------------------------------------------


def test_the_catalog_reads_and_writes_a_rate_limit(limited_plan):
    entitlement = Entitlement.objects.get(plan_version=limited_plan, feature="export")
    assert (entitlement.rate_limit_per_minute, entitlement.rate_limit_per) == (2, RateLimitScope.USER)

    written = version_content_data(
        catalog_parse(
            {
                "meters": [{"key": "ai_action", "name": "AI actions", "unit": "action"}],
                "plans": [
                    {
                        "code": "free",
                        "name": "Free",
                        "currency": "usd",
                        "interval": "month",
                        "base_fee": "0",
                        "prices": [],
                        "entitlements": [{"feature": "ai_action", "rate_limit": {"per_minute": 10}}],
                    }
                ],
            }
        )
        .plans[0]
        .version
    )
    assert written["entitlements"] == [
        {"feature": "ai_action", "enabled": True, "rate_limit": {"per_minute": 10, "per": "customer"}}
    ]


@pytest.mark.parametrize(
    ("rate_limit", "problem"),
    [
        ({"per_minute": 0}, "'per_minute' must be a whole number"),
        ({"per_minute": "10"}, "'per_minute' must be a whole number"),
        ({"per_minute": 10, "per": "team"}, "'per' is 'team'"),
        ({"per_minute": 10, "burst": 5}, "unknown key 'burst'"),
        (10, "'rate_limit' must be an object"),
    ],
)
def test_a_malformed_rate_limit_is_refused_by_the_catalog(rate_limit, problem):
    with pytest.raises(CatalogInvalid) as refusal:
        catalog_parse(
            {
                "meters": [],
                "plans": [
                    {
                        "code": "free",
                        "name": "Free",
                        "currency": "usd",
                        "interval": "month",
                        "base_fee": "0",
                        "prices": [],
                        "entitlements": [{"feature": "ai_action", "rate_limit": rate_limit}],
                    }
                ],
            }
        )
    assert problem in str(refusal.value)


# --- reservations and checks -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_reservations_past_the_rate_are_429_until_the_next_minute(api, acme, clock):
    assert [reserve(api, f"r{i}").status_code for i in range(3)] == [201, 201, 201]

    refused = reserve(api, "r3")
    assert refused.status_code == 429
    assert refused["Retry-After"] == "30"
    error = refused.json()["error"]
    assert (error["code"], error["meter"], error["limit"], error["retry_after"]) == (
        "rate_limited",
        "ai_action",
        "3",
        30,
    )
    assert Reservation.objects.count() == 3

    # A replayed reservation is answered as before, and does not count.
    assert reserve(api, "r0").status_code == 200

    clock.shift(timedelta(seconds=30))
    assert reserve(api, "r4").status_code == 201


@pytest.mark.django_db
def test_check_reads_the_rate_without_counting(api, acme, clock):
    for _ in range(5):
        check = api.post(CHECK, {"customer": "acme", "meter": "ai_action"}, format="json")
        assert (check.status_code, check.json()["allowed"]) == (200, True)
    for i in range(3):
        assert reserve(api, f"r{i}").status_code == 201

    full = api.post(CHECK, {"customer": "acme", "meter": "ai_action"}, format="json")
    assert full.status_code == 429
    assert full["Retry-After"] == "30"
    assert full.json()["error"]["code"] == "rate_limited"
    # Another meter without a limit on this customer's plan is not affected.
    other = api.post(CHECK, {"customer": "acme", "meter": "export", "user": "raj"}, format="json")
    assert other.status_code == 200


@pytest.mark.django_db
def test_a_limit_per_user_counts_each_user_apart(api, acme, clock):
    assert [reserve(api, f"raj{i}", meter="export", user="raj").status_code for i in range(3)] == [
        201,
        201,
        429,
    ]
    assert reserve(api, "mia0", meter="export", user="mia").status_code == 201

    blocked = api.post(CHECK, {"customer": "acme", "meter": "export", "user": "raj"}, format="json")
    free = api.post(CHECK, {"customer": "acme", "meter": "export", "user": "mia"}, format="json")
    assert (blocked.status_code, free.status_code) == (429, 200)


# --- events ----------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_events_past_the_rate_are_refused_and_not_recorded(api, acme, clock):
    results = events(api, "e0", "e1", "e2", "e3", "e4")

    assert [r["status"] for r in results] == ["accepted"] * 3 + ["refused"] * 2
    assert {r["code"] for r in results[3:]} == {"rate_limited"}
    assert UsageEvent.objects.count() == 3

    # A replay of recorded events is a duplicate, not a refusal, and counts nothing.
    assert [r["status"] for r in events(api, "e0", "e1")] == ["duplicate", "duplicate"]
    clock.shift(timedelta(seconds=30))
    assert [r["status"] for r in events(api, "e3", "e4", "e5", "e6")] == ["accepted"] * 3 + ["refused"]


@pytest.mark.django_db
def test_backdated_events_are_not_rate_limited(api, acme, clock):
    past_the_window = timezone.now() - timedelta(minutes=1, seconds=1)
    assert past_the_window >= acme.subscription.current_period_start

    results = events(api, *(f"h{i}" for i in range(6)), timestamp=past_the_window.isoformat())

    assert [r["status"] for r in results] == ["accepted"] * 6
    # The live rate is untouched by history.
    assert [reserve(api, f"r{i}").status_code for i in range(3)] == [201, 201, 201]


# --- exact under concurrency -----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_reservations_are_admitted_exactly_up_to_the_rate(limited_plan, make_customer, clock):
    """20 threads each reserve 1 AI action against 3 a minute: exactly 3 are held, 17 refused."""
    customer = make_customer("limited")
    meter = Meter.objects.get(key="ai_action")

    def attempt(index):
        try:
            reservation_create(
                customer=Customer.objects.get(pk=customer.pk),
                meter=meter,
                quantity=Decimal(1),
                idempotency_key=f"r{index}",
            )
            return "held"
        except RateLimited:
            return "rate_limited"

    outcomes = run_concurrently(20, attempt)

    assert outcomes.count("held") == 3
    assert outcomes.count("rate_limited") == 17
    assert Reservation.objects.filter(status=ReservationStatus.HELD).count() == 3
