"""Reads for a price change: a meter's usage percentiles, and a version's migration preview."""

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing_app.api_schema import errors
from core.errors import InvalidInput, NotFound
from plans.models import Meter, PlanVersion
from usage.api.fields import DecimalString
from usage.api.parsers import only_known_query_parameters
from usage.selectors.price_changes import migration_preview, usage_percentiles
from usage.validation import MAX_NAME_LENGTH, text_problem

MAX_DAYS = 730


class UsagePercentilesOutput(serializers.Serializer):
    meter = serializers.CharField()
    days = serializers.IntegerField()
    customers = serializers.IntegerField(help_text="Customers with usage of the meter in the window.")
    p50 = DecimalString()
    p90 = DecimalString()
    p95 = DecimalString()
    p99 = DecimalString()
    covered = serializers.DictField(
        child=serializers.IntegerField(),
        help_text="Per percentile: customers whose largest period it covers.",
    )


class MigrationSummaryOutput(serializers.Serializer):
    customers = serializers.IntegerField()
    paying_more = serializers.IntegerField()
    paying_less = serializers.IntegerField()
    revenue_difference = DecimalString()


class MigrationCustomerOutput(serializers.Serializer):
    customer = serializers.CharField()
    periods = serializers.IntegerField()
    old_total = DecimalString()
    new_total = DecimalString()
    difference = DecimalString()


class MigrationPreviewOutput(serializers.Serializer):
    periods = serializers.IntegerField()
    currency = serializers.CharField()
    summary = MigrationSummaryOutput()
    customers = MigrationCustomerOutput(many=True)
    unpriced = serializers.ListField(
        child=serializers.CharField(), help_text="Customers whose usage the version cannot price."
    )


def _path_text(name: str, value: str) -> str:
    """A path segment no row can have (a NUL, a lone surrogate, too long) is a 400 before any query."""
    if problem := text_problem(value):
        raise InvalidInput(f"{name} {problem}.", param=name)
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidInput(f"{name} is longer than {MAX_NAME_LENGTH} characters.", param=name)
    return value


def _days(request: Request) -> int:
    raw = request.query_params.get("days", "90")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_DAYS:
        raise InvalidInput(f"days is a whole number from 1 to {MAX_DAYS}.", param="days")
    return int(raw)


class MeterUsagePercentilesView(APIView):
    """Per-customer period usage of a meter over the last days: what an included quota would cover."""

    @extend_schema(
        parameters=[
            OpenApiParameter("days", OpenApiTypes.INT, description="The window, 1 to 730 (default 90).")
        ],
        responses={200: UsagePercentilesOutput, **errors(404)},
    )
    def get(self, request: Request, key: str) -> Response:
        only_known_query_parameters(request, ["days"])
        meter = Meter.objects.filter(key=_path_text("key", key)).first()
        if meter is None:
            raise NotFound(f"No meter with key {key!r}.", param="key")
        found = usage_percentiles(meter=meter, days=_days(request))
        body: dict[str, Any] = {"meter": found.meter, "days": found.days, "customers": found.customers}
        body |= {f"p{p}": value for p, value in found.values.items()}
        body["covered"] = {f"p{p}": count for p, count in found.covered.items()}
        return Response(UsagePercentilesOutput(body).data)


class MigrationPreviewView(APIView):
    """Each subscriber's last three closed periods re-rated under its version and under this one."""

    @extend_schema(responses={200: MigrationPreviewOutput, **errors(404)})
    def get(self, request: Request, code: str, number: int) -> Response:
        only_known_query_parameters(request)
        version = (
            PlanVersion.objects.filter(plan__code=_path_text("code", code), number=number)
            .select_related("plan")
            .first()
        )
        if version is None:
            raise NotFound(f"No version {number} of plan {code!r}.", param="number")
        preview = migration_preview(version=version)
        body = {
            "periods": preview.periods,
            "currency": version.currency,
            "summary": {
                "customers": len(preview.customers),
                "paying_more": preview.paying_more,
                "paying_less": preview.paying_less,
                "revenue_difference": preview.revenue_difference,
            },
            "customers": preview.customers,
            "unpriced": preview.unpriced,
        }
        return Response(MigrationPreviewOutput(body).data)
