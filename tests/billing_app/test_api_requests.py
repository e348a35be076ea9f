"""What every API request gets: a request id, JSON errors for unknown routes and crashes, and one transaction."""

import uuid

import pytest
from rest_framework.test import APIClient

from usage.api import views as api_views
from usage.models import Reservation

pytestmark = pytest.mark.django_db


@pytest.fixture
def acme(pro_plan, make_customer):
    return make_customer("pro")


def reservation_body(**extra):
    return {"customer": "acme", "meter": "api_call", "idempotency_key": "r1", **extra}


def test_every_api_response_has_a_request_id(api, acme):
    ok = api.get("/api/v1/customers/acme")
    missing = api.get("/api/v1/customers/nobody")
    assert uuid.UUID(ok["Request-Id"])
    assert ok["Request-Id"] != missing["Request-Id"]
    assert missing.json()["error"]["request_id"] == missing["Request-Id"]


def test_refused_requests_carry_the_request_id_too(acme):
    response = APIClient().get("/api/v1/customers/acme")
    assert response.status_code == 401
    assert response.json()["error"]["request_id"] == response["Request-Id"]


@pytest.mark.parametrize(
    "path", ["/api/v1/nothing-here", "/api/v1/customers/acme/", "/api/v1/customers/", "/api/v2/events"]
)
def test_unknown_api_routes_answer_a_json_404(api, acme, path):
    response = api.get(path)
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "not_found"
    assert error["request_id"] == response["Request-Id"]


def test_a_trailing_slash_is_named_in_the_404(api, acme):
    assert "trailing slash" in api.post("/api/v1/events/", {}, format="json").json()["error"]["message"]


def test_an_unsupported_method_answers_a_json_405(api, acme):
    response = api.delete("/api/v1/customers/acme")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert response.json()["error"]["request_id"] == response["Request-Id"]


def test_a_reservation_without_quantity_holds_one_unit(api, acme):
    response = api.post("/api/v1/reservations", reservation_body(), format="json")
    assert response.status_code == 201, response.json()
    assert response.json()["quantity"] == "1"
    assert Reservation.objects.get().quantity == 1


def test_a_crash_after_the_write_answers_json_500_and_leaves_no_hold(api, acme, monkeypatch):
    def broken_output(reservation):
        raise RuntimeError("the response could not be built")

    monkeypatch.setattr(api_views, "reservation_output", broken_output)
    api.raise_request_exception = False
    response = api.post("/api/v1/reservations", reservation_body(quantity="2"), format="json")
    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "internal_error"
    assert error["request_id"] == response["Request-Id"]
    assert not Reservation.objects.exists()


def test_an_error_answer_rolls_back_what_the_request_wrote(api, acme, monkeypatch):
    from core.errors import Conflict

    def conflicting_output(reservation):
        raise Conflict("refused after the write")

    monkeypatch.setattr(api_views, "reservation_output", conflicting_output)
    response = api.post("/api/v1/reservations", reservation_body(quantity="2"), format="json")
    assert response.status_code == 409
    assert not Reservation.objects.exists()
