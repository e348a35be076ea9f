"""POST /api/v1/events/{id}/corrections: the contract, dry runs, and bad input answered 4xx with nothing written."""

from datetime import timedelta

import pytest
import time_machine
from rest_framework.test import APIClient

from billing_app.models import ApiKey
from customers.services import subscription_roll_period
from tests.catalog_fixtures import event
from usage.models import CreditLedgerEntry, PeriodUsage, StripeUsageOutbox, UsageEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def over(api, pro_plan, make_customer):
    """Pro with 150 calls in one event: 50 past the allowance, $5."""
    make_customer("pro")
    response = api.post("/api/v1/events", event("b", quantity=150), format="json")
    return UsageEvent.objects.get(pk=response.json()["results"][0]["id"])


def url(target, query: str = "") -> str:
    return f"/api/v1/events/{target.pk if hasattr(target, 'pk') else target}/corrections{query}"


BODY = {"quantity": "120", "reason": "retries were counted twice", "idempotency_key": "fix-1"}


def test_a_correction_is_recorded_with_its_reason_and_author(api, over):
    response = api.post(url(over), BODY, format="json")

    assert response.status_code == 201
    body = response.json()
    assert body["object"] == "usage_correction" and body["status"] == "recorded"
    assert body["event"] == over.pk and body["corrected_quantity"] == "120"
    assert body["flags"] == [] and body["before"] is None and body["after"] is None
    correction = body["correction"]
    assert correction["quantity"] == "-30" and correction["corrects"] == over.pk
    assert correction["reason"] == "retries were counted twice"
    assert correction["corrected_by"].startswith("api key test backend (sk_")
    assert correction["cost"] == "-3" and correction["covered_by"]["overage"] == "-3"
    assert correction["customer"] == "acme" and correction["meter"] == "api_call"
    assert PeriodUsage.objects.get().quantity == 120
    listed = api.get("/api/v1/customers/acme/events").json()["data"]
    assert [row["id"] for row in listed] == [correction["id"], over.pk]


def test_the_same_request_again_answers_the_same_correction(api, over):
    first = api.post(url(over), BODY, format="json").json()

    again = api.post(url(over), BODY, format="json")

    assert again.status_code == 200
    assert again.json() == first
    assert UsageEvent.objects.count() == 2


def test_the_key_with_another_correction_is_refused(api, over):
    api.post(url(over), BODY, format="json")

    response = api.post(url(over), {**BODY, "quantity": "100"}, format="json")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "idempotency_key_reused"
    assert UsageEvent.objects.count() == 2


def test_a_dry_run_answers_the_charges_before_and_after_and_writes_nothing(api, over):
    ledger_rows = CreditLedgerEntry.objects.count()

    response = api.post(url(over, "?dry_run=true"), BODY, format="json")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "preview" and body["correction"]["id"] is None
    assert body["before"] == {
        "lines": [
            {"description": "Pro base fee", "meter": None, "quantity": None, "amount": "20.00"},
            {"description": "Api Call", "meter": "api_call", "quantity": "150", "amount": "5.00"},
        ],
        "total": "25.00",
    }
    assert body["after"]["lines"][1] == {
        "description": "Api Call",
        "meter": "api_call",
        "quantity": "120",
        "amount": "2.00",
    }
    assert body["after"]["total"] == "22.00"
    assert UsageEvent.objects.count() == 1
    assert CreditLedgerEntry.objects.count() == ledger_rows
    assert StripeUsageOutbox.objects.get().amount == 5
    assert PeriodUsage.objects.get().quantity == 150


def test_the_same_quantity_answers_unchanged_and_writes_nothing(api, over):
    response = api.post(url(over), {**BODY, "quantity": "150"}, format="json")

    assert response.status_code == 200
    assert response.json()["status"] == "unchanged" and response.json()["correction"] is None
    assert UsageEvent.objects.count() == 1


def test_a_closed_period_is_409_naming_the_credit_grant(api, over):
    subscription = over.customer.subscription
    with time_machine.travel(subscription.current_period_end + timedelta(hours=1)):
        subscription_roll_period(subscription=subscription)
        response = api.post(url(over), BODY, format="json")

    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "period_closed"
    assert "/api/v1/customers/{id}/credits" in error["message"]
    assert UsageEvent.objects.count() == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**BODY, "quantity": "-5"}, "quantity"),
        ({**BODY, "quantity": "abc"}, "quantity"),
        ({"quantity": "5", "idempotency_key": "k"}, "reason"),
        ({**BODY, "reason": ""}, "reason"),
        ({**BODY, "reason": "x" * 501}, "reason"),
        ({"quantity": "5", "reason": "r"}, "idempotency_key"),
        ({**BODY, "idempotency_key": "k" * 300}, "idempotency_key"),
    ],
)
def test_bad_input_is_400_naming_the_field(api, over, body, field):
    response = api.post(url(over), body, format="json")

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and field in error["fields"]
    assert UsageEvent.objects.count() == 1


def test_a_blank_reason_after_trimming_is_400(api, over):
    response = api.post(url(over), {**BODY, "reason": "   "}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"


@pytest.mark.parametrize("event_id", ["0", "abc", "99999999999999999999999", "-1", "１"])
def test_an_id_that_names_no_event_is_404(api, over, event_id):
    response = api.post(url(event_id), BODY, format="json")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_an_unknown_event_is_404(api, over):
    response = api.post(url(over.pk + 1000), BODY, format="json")
    assert response.status_code == 404


def test_a_correction_of_a_correction_is_400_naming_the_original(api, over):
    correction = api.post(url(over), BODY, format="json").json()["correction"]

    response = api.post(url(correction["id"]), {**BODY, "idempotency_key": "fix-2"}, format="json")

    assert response.status_code == 400
    assert f"event {over.pk}" in response.json()["error"]["message"]


@pytest.mark.parametrize("query", ["?dry_run=yes", "?dryrun=true"])
def test_a_bad_query_parameter_is_400(api, over, query):
    response = api.post(url(over, query), BODY, format="json")
    assert response.status_code == 400
    assert UsageEvent.objects.count() == 1


def test_a_publishable_key_may_not_correct(over):
    _, raw = ApiKey.generate_publishable(customer=over.customer)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")

    response = client.post(url(over), BODY, format="json")

    assert response.status_code == 403
    assert UsageEvent.objects.count() == 1
