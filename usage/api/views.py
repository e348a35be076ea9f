"""The metering API: events, checks, estimates and reservations.

Views parse, call one service and shape the answer; errors become ``{"error": {...}}`` bodies in
``billing_app.api_errors``. Decimals go out as strings.
"""

from decimal import Decimal
from typing import Any

from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from usage.api.fields import PropertiesField, QuantityField, decimal_string
from usage.consumption import usage_decide
from usage.ingest import usage_events_ingest
from usage.models import Reservation, UsageEvent
from usage.services import reservation_commit, reservation_create, reservation_release
from usage.sql_reads import customer_for_decision, meter_by_key
from usage.validation import events_from_payload


def event_output(event: UsageEvent) -> dict[str, Any]:
    return {
        "id": event.pk,
        "idempotency_key": event.idempotency_key,
        "customer": event.customer.external_id,
        "meter": event.meter.key,
        "quantity": decimal_string(event.quantity),
        "timestamp": event.timestamp.isoformat(),
        "billable": event.billable,
        "cost": decimal_string(event.cost),
        "cost_unit": event.cost_unit,
        "covered_by": {
            "included": decimal_string(event.included_quantity),
            "credits": decimal_string(event.credits_amount),
            "wallet": decimal_string(event.wallet_amount),
            "overage": decimal_string(event.overage_amount),
        },
    }


def reservation_output(reservation: Reservation) -> dict[str, Any]:
    return {
        "id": str(reservation.pk),
        "object": "reservation",
        "status": reservation.status,
        "customer": reservation.customer.external_id,
        "meter": reservation.meter.key,
        "quantity": decimal_string(reservation.quantity),
        "unit": reservation.unit,
        "held": {
            "cost": decimal_string(reservation.held_cost),
            "credits": decimal_string(reservation.held_credits),
            "wallet": decimal_string(reservation.held_wallet),
            "overage": decimal_string(reservation.held_overage),
        },
        "idempotency_key": reservation.idempotency_key,
        "expires_at": reservation.expires_at.isoformat(),
        "created_at": reservation.created_at.isoformat(),
        "committed_quantity": decimal_string(reservation.committed_quantity),
        "settled_at": reservation.settled_at.isoformat() if reservation.settled_at else None,
    }


class EventsView(APIView):
    """Record one usage event or a batch of up to 1,000. A replayed key changes nothing."""

    @extend_schema(request=dict, responses={200: dict})
    def post(self, request: Request) -> Response:
        result = usage_events_ingest(raw_events=events_from_payload(request.data))
        return Response({"results": [r.as_dict() for r in result.results]})


class UsageQuestionInput(serializers.Serializer):
    customer = serializers.CharField(max_length=120)
    meter = serializers.CharField(max_length=120)
    quantity = QuantityField(default=Decimal(1))
    properties = PropertiesField()


def _decide(request: Request) -> tuple[Any, dict[str, Any]]:
    data = UsageQuestionInput(data=request.data)
    data.is_valid(raise_exception=True)
    values = data.validated_data
    decision = usage_decide(
        customer=customer_for_decision(values["customer"]),
        meter=meter_by_key(values["meter"]),
        quantity=values["quantity"],
        properties=values["properties"],
        now=timezone.now(),
    )
    return decision, values


class CheckView(APIView):
    """May this customer do this now? Ask before costly work; nothing is held."""

    @extend_schema(request=UsageQuestionInput, responses={200: dict})
    def post(self, request: Request) -> Response:
        decision, _ = _decide(request)
        return Response(
            {
                "allowed": decision.allowed,
                "code": decision.code,
                "message": decision.message,
                "remaining": decimal_string(decision.remaining),
            }
        )


class EstimateView(APIView):
    """What would this cost, and what would pay for it? A preview; nothing is held."""

    @extend_schema(request=UsageQuestionInput, responses={200: dict})
    def post(self, request: Request) -> Response:
        decision, _ = _decide(request)
        coverage = decision.coverage
        zero = "0"
        return Response(
            {
                "allowed": decision.allowed,
                "code": decision.code,
                "message": decision.message,
                "amount": decimal_string(coverage.money_cost) if coverage else None,
                "currency": decision.currency,
                "cost": decimal_string(coverage.cost) if coverage else None,
                "cost_unit": coverage.unit if coverage else None,
                "covered_by": {
                    "included": decimal_string(coverage.included_quantity) if coverage else zero,
                    "credits": decimal_string(coverage.credits) if coverage else zero,
                    "wallet": decimal_string(coverage.wallet) if coverage else zero,
                    "overage": decimal_string(coverage.overage) if coverage else zero,
                },
            }
        )


class ReservationsView(APIView):
    """Hold credit for work about to run; 402 with the reason when the customer may not."""

    class ReservationInput(UsageQuestionInput):
        idempotency_key = serializers.CharField(max_length=255)
        user = serializers.CharField(max_length=120, required=False)
        ttl_seconds = serializers.IntegerField(min_value=1, max_value=86_400, required=False)

    @extend_schema(request=ReservationInput, responses={201: dict, 402: dict})
    def post(self, request: Request) -> Response:
        data = self.ReservationInput(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        reservation, created = reservation_create(
            customer=customer_for_decision(values["customer"]),
            meter=meter_by_key(values["meter"]),
            quantity=values["quantity"],
            idempotency_key=values["idempotency_key"],
            user=values.get("user"),
            properties=values["properties"],
            ttl_seconds=values.get("ttl_seconds"),
        )
        return Response(
            reservation_output(reservation), status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


class ReservationCommitView(APIView):
    """Record what the work really used; the rest of the hold is released."""

    class ReservationCommitInput(serializers.Serializer):
        quantity = QuantityField()

    @extend_schema(request=ReservationCommitInput, responses={200: dict})
    def post(self, request: Request, reservation_id: str) -> Response:
        data = self.ReservationCommitInput(data=request.data)
        data.is_valid(raise_exception=True)
        reservation, event = reservation_commit(
            reservation_id=reservation_id, quantity=data.validated_data["quantity"]
        )
        body = reservation_output(reservation)
        body["event"] = event_output(event)
        body["released"] = decimal_string(reservation.quantity - event.quantity)
        return Response(body)


class ReservationReleaseView(APIView):
    """Cancel a hold; everything it held is available again."""

    @extend_schema(request=None, responses={200: dict})
    def post(self, request: Request, reservation_id: str) -> Response:
        return Response(reservation_output(reservation_release(reservation_id=reservation_id)))
