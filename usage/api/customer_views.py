"""The customer endpoints of the API: accounts, subscriptions, credits, wallet, limits, usage."""

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import InvalidInput
from customers.models import Customer, SpendControls, Subscription
from customers.selectors import customer_by_external_id
from customers.services import (
    customer_create,
    plan_version_for_code,
    spend_controls_update,
)
from plans.models import MONEY
from usage.api.fields import LedgerAmountField, MoneyField, decimal_string
from usage.models import CreditGrant, CustomerBalance, GrantKind
from usage.selectors import credits_remaining_by_unit, usage_period_summary, usage_summary_as_dict
from usage.services import credit_grant_create, subscription_change, wallet_top_up
from usage.validation import MAX_NAME_LENGTH, text_problem


def customer_output(customer: Customer) -> dict[str, Any]:
    subscription = Subscription.objects.filter(customer=customer).select_related("plan_version__plan").first()
    controls = SpendControls.objects.filter(customer=customer).first()
    balance = CustomerBalance.objects.filter(customer=customer).first()
    return {
        "object": "customer",
        "external_id": customer.external_id,
        "name": customer.name,
        "email": customer.email,
        "currency": customer.currency,
        "status": customer.status,
        "subscription": subscription_output(subscription) if subscription else None,
        "limits": limits_output(controls) if controls else None,
        "wallet_balance": decimal_string(balance.wallet_balance if balance else None) or "0",
        "credits_remaining": {
            unit: decimal_string(amount)
            for unit, amount in credits_remaining_by_unit(customer=customer).items()
        },
    }


def subscription_output(subscription: Subscription) -> dict[str, Any]:
    return {
        "plan": subscription.plan_version.plan.code,
        "plan_version": subscription.plan_version.number,
        "status": subscription.status,
        "current_period_start": subscription.current_period_start.isoformat(),
        "current_period_end": subscription.current_period_end.isoformat(),
        "grandfathered": subscription.grandfathered,
    }


def limits_output(controls: SpendControls) -> dict[str, Any]:
    return {
        "soft_limit": decimal_string(controls.soft_limit),
        "hard_limit": decimal_string(controls.hard_limit),
        "block_overage": controls.block_overage,
    }


def grant_output(grant: CreditGrant) -> dict[str, Any]:
    return {
        "id": grant.pk,
        "object": "credit_grant",
        "kind": grant.kind,
        "unit": grant.unit,
        "amount": decimal_string(grant.amount),
        "remaining": decimal_string(grant.remaining),
        "priority": grant.priority,
        "expires_at": grant.expires_at.isoformat() if grant.expires_at else None,
        "created_at": grant.created_at.isoformat(),
    }


class CustomerEndpoint(APIView):
    """An endpoint under /customers/{external_id}.

    An id no customer can have (a NUL, a lone surrogate, too long) is answered 400 naming it, before any
    query: PostgreSQL refuses a NUL in a query parameter, which was a 500.
    """

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        external_id = kwargs["external_id"]
        if problem := text_problem(external_id):
            raise InvalidInput(f"external_id {problem}.", param="external_id")
        if len(external_id) > MAX_NAME_LENGTH:
            raise InvalidInput(
                f"external_id is longer than {MAX_NAME_LENGTH} characters.", param="external_id"
            )


class CustomersView(APIView):
    class CustomerCreateInput(serializers.Serializer):
        external_id = serializers.CharField(max_length=120)
        name = serializers.CharField(max_length=200)
        email = serializers.EmailField(required=False, allow_blank=True, default="")
        plan = serializers.CharField(max_length=64, required=False, allow_null=True)
        currency = serializers.CharField(min_length=3, max_length=3, required=False)

    @extend_schema(request=CustomerCreateInput, responses={201: dict})
    def post(self, request: Request) -> Response:
        data = self.CustomerCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        customer = customer_create(
            external_id=values["external_id"],
            name=values["name"],
            email=values["email"],
            plan_code=values.get("plan"),
            currency=values.get("currency"),
        )
        return Response(customer_output(customer), status=status.HTTP_201_CREATED)


class CustomerView(CustomerEndpoint):
    @extend_schema(responses={200: dict})
    def get(self, request: Request, external_id: str) -> Response:
        return Response(customer_output(customer_by_external_id(external_id)))


class SubscriptionView(CustomerEndpoint):
    class SubscriptionChangeInput(serializers.Serializer):
        plan = serializers.CharField(max_length=64)

    @extend_schema(request=SubscriptionChangeInput, responses={200: dict})
    def post(self, request: Request, external_id: str) -> Response:
        data = self.SubscriptionChangeInput(data=request.data)
        data.is_valid(raise_exception=True)
        customer = customer_by_external_id(external_id)
        subscription = subscription_change(
            customer=customer, plan_version=plan_version_for_code(data.validated_data["plan"])
        )
        return Response(subscription_output(subscription))


class CreditsView(CustomerEndpoint):
    class CreditGrantInput(serializers.Serializer):
        amount = LedgerAmountField(decimal_places=6)
        kind = serializers.ChoiceField(choices=GrantKind.values, default=GrantKind.PURCHASED)
        unit = serializers.CharField(max_length=10, required=False)
        expires_at = serializers.DateTimeField(required=False, allow_null=True)
        priority = serializers.IntegerField(min_value=0, max_value=100, default=50)
        description = serializers.CharField(max_length=200, required=False, default="")
        idempotency_key = serializers.CharField(max_length=255, required=False, allow_null=True)

    @extend_schema(request=CreditGrantInput, responses={201: dict})
    def post(self, request: Request, external_id: str) -> Response:
        data = self.CreditGrantInput(data=request.data)
        data.is_valid(raise_exception=True)
        grant, created = credit_grant_create(
            customer=customer_by_external_id(external_id), **data.validated_data
        )
        return Response(
            grant_output(grant), status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


class WalletTopUpView(CustomerEndpoint):
    class WalletTopUpInput(serializers.Serializer):
        amount = LedgerAmountField(decimal_places=MONEY["decimal_places"])
        note = serializers.CharField(max_length=200, required=False, default="")

    @extend_schema(request=WalletTopUpInput, responses={201: dict})
    def post(self, request: Request, external_id: str) -> Response:
        data = self.WalletTopUpInput(data=request.data)
        data.is_valid(raise_exception=True)
        customer = customer_by_external_id(external_id)
        wallet_top_up(customer=customer, **data.validated_data)
        balance = CustomerBalance.objects.get(customer=customer)
        return Response(
            {"wallet_balance": decimal_string(balance.wallet_balance), "currency": balance.currency},
            status=status.HTTP_201_CREATED,
        )


class LimitsView(CustomerEndpoint):
    class LimitsInput(serializers.Serializer):
        soft_limit = MoneyField(required=False, allow_null=True, default=None)
        hard_limit = MoneyField(required=False, allow_null=True, default=None)
        block_overage = serializers.BooleanField(required=False, default=False)

    @extend_schema(request=LimitsInput, responses={200: dict})
    def put(self, request: Request, external_id: str) -> Response:
        data = self.LimitsInput(data=request.data)
        data.is_valid(raise_exception=True)
        controls = spend_controls_update(customer=customer_by_external_id(external_id), **data.validated_data)
        return Response(limits_output(controls))


class CustomerUsageView(CustomerEndpoint):
    """The same numbers as the customer's /settings/usage page, from the same selectors."""

    @extend_schema(responses={200: dict})
    def get(self, request: Request, external_id: str) -> Response:
        customer = customer_by_external_id(external_id)
        summary = usage_period_summary(customer=customer, period_start=request.query_params.get("period"))
        return Response(usage_summary_as_dict(summary))
