"""POST /api/v1/events: the contract, and bad input answered with a clear 4xx and nothing written."""

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from tests.catalog_fixtures import event
from usage.models import DailyUsageRollup, PeriodUsage, UsageEvent

pytestmark = pytest.mark.django_db

URL = "/api/v1/events"


@pytest.fixture
def acme(pro_plan, make_customer):
    return make_customer("pro")


def nothing_written() -> bool:
    return not (
        UsageEvent.objects.exists() or PeriodUsage.objects.exists() or DailyUsageRollup.objects.exists()
    )


def test_a_single_event_object_is_accepted(api, acme):
    response = api.post(
        URL, event("one", quantity="2.5", user="ana", properties={"action": "chat"}), format="json"
    )
    assert response.status_code == 200
    [result] = response.json()["results"]
    assert result["status"] == "accepted"
    assert result["idempotency_key"] == "one"
    assert UsageEvent.objects.get(pk=result["id"]).quantity == 2.5


def test_a_batch_answers_each_event_in_order(api, acme):
    response = api.post(URL, {"events": [event("a"), event("b"), event("a")]}, format="json")
    assert [r["status"] for r in response.json()["results"]] == ["accepted", "accepted", "duplicate"]


def test_decimal_quantities_are_exact(api, acme):
    body = '{"idempotency_key": "d", "customer": "acme", "meter": "api_call", "quantity": 0.1}'
    api.post(URL, body, content_type="application/json")
    api.post(URL, {**event("e"), "quantity": "0.2"}, format="json")
    assert str(PeriodUsage.objects.get().quantity.normalize()) == "0.3"


def test_numbers_in_properties_are_stored_as_json_numbers(api, acme):
    body = (
        '{"idempotency_key": "p", "customer": "acme", "meter": "api_call",'
        ' "properties": {"temperature": 0.7, "tokens": 12, "nested": {"top_p": 0.95}}}'
    )
    response = api.post(URL, body, content_type="application/json")
    assert response.status_code == 200
    assert response.json()["results"][0]["status"] == "accepted"
    stored = UsageEvent.objects.get().properties
    assert stored == {"temperature": 0.7, "tokens": 12, "nested": {"top_p": 0.95}}


def test_a_property_number_too_large_to_store_is_rejected(api, acme):
    body = '{"idempotency_key": "p", "customer": "acme", "meter": "api_call", "properties": {"x": 1e400}}'
    response = api.post(URL, body, content_type="application/json")
    assert response.status_code == 400
    [problem] = response.json()["error"]["events"]
    assert problem["code"] == "invalid_properties"
    assert nothing_written()


def too_old():
    return (timezone.now() - timedelta(days=36)).isoformat()


def too_new():
    return (timezone.now() + timedelta(minutes=6)).isoformat()


BAD_EVENTS = [
    ({"customer": "acme", "meter": "api_call"}, "invalid_idempotency_key"),
    (event("k", quantity=-1), "invalid_quantity"),
    (event("k", quantity="lots"), "invalid_quantity"),
    (event("k", quantity=True), "invalid_quantity"),
    (event("k", quantity="1e400"), "out_of_range"),
    (event("k", quantity="0.0000001"), "invalid_quantity"),
    (event("k", customer=42), "invalid_customer"),
    (event("k", customer="nobody"), "unknown_customer"),
    (event("k", meter="teleport"), "unknown_meter"),
    (event("k", timestamp="yesterday"), "invalid_timestamp"),
    (event("k", timestamp="2026-11-01T10:00:00"), "invalid_timestamp"),
    (event("k", properties=["not", "an", "object"]), "invalid_properties"),
    (event("k", properties={"blob": "x" * 10_000}), "invalid_properties"),
    (event("k" * 300), "invalid_idempotency_key"),
    (event("k", user="u" * 500), "invalid_user"),
    (event("k", colour="red"), "invalid_event"),
    ("just a string", "invalid_event"),
]


@pytest.mark.parametrize(("bad_event", "code"), BAD_EVENTS)
def test_one_bad_event_rejects_the_whole_batch(api, acme, bad_event, code):
    response = api.post(URL, {"events": [event("good"), bad_event]}, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_batch"
    assert error["message"]
    assert error["events"] == [{"index": 1, "code": code, "message": error["events"][0]["message"]}]
    assert nothing_written()


@pytest.mark.parametrize("timestamp", [too_old, too_new])
def test_timestamps_outside_the_window_are_rejected(api, acme, timestamp):
    response = api.post(URL, event("t", timestamp=timestamp()), format="json")
    assert response.status_code == 400
    assert response.json()["error"]["events"][0]["code"] == "invalid_timestamp"
    assert nothing_written()


def test_timestamp_in_a_closed_period_is_rejected(api, acme):
    acme.subscription.current_period_start = timezone.now() - timedelta(hours=1)
    acme.subscription.save()
    response = api.post(
        URL, event("t", timestamp=(timezone.now() - timedelta(days=2)).isoformat()), format="json"
    )
    assert response.json()["error"]["events"][0]["code"] == "period_closed"


def test_more_than_1000_events_are_rejected(api, acme):
    response = api.post(URL, {"events": [event(f"e{i}") for i in range(1001)]}, format="json")
    assert response.status_code == 400
    assert "at most 1000" in response.json()["error"]["message"]
    assert nothing_written()


def test_exactly_1000_events_are_accepted(api, acme):
    response = api.post(URL, {"events": [event(f"e{i}") for i in range(1000)]}, format="json")
    assert response.status_code == 200
    assert PeriodUsage.objects.get().event_count == 1000


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("{not json", "malformed_json"),
        ("[1, 2]", "invalid_batch"),
        ('{"events": []}', "invalid_batch"),
        ('{"events": "many"}', "invalid_batch"),
    ],
)
def test_malformed_bodies_get_a_machine_readable_error(api, acme, body, code):
    response = api.post(URL, body, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert nothing_written()


def test_requests_without_a_valid_key_are_refused(acme):
    anonymous = APIClient()
    assert anonymous.post(URL, event("x"), format="json").status_code == 401
    anonymous.credentials(HTTP_AUTHORIZATION="Bearer sk_live_forged")
    response = anonymous.post(URL, event("x"), format="json")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert nothing_written()


def test_api_keys_are_stored_only_as_hashes(api_key):
    from billing_app.models import ApiKey

    stored = ApiKey.objects.get()
    assert api_key not in (stored.key_hash, stored.prefix)
    assert len(stored.key_hash) == 64


def test_the_largest_valid_batch_fits_and_a_larger_body_gets_a_json_413(api, acme):
    blob = "x" * 8000  # just under the 8 KB allowed per event
    largest = {"events": [event(f"e{i}", properties={"blob": blob}) for i in range(1000)]}
    assert api.post(URL, largest, format="json").status_code == 200

    too_large = {"events": [event(f"f{i}", properties={"blob": blob * 2}) for i in range(1000)]}
    response = api.post(URL, too_large, format="json")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
