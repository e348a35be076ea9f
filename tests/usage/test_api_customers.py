"""The customer endpoints of the API: accounts, subscriptions, credits, wallet, limits, and the schema."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from core.money import ISO_4217_CURRENCIES
from customers.models import Customer, SpendControls
from usage.models import CreditGrant, CreditLedgerEntry, CustomerBalance, LedgerEntryKind

pytestmark = pytest.mark.django_db


@pytest.fixture
def acme(api, pro_plan):
    response = api.post(
        "/api/v1/customers",
        {"external_id": "acme", "name": "Acme AI", "email": "billing@acme.example", "plan": "pro"},
        format="json",
    )
    assert response.status_code == 201, response.json()
    return response.json()


def test_create_customer_subscribes_to_the_latest_published_version(acme):
    assert acme["external_id"] == "acme"
    assert acme["currency"] == "usd"
    assert acme["subscription"]["plan"] == "pro"
    assert acme["subscription"]["plan_version"] == 1
    assert acme["limits"] == {
        "soft_limit": None,
        "hard_limit": None,
        "block_overage": False,
        "default_soft_limit": None,  # no closed period yet
        "default_soft_limit_off": False,
        "soft_limit_in_force": None,
        "soft_limit_source": None,
        "meter_limits": {},
    }
    assert acme["wallet_balance"] == "0.00"  # a balance: the currency's minor-unit places


def test_creating_the_same_customer_twice_is_a_conflict(api, acme):
    response = api.post("/api/v1/customers", {"external_id": "acme", "name": "Again"}, format="json")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"
    assert Customer.objects.count() == 1


def test_unknown_plan_is_404_and_creates_nothing(api, pro_plan):
    response = api.post(
        "/api/v1/customers", {"external_id": "x", "name": "X", "plan": "platinum"}, format="json"
    )
    assert response.status_code == 404
    assert not Customer.objects.exists()


def test_get_customer(api, acme):
    assert api.get("/api/v1/customers/acme").json()["name"] == "Acme AI"
    missing = api.get("/api/v1/customers/nobody")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


def test_change_plan_moves_to_the_new_plans_latest_version(api, acme, make_plan):
    make_plan(
        "team", base_fee="99.00", prices=[{"meter": "api_call", "model": "per_unit", "unit_amount": "0.05"}]
    )
    response = api.post("/api/v1/customers/acme/subscription", {"plan": "team"}, format="json")
    assert response.status_code == 200
    assert response.json()["plan"] == "team"


def test_credit_grant_is_recorded_in_the_ledger(api, acme):
    expires = (timezone.now() + timedelta(days=30)).isoformat()
    response = api.post(
        "/api/v1/customers/acme/credits",
        {"amount": "25.50", "kind": "promotional", "expires_at": expires, "priority": 10},
        format="json",
    )
    assert response.status_code == 201
    grant = response.json()
    assert (grant["amount"], grant["remaining"], grant["kind"], grant["unit"]) == (
        "25.5",
        "25.5",
        "promotional",
        "usd",
    )
    entry = CreditLedgerEntry.objects.get()
    assert (entry.kind, entry.amount) == (LedgerEntryKind.GRANT, Decimal("25.5"))
    assert api.get("/api/v1/customers/acme").json()["credits_remaining"] == {"usd": "25.5"}


def test_credit_grant_with_an_idempotency_key_is_granted_once(api, acme):
    body = {"amount": "10", "idempotency_key": "promo-2026-11"}
    first = api.post("/api/v1/customers/acme/credits", body, format="json")
    again = api.post("/api/v1/customers/acme/credits", body, format="json")
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert CreditGrant.objects.count() == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"amount": "-5"}, "amount"),
        ({"amount": "5", "kind": "free"}, "kind"),
        ({"amount": "5", "priority": 101}, "priority"),
    ],
)
def test_invalid_credit_grants_are_refused(api, acme, body, field):
    response = api.post("/api/v1/customers/acme/credits", body, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"
    assert field in response.json()["error"]["message"]
    assert not CreditGrant.objects.exists()


def test_expiry_in_the_past_is_refused(api, acme):
    past = (timezone.now() - timedelta(days=1)).isoformat()
    response = api.post("/api/v1/customers/acme/credits", {"amount": "5", "expires_at": past}, format="json")
    assert response.status_code == 400
    assert not CreditGrant.objects.exists()


def test_wallet_top_up(api, acme):
    response = api.post("/api/v1/customers/acme/wallet/top-ups", {"amount": "100.00"}, format="json")
    assert response.status_code == 201
    assert response.json() == {"wallet_balance": "100.00", "currency": "usd"}
    assert CustomerBalance.objects.get().wallet_balance == 100


def test_limits_are_saved_and_apply_to_the_next_check(api, acme):
    response = api.put(
        "/api/v1/customers/acme/limits",
        {"soft_limit": "5", "hard_limit": "10", "block_overage": False},
        format="json",
    )
    assert response.json() == {
        "soft_limit": "5",
        "hard_limit": "10",
        "block_overage": False,
        "default_soft_limit": None,
        "default_soft_limit_off": False,
        "soft_limit_in_force": "5",
        "soft_limit_source": "customer",
        "meter_limits": {},
    }
    # 100 calls are included; 201 more at $0.10 would take usage charges to $20.10.
    check = api.post(
        "/api/v1/check", {"customer": "acme", "meter": "api_call", "quantity": 301}, format="json"
    )
    assert check.json()["code"] == "hard_limit_reached"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"soft_limit": "10", "hard_limit": "5"}, "hard_limit"),
        ({"soft_limit": "-1"}, "soft_limit"),
    ],
)
def test_invalid_limits_are_refused_and_nothing_changes(api, acme, body, field):
    response = api.put("/api/v1/customers/acme/limits", body, format="json")
    assert response.status_code == 400
    assert field in response.json()["error"]["message"].replace(" ", "_").lower()
    controls = SpendControls.objects.get()
    assert (controls.soft_limit, controls.hard_limit) == (None, None)


def test_usage_endpoint_answers_for_the_customer(api, acme):
    api.post(
        "/api/v1/events",
        {"idempotency_key": "e1", "customer": "acme", "meter": "api_call", "quantity": 150},
        format="json",
    )
    usage = api.get("/api/v1/customers/acme/usage")
    assert usage.status_code == 200
    [meter] = usage.json()["meters"]
    # 150 calls with 100 included: 50 over at $0.10.
    assert (meter["key"], meter["quantity"], meter["included_used"]) == ("api_call", "150", "100")
    assert (meter["cost"], meter["overage_amount"]) == ("5.00", "5.00")
    assert usage.json()["spend"]["spend"] == "5.00"


def test_openapi_schema_lists_the_contract(api):
    schema = api.get("/api/schema")
    assert schema.status_code == 200
    text = schema.content.decode()
    for path in (
        "/api/v1/events",
        "/api/v1/check",
        "/api/v1/reservations",
        "/api/v1/customers/{external_id}/limits",
    ):
        assert path in text


def test_the_schema_names_the_supported_currencies_as_an_enum(api):
    schema = api.get("/api/schema", {"format": "json"}).json()
    currency = schema["components"]["schemas"]["CustomerCreateInput"]["properties"]["currency"]
    [ref] = [part["$ref"] for part in currency["allOf"]]
    enum = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]["enum"]
    assert {"usd", "USD", "jpy", "EUR"} <= set(enum)
    assert "xau" not in enum
    assert len(enum) == len(set(enum)) == 2 * len(ISO_4217_CURRENCIES)


def test_a_currency_is_taken_as_the_schema_names_it_in_lower_or_upper_case(api, pro_plan):
    response = api.post(
        "/api/v1/customers", {"external_id": "x", "name": "X", "currency": "Eur"}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "currency"
    assert not Customer.objects.exists()


def test_request_schemas_refuse_what_validation_refuses(api):
    schemas = api.get("/api/schema", {"format": "json"}).json()["components"]["schemas"]
    name = schemas["CustomerCreateInput"]["properties"]["name"]
    assert (name["minLength"], name["pattern"]) == (1, r"\S")  # blank, or only spaces, is refused
    amount = schemas["CreditGrantInput"]["properties"]["amount"]["oneOf"][0]
    assert amount["minimum"] == 0  # no negative money
