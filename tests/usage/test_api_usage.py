"""GET /api/v1/customers/{id}/usage: the charges so far, the allowance left and past, the limits and who drives
usage, from the same selectors as the usage page."""

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone
from rest_framework.test import APIClient

from customers.models import Member
from tests.catalog_fixtures import event
from usage.selectors import usage_member_breakdown

pytestmark = pytest.mark.django_db


@pytest.fixture
def acme(api, pro_plan):
    for external_id in ("acme", "globex"):
        response = api.post(
            "/api/v1/customers",
            {"external_id": external_id, "name": external_id, "plan": "pro"},
            format="json",
        )
        assert response.status_code == 201, response.json()


def _send(api, *events) -> None:
    response = api.post("/api/v1/events", {"events": list(events)}, format="json")
    assert response.status_code == 200, response.json()
    assert {result["status"] for result in response.json()["results"]} == {"accepted"}


def _usage(client, customer: str = "acme") -> dict:
    response = client.get(f"/api/v1/customers/{customer}/usage")
    assert response.status_code == 200, response.json()
    return response.json()


def test_the_charges_so_far_are_the_base_fee_and_each_meters_usage(api, acme):
    _send(api, event("e1", quantity=150))  # 100 included, 50 at $0.10

    usage = _usage(api)

    assert usage["charges"] == {
        "lines": [
            {"description": "Pro base fee", "meter": None, "quantity": None, "amount": "20.00"},
            {"description": "Api Call", "meter": "api_call", "quantity": "150", "amount": "5.00"},
        ],
        "total": "25.00",
    }
    # The page's projection, also at the top where the contract names it.
    assert usage["projected_total"] == usage["projection"]["total"]
    assert usage["meters"][0]["cost"] == "5.00"  # every field of before is still there


def test_charge_lines_are_rounded_to_the_minor_unit_and_the_total_is_their_sum(api, make_plan):
    make_plan(
        "yen",
        currency="jpy",
        base_fee="1000",
        prices=[{"meter": "api_call", "model": "per_unit", "unit_amount": "1.5"}],
    )
    api.post("/api/v1/customers", {"external_id": "tokyo", "name": "Tokyo", "plan": "yen"}, format="json")
    _send(api, *(event(f"e{n}", customer="tokyo") for n in range(3)))  # 4.5 yen

    charges = _usage(api, "tokyo")["charges"]

    assert [line["amount"] for line in charges["lines"]] == ["1000", "5"]
    assert charges["total"] == "1005"


def test_remaining_and_overage_are_units_of_the_periods_allowance(api, acme):
    _send(api, event("e1", quantity=60))
    [meter] = _usage(api)["meters"]
    assert (meter["included"], meter["remaining"], meter["overage"]) == ("100", "40", "0")

    # An open hold pins allowance: what it took is not left for other usage.
    hold = api.post(
        "/api/v1/reservations",
        {"customer": "acme", "meter": "api_call", "quantity": 30, "idempotency_key": "r1"},
        format="json",
    )
    assert hold.status_code == 201, hold.json()
    [meter] = _usage(api)["meters"]
    assert (meter["quantity"], meter["remaining"], meter["overage"]) == ("60", "10", "0")

    api.post(f"/api/v1/reservations/{hold.json()['id']}/release", format="json")
    _send(api, event("e2", quantity=90))
    [meter] = _usage(api)["meters"]
    assert (meter["quantity"], meter["remaining"], meter["overage"]) == ("150", "0", "50")


def test_after_a_plan_change_units_billed_before_it_are_not_taken_from_the_new_allowance(
    api, acme, make_plan
):
    make_plan(
        "team", prices=[{"meter": "api_call", "model": "per_unit", "unit_amount": "0.05", "included": "500"}]
    )
    _send(api, event("e1", quantity=150))  # 100 included, 50 billed on pro
    with time_machine.travel(timezone.now() + timedelta(days=10)):
        assert (
            api.post("/api/v1/customers/acme/subscription", {"plan": "team"}, format="json").status_code
            == 200
        )
        [meter] = _usage(api)["meters"]

    included = float(meter["included"])
    assert 100 < included < 600  # pro's 100 taken, plus team's 500 for the time left
    assert float(meter["remaining"]) == pytest.approx(included - 100)
    assert meter["overage"] == "50"
    assert float(meter["included_used"]) + float(meter["remaining"]) == pytest.approx(included)


def test_limits_are_the_customers_spend_limits(api, acme):
    assert _usage(api)["limits"] == {
        "soft_limit": None,
        "hard_limit": None,
        "block_overage": False,
        "default_soft_limit": None,  # the first period: no closed period yet
        "default_soft_limit_off": False,
        "soft_limit_in_force": None,
        "soft_limit_source": None,
        "meter_limits": {},
    }
    api.put(
        "/api/v1/customers/acme/limits",
        {"soft_limit": "50", "hard_limit": "100", "block_overage": True},
        format="json",
    )
    limits = api.get("/api/v1/customers/acme/limits").json()
    assert limits == {
        "soft_limit": "50",
        "hard_limit": "100",
        "block_overage": True,
        "default_soft_limit": None,
        "default_soft_limit_off": False,
        "soft_limit_in_force": "50",
        "soft_limit_source": "customer",
        "meter_limits": {},
    }
    assert _usage(api)["limits"] == limits


def test_members_are_the_teams_usage_added_up_per_user(api, acme):
    _send(
        api,
        event("e1", quantity=100, user="ann"),  # the allowance: free
        event("e2", quantity=40, user="bob"),  # $4
        event("e3", quantity=20, user="bob"),  # $2
        event("e4", quantity=10),  # $1, sent without a user
        event("e5", quantity=5, user="ann", properties={"cached": True}),  # a cache hit: recorded, not billed
    )
    Member.objects.filter(external_id="ann").update(name="Ann Lee")

    members = _usage(api)["members"]

    assert members == [
        {"user": "bob", "name": "", "meters": {"api_call": "60"}, "amount": "6.00"},
        {"user": None, "name": "", "meters": {"api_call": "10"}, "amount": "1.00"},
        {"user": "ann", "name": "Ann Lee", "meters": {"api_call": "105"}, "amount": "0.00"},
    ]
    # The page's "who drives usage" table, added up: the same numbers, one way.
    acme_customer = Member.objects.get(external_id="ann").customer
    page_lines = usage_member_breakdown(customer=acme_customer)
    assert {(line.member_external_id, f"{line.quantity.normalize():f}") for line in page_lines} == {
        (member["user"], member["meters"]["api_call"]) for member in members
    }


def test_a_publishable_key_reads_its_customers_new_fields_and_no_one_elses(api, acme):
    _send(
        api, event("a1", quantity=150, user="ann"), event("g1", customer="globex", quantity=300, user="zed")
    )
    api.put("/api/v1/customers/globex/limits", {"hard_limit": "999"}, format="json")
    made = api.post("/api/v1/customers/acme/publishable-keys", {}, format="json")
    browser = APIClient()
    browser.credentials(HTTP_AUTHORIZATION=f"Bearer {made.json()['key']}")

    usage = _usage(browser)

    assert [member["user"] for member in usage["members"]] == ["ann"]
    assert usage["charges"]["total"] == "25.00"
    assert usage["limits"]["hard_limit"] is None
    assert "zed" not in str(usage)
    assert browser.get("/api/v1/customers/globex/usage").status_code == 403
