"""The Django helpers: a view decorator that meters what a view answers, and a DRF permission that asks
``/check`` before a view runs. The views run in the test; the client they use talks to the live app."""

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import RequestFactory
from live_app import events_of, unreachable_url
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.test import APIRequestFactory
from rest_framework.views import APIView

from billing_client import Client
from billing_client.django import entitlement_required, metered_view
from customers.models import Customer


def customer_of(request: HttpRequest) -> str:
    return request.headers["X-Customer"]


def test_a_metered_view_records_one_event_per_successful_answer(client: Client, acme: Customer) -> None:
    @metered_view(
        client,
        meter="api_call",
        customer=customer_of,
        quantity=lambda request, response: int(response["X-Rows"]),
        properties={"action": "export"},
    )
    def export(request: HttpRequest, fail: bool = False) -> HttpResponse:
        if fail:
            return JsonResponse({"error": "broken"}, status=500)
        response = JsonResponse({"rows": 3})
        response["X-Rows"] = "3"
        return response

    requests = RequestFactory()
    assert export(requests.get("/export", headers={"X-Customer": "acme"})).status_code == 200
    assert export(requests.get("/export", headers={"X-Customer": "acme"}), fail=True).status_code == 500

    (event,) = events_of("acme")
    assert event.quantity == Decimal(3)
    assert event.properties == {"action": "export"}


def test_a_request_retried_with_its_idempotency_key_is_metered_once(client: Client, acme: Customer) -> None:
    @metered_view(client, meter="api_call", customer=customer_of)
    def run_report(request: HttpRequest) -> HttpResponse:
        return HttpResponse("ok")

    headers = {"X-Customer": "acme", "Idempotency-Key": "report-7"}
    run_report(RequestFactory().post("/reports", headers=headers))
    run_report(RequestFactory().post("/reports", headers=headers))
    run_report(
        RequestFactory().post("/reports", headers={"X-Customer": "acme", "Idempotency-Key": "report-8"})
    )

    assert len(events_of("acme")) == 2


def report_view(permission: type) -> Callable[..., Any]:
    """A DRF view guarded by ``permission``; the app's settings shape its refusals as ``{"error": {...}}``."""

    class ReportView(APIView):
        authentication_classes: list[type] = []
        permission_classes = [permission]

        def get(self, request: Request) -> Response:
            return Response({"report": "ready"})

    return ReportView.as_view()


def test_the_permission_lets_an_entitled_customer_through(client: Client, acme: Customer) -> None:
    view = report_view(entitlement_required(client, meter="api_call", customer=customer_of))

    response = view(APIRequestFactory().get("/report", headers={"X-Customer": "acme"}))

    assert response.status_code == 200
    assert response.data == {"report": "ready"}


def test_the_permission_stops_a_customer_whose_plan_lacks_the_feature(
    client: Client, free_plan: Any, make_customer: Callable[..., Customer], live_server: Any
) -> None:
    make_customer("free", external_id="hobbyist")
    view = report_view(
        entitlement_required(
            client, meter="ai_action", customer=customer_of, properties={"feature": "premium_models"}
        )
    )

    response = view(APIRequestFactory().get("/report", headers={"X-Customer": "hobbyist"}))

    assert response.status_code == 403
    assert response.data["error"]["code"] == "not_entitled"
    assert "premium_models" in response.data["error"]["message"]


def test_the_permission_stops_a_customer_past_the_plans_cap(
    client: Client, free_plan: Any, make_customer: Callable[..., Customer], live_server: Any
) -> None:
    make_customer("free", external_id="hobbyist")
    client.events.create(customer="hobbyist", meter="ai_action", quantity=20)
    view = report_view(entitlement_required(client, meter="ai_action", customer=customer_of))

    response = view(APIRequestFactory().get("/report", headers={"X-Customer": "hobbyist"}))

    assert response.status_code == 403
    assert response.data["error"]["code"] == "entitlement_limit_reached"


def test_the_permission_stops_the_view_when_billing_cannot_be_asked(api_key: str, acme: Customer) -> None:
    with Client(api_key=api_key, base_url=unreachable_url(), max_network_retries=0) as unreachable:
        view = report_view(entitlement_required(unreachable, meter="api_call", customer=customer_of))
        response = view(APIRequestFactory().get("/report", headers={"X-Customer": "acme"}))

    assert response.status_code == 403
    assert response.data["error"]["message"].startswith("Could not check")
