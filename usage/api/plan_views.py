"""What the customer's usage would cost on each plan: ``GET /customers/{external_id}/plan-comparison``."""

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from billing_app.api_schema import errors
from customers.selectors import customer_by_external_id
from usage.api.customer_views import CustomerEndpoint
from usage.api.fields import AmountString, Timestamp
from usage.api.parsers import only_known_query_parameters
from usage.selectors import usage_period_summary
from usage.selectors.plan_comparison import PlanComparison, plan_comparison


class PlanComparisonPeriodOutput(serializers.Serializer):
    start = Timestamp()
    end = Timestamp()


class PlanComparisonCurrentOutput(serializers.Serializer):
    plan = serializers.CharField(allow_null=True, help_text="The plan code in force; null without a plan.")
    currency = serializers.CharField()
    total = AmountString(help_text="Base fee and usage charges so far this period.")
    projected_total = AmountString(help_text="The same at the recent rate, to the period's end.")


class PlanBillOutput(serializers.Serializer):
    plan = serializers.CharField(source="code")
    name = serializers.CharField()
    version = serializers.IntegerField(source="version.number")
    currency = serializers.CharField()
    total = AmountString(help_text="This period's usage so far, rated under this plan, base fee included.")
    projected_total = AmountString(help_text="This period's projected usage, rated under this plan.")
    difference = AmountString(help_text="projected_total minus the current plan's projected total.")
    covers = serializers.BooleanField(
        help_text="False when a cap of this plan would have refused part of it."
    )
    current = serializers.BooleanField()


class PlanComparisonOutput(serializers.Serializer):
    period = PlanComparisonPeriodOutput()
    current = PlanComparisonCurrentOutput()
    plans = PlanBillOutput(many=True)
    cheapest = serializers.CharField(
        allow_null=True,
        help_text="The plan with the lowest projected bill that would allow all of the usage.",
    )


def plan_comparison_output(comparison: PlanComparison, plan_code: str | None) -> dict[str, Any]:
    currency = comparison.currency
    cheapest = comparison.cheapest
    return PlanComparisonOutput(
        {
            "period": {"start": comparison.period.start, "end": comparison.period.end},
            "current": {
                "plan": plan_code,
                "currency": currency,
                "total": comparison.current_total,
                "projected_total": comparison.current_projected_total,
            },
            "plans": comparison.plans,
            "cheapest": cheapest.code if cheapest else None,
        }
    ).data


class PlanComparisonView(CustomerEndpoint):
    """This period's usage rated under every published plan in the customer's currency: "your bill on
    each plan", the same figures the customer's admins see on /settings/usage."""

    @extend_schema(responses={200: PlanComparisonOutput, **errors(404)})
    def get(self, request: Request, external_id: str) -> Response:
        only_known_query_parameters(request)
        customer = customer_by_external_id(external_id)
        summary = usage_period_summary(customer=customer)
        comparison = plan_comparison(customer=customer, summary=summary)
        current = next((bill.code for bill in comparison.plans if bill.current), None)
        return Response(plan_comparison_output(comparison, current))
