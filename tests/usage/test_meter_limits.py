"""A customer's own stop in units ("stop at 5,000,000 tokens this period"): set by API and page, refused at
the boundary exactly, also under concurrent reservations."""

from decimal import Decimal

import pytest

from customers.models import Customer, SpendControls
from customers.services import spend_controls_update
from plans.models import Meter
from tests.usage.test_concurrency import run_concurrently
from usage.errors import HardLimitReached
from usage.models import Reservation, ReservationStatus
from usage.services import reservation_create


@pytest.fixture
def acme(pro_plan, make_customer) -> Customer:
    return make_customer("pro")


def put_limits(api, body):
    return api.put("/api/v1/customers/acme/limits", body, format="json")


def test_meter_limit_is_saved_and_shown(api, acme):
    response = put_limits(api, {"meter_limits": {"api_call": "150"}})

    assert response.status_code == 200
    assert response.json()["meter_limits"] == {"api_call": "150"}
    assert api.get("/api/v1/customers/acme/limits").json()["meter_limits"] == {"api_call": "150"}
    assert api.get("/api/v1/customers/acme/usage").json()["limits"]["meter_limits"] == {"api_call": "150"}


def test_leaving_meter_limits_out_keeps_them_and_null_removes_one(api, acme):
    put_limits(api, {"meter_limits": {"api_call": "150"}})

    kept = put_limits(api, {"soft_limit": "5"})
    assert kept.json()["meter_limits"] == {"api_call": "150"}

    removed = put_limits(api, {"meter_limits": {"api_call": None}})
    assert removed.json()["meter_limits"] == {}
    assert SpendControls.objects.get().meter_limits == {}


def test_usage_stops_exactly_at_the_meter_limit(api, acme):
    put_limits(api, {"meter_limits": {"api_call": "150"}})

    first = api.post(
        "/api/v1/events",
        {"idempotency_key": "e1", "customer": "acme", "meter": "api_call", "quantity": 149},
        format="json",
    )
    assert first.json()["results"][0]["status"] == "accepted"
    check = api.post("/api/v1/check", {"customer": "acme", "meter": "api_call", "quantity": 1}, format="json")
    assert check.json()["allowed"] is True
    assert check.json()["remaining"] == "1"

    over = api.post(
        "/api/v1/reservations",
        {"customer": "acme", "meter": "api_call", "quantity": 2, "idempotency_key": "r1"},
        format="json",
    )
    assert over.status_code == 402
    error = over.json()["error"]
    assert (error["code"], error["meter"], error["limit"]) == ("hard_limit_reached", "api_call", "150")
    assert "upgrade" not in error  # the customer's own limit: another plan would not lift it

    at_limit = api.post(
        "/api/v1/reservations",
        {"customer": "acme", "meter": "api_call", "quantity": 1, "idempotency_key": "r2"},
        format="json",
    )
    assert at_limit.status_code == 201
    refused = api.post(
        "/api/v1/events",
        {"idempotency_key": "e2", "customer": "acme", "meter": "api_call", "quantity": 1},
        format="json",
    )
    [result] = refused.json()["results"]
    assert (result["status"], result["code"]) == ("refused", "hard_limit_reached")


def test_an_unknown_meter_is_refused_by_name_and_nothing_changes(api, acme):
    response = put_limits(api, {"soft_limit": "5", "meter_limits": {"api_call": "10", "no_such": "10"}})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unknown_meter"
    assert "no_such" in response.json()["error"]["message"]
    controls = SpendControls.objects.get()
    assert (controls.soft_limit, controls.meter_limits) == (None, {})


@pytest.mark.parametrize(
    ("limit", "code"),
    [
        ("0", "invalid_request"),
        ("-5", "invalid_request"),
        ("1.0000001", "invalid_request"),
        ("1e30", "out_of_range"),
    ],
)
def test_a_limit_that_is_not_a_positive_quantity_is_refused(api, acme, limit, code):
    response = put_limits(api, {"meter_limits": {"api_call": limit}})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert SpendControls.objects.get().meter_limits == {}


@pytest.mark.django_db(transaction=True)
def test_concurrent_reservations_hold_exactly_the_meter_limit(pro_plan, make_customer):
    """30 threads each reserve 1 call against a limit of 12: exactly 12 are held, the rest refused."""
    customer = make_customer("pro")
    spend_controls_update(
        customer=customer,
        soft_limit=None,
        hard_limit=None,
        block_overage=False,
        meter_limits={"api_call": Decimal(12)},
    )
    meter = Meter.objects.get(key="api_call")

    def reserve(index):
        try:
            reservation_create(
                customer=Customer.objects.get(pk=customer.pk),
                meter=meter,
                quantity=Decimal(1),
                idempotency_key=f"r{index}",
            )
            return "held"
        except HardLimitReached:
            return "refused"

    outcomes = run_concurrently(30, reserve)

    assert outcomes.count("held") == 12
    assert outcomes.count("refused") == 18
    assert Reservation.objects.filter(status=ReservationStatus.HELD).count() == 12
