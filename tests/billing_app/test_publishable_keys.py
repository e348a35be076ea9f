"""Publishable keys: one customer's usage and checks from a browser, and nothing else."""

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from billing_app.models import ApiKey, ApiKeyKind, api_key_hash
from customers.models import Customer

pytestmark = pytest.mark.django_db


@pytest.fixture
def customers(api, pro_plan):
    for external_id in ("acme", "globex"):
        response = api.post(
            "/api/v1/customers",
            {"external_id": external_id, "name": external_id, "plan": "pro"},
            format="json",
        )
        assert response.status_code == 201, response.json()
    return Customer.objects.get(external_id="acme"), Customer.objects.get(external_id="globex")


@pytest.fixture
def browser(api, customers) -> APIClient:
    """What acme's frontend holds: a publishable key made by acme's backend over the API."""
    response = api.post("/api/v1/customers/acme/publishable-keys", {"name": "acme dashboard"}, format="json")
    assert response.status_code == 201, response.json()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {response.json()['key']}")
    return client


def _forbidden(response) -> None:
    assert response.status_code == 403, response.content
    error = response.json()["error"]
    assert error["code"] == "forbidden"
    assert error["message"]
    assert error["request_id"]


def test_a_publishable_key_is_made_over_the_api_and_stored_hashed(api, customers):
    response = api.post("/api/v1/customers/acme/publishable-keys", {}, format="json")

    assert response.status_code == 201
    body = response.json()
    assert body["object"] == "publishable_key"
    assert body["customer"] == "acme"
    assert body["key"].startswith("pk_live_")  # the suite runs with DEBUG off
    api_key = ApiKey.objects.get(pk=body["id"])
    assert api_key.kind == ApiKeyKind.PUBLISHABLE
    assert api_key.customer == customers[0]
    assert api_key.key_hash == api_key_hash(body["key"])
    assert body["key"] not in str(ApiKey.objects.values_list())


def test_a_publishable_key_reads_its_customers_usage_and_asks_checks(browser):
    usage = browser.get("/api/v1/customers/acme/usage")
    check = browser.post("/api/v1/check", {"customer": "acme", "meter": "api_call"}, format="json")

    assert usage.status_code == 200
    assert "meters" in usage.json()
    assert check.status_code == 200
    assert check.json()["allowed"] is True


def test_a_publishable_key_cannot_read_or_ask_about_another_customer(browser):
    _forbidden(browser.get("/api/v1/customers/globex/usage"))
    _forbidden(browser.post("/api/v1/check", {"customer": "globex", "meter": "api_call"}, format="json"))
    _forbidden(browser.post("/api/v1/check", {"meter": "api_call"}, format="json"))
    _forbidden(browser.post("/api/v1/check", ["acme"], format="json"))


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/api/v1/events", {"idempotency_key": "k", "customer": "acme", "meter": "api_call"}),
        ("post", "/api/v1/reservations", {"idempotency_key": "k", "customer": "acme", "meter": "api_call"}),
        ("post", "/api/v1/estimate", {"customer": "acme", "meter": "api_call"}),
        ("post", "/api/v1/customers", {"external_id": "initech", "name": "Initech"}),
        ("get", "/api/v1/customers", None),
        ("get", "/api/v1/customers/acme", None),
        ("post", "/api/v1/customers/acme/credits", {"amount": "100"}),
        ("post", "/api/v1/customers/acme/wallet/top-ups", {"amount": "100"}),
        ("put", "/api/v1/customers/acme/limits", {"hard_limit": "1"}),
        ("post", "/api/v1/customers/acme/subscription", {"plan": "pro"}),
        ("post", "/api/v1/customers/acme/publishable-keys", {}),
        ("get", "/api/v1/customers/acme/plan-comparison", None),
    ],
)
def test_a_publishable_key_cannot_write_list_or_read_anything_else(browser, method, path, body):
    _forbidden(getattr(browser, method)(path, body, format="json"))


def test_secret_keys_keep_full_access(api, customers):
    assert api.get("/api/v1/customers/globex/usage").status_code == 200
    assert api.get("/api/v1/customers/acme").status_code == 200


def test_the_command_makes_a_publishable_key_for_a_customer(customers, capsys):
    call_command("apikey_create", "--customer", "acme", "--publishable")

    raw_key = capsys.readouterr().out.strip()
    assert raw_key.startswith("pk_live_")
    api_key = ApiKey.objects.get(key_hash=api_key_hash(raw_key))
    assert (api_key.kind, api_key.customer, api_key.name) == (
        ApiKeyKind.PUBLISHABLE,
        customers[0],
        "Publishable key of acme",
    )


def test_the_command_makes_test_keys_on_a_development_server(customers, settings, capsys):
    settings.DEBUG = True
    call_command("apikey_create", "--customer", "acme", "--publishable")

    assert capsys.readouterr().out.startswith("pk_test_")


def test_a_publishable_key_has_a_customer_and_a_secret_key_has_none(customers):
    from django.db import IntegrityError

    with pytest.raises(IntegrityError):
        ApiKey.objects.create(name="x", prefix="pk", key_hash="a" * 64, kind=ApiKeyKind.PUBLISHABLE)


def test_staff_make_a_customers_publishable_key_in_admin(client, customers):
    from tests.customers.factories import UserFactory

    client.force_login(UserFactory(username="ops", is_staff=True, is_superuser=True))

    response = client.post(
        "/admin/billing_app/apikey/add/", {"name": "acme dashboard", "customer": customers[0].pk}, follow=True
    )

    assert response.status_code == 200
    api_key = ApiKey.objects.get(name="acme dashboard")
    assert (api_key.kind, api_key.customer, api_key.prefix[:8]) == (
        ApiKeyKind.PUBLISHABLE,
        customers[0],
        "pk_live_",
    )
    assert "Copy it now" in response.content.decode()
