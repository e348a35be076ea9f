"""The metering API: events, checks, estimates and reservations.

Views parse, call one service and shape the answer; errors become ``{"error": {...}}`` bodies in
``billing_app.api_errors``. Decimals go out as strings.
"""

from decimal import Decimal
from typing import Any

from django.conf import settings
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, PolymorphicProxySerializer, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing_app.api_schema import errors
from billing_app.models import ApiKey
from core.errors import InvalidInput, NotFound
from usage.api.fields import PropertiesField, QuantityField, StringField
from usage.api.parsers import only_known_query_parameters
from usage.api.serializers import (
    CheckOutput,
    CorrectionOutput,
    EstimateOutput,
    EventsOutput,
    ReservationCommitOutput,
    ReservationOutput,
)
from usage.consumption import usage_decide
from usage.corrections import KEY_PREFIX, MAX_REASON_LENGTH, usage_event_correct
from usage.ingest import usage_events_ingest
from usage.models import Reservation
from usage.rate_limits import rate_limit_peek
from usage.selectors.listings import reservation_by_id
from usage.services import reservation_commit, reservation_create, reservation_release
from usage.sql_reads import customer_and_meter
from usage.validation import MAX_KEY_LENGTH, MAX_NAME_LENGTH, events_from_payload


def reservation_output(reservation: Reservation) -> dict[str, Any]:
    return ReservationOutput(reservation).data


class EventInput(serializers.Serializer):
    """One event, as documented; ``usage.validation`` parses it, naming each problem by event."""

    idempotency_key = serializers.CharField(max_length=MAX_KEY_LENGTH, help_text="Unique per customer.")
    customer = serializers.CharField(max_length=MAX_NAME_LENGTH)
    meter = serializers.CharField(max_length=MAX_NAME_LENGTH)
    quantity = QuantityField(required=False, help_text="Default 1.")
    timestamp = serializers.DateTimeField(required=False, help_text="Default now; at most 35 days back.")
    user = serializers.CharField(max_length=MAX_NAME_LENGTH, required=False)
    properties = PropertiesField()


class EventBatchInput(serializers.Serializer):
    events = serializers.ListField(child=EventInput(), min_length=1, max_length=settings.USAGE_MAX_BATCH)


EVENTS_REQUEST = PolymorphicProxySerializer(
    component_name="EventsInput",
    serializers=[EventInput, EventBatchInput],
    resource_type_field_name=None,
)


class EventsView(APIView):
    """Record one usage event or a batch of up to 1,000. A replayed key changes nothing."""

    @extend_schema(request=EVENTS_REQUEST, responses={200: EventsOutput, **errors(409)})
    def post(self, request: Request) -> Response:
        result = usage_events_ingest(raw_events=events_from_payload(request.data))
        return Response(EventsOutput(result).data)


class UsageQuestionInput(serializers.Serializer):
    customer = StringField(max_length=120)
    meter = StringField(max_length=120)
    quantity = QuantityField(default=Decimal(1))
    properties = PropertiesField()


def _decide(
    request: Request,
    question: type[UsageQuestionInput] = UsageQuestionInput,
    *,
    peek_rate_limit: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """The decision for the question asked. With ``peek_rate_limit`` (``/check``: may it run now?), past the
    plan's rate limit on the meter it is ``429 rate_limited``; ``/estimate`` asks what it would cost."""
    data = question(data=request.data)
    data.is_valid(raise_exception=True)
    values = data.validated_data
    customer, meter = customer_and_meter(values["customer"], values["meter"])
    now = timezone.now()
    if peek_rate_limit:
        rate_limit_peek(customer=customer, meter=meter, user=values.get("user"), now=now)
    decision = usage_decide(
        customer=customer, meter=meter, quantity=values["quantity"], properties=values["properties"], now=now
    )
    return decision, values


class CheckView(APIView):
    """May this customer do this now? Ask before costly work; nothing is held."""

    class CheckInput(UsageQuestionInput):
        user = serializers.CharField(
            max_length=MAX_NAME_LENGTH,
            required=False,
            help_text="The member who would do the work, for a plan that rate-limits each user.",
        )

    @extend_schema(request=CheckInput, responses={200: CheckOutput, **errors(404)})
    def post(self, request: Request) -> Response:
        decision, _ = _decide(request, self.CheckInput, peek_rate_limit=True)
        return Response(CheckOutput(decision).data)


class EstimateView(APIView):
    """What would this cost, and what would pay for it? A preview; nothing is held."""

    @extend_schema(request=UsageQuestionInput, responses={200: EstimateOutput, **errors(404)})
    def post(self, request: Request) -> Response:
        decision, _ = _decide(request)
        coverage = decision.coverage
        zero = Decimal(0)
        estimate = {
            "allowed": decision.allowed,
            "code": decision.code,
            "message": decision.message,
            "amount": coverage.money_cost if coverage else None,
            "currency": decision.currency,
            "cost": coverage.cost if coverage else None,
            "cost_unit": coverage.unit if coverage else None,
            "covered_by": {
                "included": coverage.included_quantity if coverage else zero,
                "credits": coverage.credits if coverage else zero,
                "wallet": coverage.wallet if coverage else zero,
                "overage": coverage.overage if coverage else zero,
            },
        }
        return Response(EstimateOutput(estimate).data)


class ReservationsView(APIView):
    """Hold credit for work about to run; 402 with the reason when the customer may not."""

    class ReservationInput(UsageQuestionInput):
        idempotency_key = serializers.CharField(max_length=255)
        user = serializers.CharField(max_length=120, required=False)
        ttl_seconds = serializers.IntegerField(min_value=1, max_value=86_400, required=False)

    @extend_schema(
        request=ReservationInput,
        responses={
            201: ReservationOutput,
            200: OpenApiResponse(ReservationOutput, description="The reservation its key made before."),
            **errors(402, 404),
        },
    )
    def post(self, request: Request) -> Response:
        data = self.ReservationInput(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        customer, meter = customer_and_meter(values["customer"], values["meter"])
        reservation, created = reservation_create(
            customer=customer,
            meter=meter,
            quantity=values["quantity"],
            idempotency_key=values["idempotency_key"],
            user=values.get("user"),
            properties=values["properties"],
            ttl_seconds=values.get("ttl_seconds"),
        )
        return Response(
            reservation_output(reservation), status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


class ReservationView(APIView):
    @extend_schema(responses={200: ReservationOutput, **errors(404)})
    def get(self, request: Request, reservation_id: str) -> Response:
        """A reservation: its status, what it holds and until when, and what was committed."""
        only_known_query_parameters(request)
        return Response(reservation_output(reservation_by_id(reservation_id=reservation_id)))


class ReservationCommitView(APIView):
    """Record what the work really used; the rest of the hold is released."""

    class ReservationCommitInput(serializers.Serializer):
        quantity = QuantityField()

    @extend_schema(request=ReservationCommitInput, responses={200: ReservationCommitOutput, **errors(404)})
    def post(self, request: Request, reservation_id: str) -> Response:
        data = self.ReservationCommitInput(data=request.data)
        data.is_valid(raise_exception=True)
        reservation, event = reservation_commit(
            reservation_id=reservation_id, quantity=data.validated_data["quantity"]
        )
        return Response(ReservationCommitOutput(reservation, context={"event": event}).data)


class ReservationReleaseView(APIView):
    """Cancel a hold; everything it held is available again."""

    @extend_schema(request=None, responses={200: ReservationOutput, **errors(404)})
    def post(self, request: Request, reservation_id: str) -> Response:
        return Response(reservation_output(reservation_release(reservation_id=reservation_id)))


# The largest id a usage event can have (a bigint): a larger one names no event, and is not sent to the database.
MAX_EVENT_ID = 2**63 - 1


class EventCorrectionsView(APIView):
    """Correct a recorded event: a new event for the difference, with its reason; the period is re-rated."""

    class CorrectionInput(serializers.Serializer):
        quantity = QuantityField(help_text="What the event should have counted, in all (not the difference).")
        reason = StringField(max_length=MAX_REASON_LENGTH, help_text="Why: kept with the correction.")
        idempotency_key = StringField(max_length=MAX_KEY_LENGTH - len(KEY_PREFIX))

    @extend_schema(
        request=CorrectionInput,
        parameters=[
            OpenApiParameter(
                "dry_run",
                OpenApiTypes.BOOL,
                description="`true`: answer the charges before and after, writing nothing.",
            )
        ],
        responses={
            201: CorrectionOutput,
            200: OpenApiResponse(
                CorrectionOutput,
                description="A dry run, nothing to change, or the correction its key recorded before.",
            ),
            **errors(404, 409),
        },
    )
    def post(self, request: Request, event_id: str) -> Response:
        only_known_query_parameters(request, ["dry_run"])
        dry_run = request.query_params.get("dry_run", "false")
        if dry_run not in ("true", "false"):
            raise InvalidInput("dry_run is true or false.", param="dry_run")
        if not event_id.isascii() or not event_id.isdigit() or not 0 < int(event_id) <= MAX_EVENT_ID:
            raise NotFound(f"No usage event {event_id[:40]!r}.", param="id")
        data = self.CorrectionInput(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        api_key = request.auth
        result = usage_event_correct(
            event_id=int(event_id),
            quantity=values["quantity"],
            reason=values["reason"],
            idempotency_key=values["idempotency_key"],
            by=f"api key {api_key.name} ({api_key.prefix})" if isinstance(api_key, ApiKey) else "api",
            dry_run=dry_run == "true",
        )
        return Response(
            CorrectionOutput(result).data,
            status=status.HTTP_201_CREATED if result.created and not result.dry_run else status.HTTP_200_OK,
        )
