"""Operator reports: ``GET /reports/margins``, revenue against serving cost by customer, meter or model."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from usage.api.fields import DecimalString
from usage.api.parsers import only_known_query_parameters
from usage.selectors.margins import (
    MarginGroup,
    MarginReport,
    margin_group_parse,
    margin_report,
    report_period_parse,
)


# A field named "label" shadows ``Field.label`` only for the type checker: DRF's serializer metaclass takes
# declared fields off the class.
class MarginPeriodOutput(serializers.Serializer):
    label = serializers.CharField(  # type: ignore[assignment]
        help_text="The month (YYYY-MM), or 'current': each customer's billing period."
    )
    start = serializers.DateField(
        allow_null=True, help_text="First day of the month (UTC); null for current."
    )
    end = serializers.DateField(allow_null=True, help_text="The day after the month; null for current.")


class MarginRowOutput(serializers.Serializer):
    key = serializers.CharField(
        help_text="The customer's external id, the meter key, or meter_key:dimension_value; for a total, "
        "the currency."
    )
    label = serializers.CharField()  # type: ignore[assignment]
    revenue = DecimalString(help_text="Rated usage charges, exact, in `currency`.")
    cost = DecimalString(help_text="Serving cost, exact, in the report's `cost_currency`.")
    margin = DecimalString(
        allow_null=True, help_text="revenue − cost; null when `currency` is not the `cost_currency`."
    )
    margin_percent = DecimalString(allow_null=True, help_text="margin ÷ revenue × 100; null without revenue.")
    currency = serializers.CharField(help_text="The currency of `revenue` (the customers' plan currency).")


class MarginReportOutput(serializers.Serializer):
    period = MarginPeriodOutput()
    group_by = serializers.ChoiceField(choices=MarginGroup.choices)
    cost_currency = serializers.CharField(help_text="The operator's currency (OPERATOR_CURRENCY).")
    rows = MarginRowOutput(many=True)
    totals = MarginRowOutput(many=True, help_text="One per revenue currency.")


def margin_report_output(report: MarginReport) -> dict[str, object]:
    period = report.period
    return MarginReportOutput(
        {
            "period": {"label": period.label, "start": period.start, "end": period.end},
            "group_by": report.group_by,
            "cost_currency": report.cost_currency,
            "rows": report.rows,
            "totals": report.totals,
        }
    ).data


class MarginReportView(APIView):
    """Revenue, serving cost and margin of a period, by customer, meter or dimension value (model)."""

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "period",
                OpenApiTypes.STR,
                description="A calendar month, YYYY-MM (UTC days), or `current` (the default): each customer's "
                "current billing period.",
            ),
            OpenApiParameter(
                "group_by", OpenApiTypes.STR, enum=MarginGroup.values, description="Default `customer`."
            ),
        ],
        responses={200: MarginReportOutput},
    )
    def get(self, request: Request) -> Response:
        only_known_query_parameters(request, ["period", "group_by"])
        report = margin_report(
            period=report_period_parse(request.query_params.get("period")),
            group_by=margin_group_parse(request.query_params.get("group_by")),
        )
        return Response(margin_report_output(report))
