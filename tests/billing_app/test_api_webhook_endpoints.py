"""POST, GET and DELETE /api/v1/webhook-endpoints: the secret shown once, clear refusals that write nothing."""

import pytest

from billing_app.models import WebhookEndpoint
from customers.events import CustomerEventType

pytestmark = pytest.mark.django_db

URL = "/api/v1/webhook-endpoints"


def test_an_endpoint_is_made_with_its_secret_shown_once(api):
    response = api.post(
        URL,
        {"url": "https://ops.example.com/billing", "events": ["customer.frozen", "wallet.low_balance"]},
        format="json",
    )

    assert response.status_code == 201, response.json()
    body = response.json()
    endpoint = WebhookEndpoint.objects.get(pk=body["id"])
    assert body["secret"] == endpoint.secret
    assert body["secret"].startswith("whsec_")
    assert body["events"] == ["customer.frozen", "wallet.low_balance"]
    assert body["enabled"] is True
    assert body["created"] == endpoint.created_at.isoformat()

    listed = api.get(URL).json()
    assert [row["id"] for row in listed["data"]] == [endpoint.pk]
    assert "secret" not in listed["data"][0]
    assert endpoint.secret not in str(listed)


def test_a_loopback_receiver_is_allowed(api):
    response = api.post(
        URL, {"url": "http://127.0.0.1:8080/hooks", "events": ["customer.frozen"]}, format="json"
    )

    assert response.status_code == 201


def test_an_unknown_event_type_is_refused_naming_the_valid_ones(api):
    response = api.post(URL, {"url": "https://ops.example.com", "events": ["invoice.paid"]}, format="json")

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "unknown_event_type"
    assert "invoice.paid" in error["message"]
    assert error["valid_events"] == list(CustomerEventType.values)
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"url": "ftp://ops.example.com", "events": ["customer.frozen"]}, "url"),
        ({"url": "https://user:pw@ops.example.com", "events": ["customer.frozen"]}, "url"),
        ({"url": "https://", "events": ["customer.frozen"]}, "url"),
        ({"url": "https://ops.example.com:port", "events": ["customer.frozen"]}, "url"),
        ({"url": "https://ops.example.com", "events": []}, "events"),
    ],
)
def test_an_invalid_endpoint_is_refused_and_nothing_is_written(api, body, param):
    response = api.post(URL, body, format="json")

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["param"] == param
    assert not WebhookEndpoint.objects.exists()


def test_an_endpoint_is_deleted_once(api):
    endpoint_id = api.post(
        URL, {"url": "https://ops.example.com", "events": ["customer.frozen"]}, format="json"
    ).json()["id"]

    deleted = api.delete(f"{URL}/{endpoint_id}")
    again = api.delete(f"{URL}/{endpoint_id}")

    assert deleted.status_code == 200
    assert deleted.json() == {"object": "webhook_endpoint", "id": endpoint_id, "deleted": True}
    assert again.status_code == 404
    assert again.json()["error"]["code"] == "not_found"
    assert not WebhookEndpoint.objects.exists()


def test_a_publishable_key_may_not_manage_endpoints(api, pro_plan, make_customer):
    from rest_framework.test import APIClient

    make_customer("pro")
    key = api.post("/api/v1/customers/acme/publishable-keys", {}, format="json").json()["key"]
    browser = APIClient()
    browser.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")

    assert browser.get(URL).status_code == 403
    assert (
        browser.post(
            URL, {"url": "https://x.example", "events": ["customer.frozen"]}, format="json"
        ).status_code
        == 403
    )
