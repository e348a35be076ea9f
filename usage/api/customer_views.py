"""The customer endpoints of the API: accounts, subscriptions, credits, wallet, limits, usage."""

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing_app.api_schema import errors
from core.errors import InvalidInput
from customers.models import Customer, external_id_validator
from customers.selectors import customer_by_external_id, customer_list
from customers.services import (
    customer_create,
    plan_version_for_code,
    spend_controls_update,
)
from plans.models import MONEY
from usage.api.fields import (
    AwareDateTimeField,
    CurrencyField,
    LedgerAmountField,
    MoneyField,
    QuantityField,
    StringField,
)
from usage.api.pagination import ListQuery, list_query, list_response
from usage.api.parsers import only_known_query_parameters
from usage.api.serializers import (
    CreditGrantListOutput,
    CreditGrantOutput,
    CreditLedgerListOutput,
    CustomerListOutput,
    CustomerOutput,
    CustomerUsageOutput,
    EventListOutput,
    LimitsOutput,
    SubscriptionOutput,
    WalletTopUpOutput,
)
from usage.default_soft_limit import spend_controls_with_default
from usage.models import CustomerBalance, GrantKind
from usage.selectors import usage_member_totals, usage_period_summary
from usage.selectors.accounts import customer_account, customer_accounts
from usage.selectors.listings import EventFilters, credit_grant_list, credit_ledger_list, usage_event_list
from usage.services import credit_grant_create, subscription_change, wallet_top_up
from usage.validation import MAX_NAME_LENGTH, text_problem


def customer_output(customer: Customer) -> dict[str, Any]:
    return CustomerOutput(customer_account(customer=customer)).data


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
        external_id = StringField(max_length=120, validators=[external_id_validator])
        name = StringField(max_length=200)
        email = serializers.EmailField(required=False, allow_blank=True, default="")
        plan = StringField(max_length=64, required=False, allow_null=True)
        currency = CurrencyField(required=False, help_text="Defaults to the plan's; stored in lower case.")

    class CustomerListQuery(ListQuery):
        starting_after = serializers.CharField(  # type: ignore[assignment]
            max_length=120,
            required=False,
            help_text="The `external_id` of the last customer of the page before: the page after it. "
            "An id not in this list is `400 invalid_cursor`.",
        )

    @extend_schema(
        operation_id="v1_customers_list", parameters=[CustomerListQuery], responses={200: CustomerListOutput}
    )
    def get(self, request: Request) -> Response:
        """The customers, newest first."""
        query = list_query(self.CustomerListQuery, request)
        page = customer_list(limit=query["limit"], starting_after=query.get("starting_after"))
        return list_response(
            CustomerListOutput, request=request, page=page, data=customer_accounts(customers=page.rows)
        )

    @extend_schema(request=CustomerCreateInput, responses={201: CustomerOutput, **errors(404)})
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
    @extend_schema(responses={200: CustomerOutput, **errors(404)})
    def get(self, request: Request, external_id: str) -> Response:
        only_known_query_parameters(request)
        return Response(customer_output(customer_by_external_id(external_id)))


class SubscriptionView(CustomerEndpoint):
    class SubscriptionChangeInput(serializers.Serializer):
        plan = StringField(max_length=64)

    @extend_schema(request=SubscriptionChangeInput, responses={200: SubscriptionOutput, **errors(404)})
    def post(self, request: Request, external_id: str) -> Response:
        data = self.SubscriptionChangeInput(data=request.data)
        data.is_valid(raise_exception=True)
        customer = customer_by_external_id(external_id)
        subscription = subscription_change(
            customer=customer, plan_version=plan_version_for_code(data.validated_data["plan"])
        )
        return Response(SubscriptionOutput(subscription).data)


class CreditsView(CustomerEndpoint):
    class CreditGrantInput(serializers.Serializer):
        amount = LedgerAmountField(decimal_places=6)
        kind = serializers.ChoiceField(choices=GrantKind.values, default=GrantKind.PURCHASED)
        unit = StringField(max_length=10, required=False)
        expires_at = serializers.DateTimeField(required=False, allow_null=True)
        priority = serializers.IntegerField(min_value=0, max_value=100, default=50)
        description = StringField(max_length=200, required=False, default="")
        idempotency_key = StringField(max_length=255, required=False, allow_null=True)

    @extend_schema(
        operation_id="v1_customers_credits_list",
        parameters=[ListQuery],
        responses={200: CreditGrantListOutput, **errors(404)},
    )
    def get(self, request: Request, external_id: str) -> Response:
        """The customer's credit grants, newest first, with what each has left."""
        query = list_query(ListQuery, request)
        page = credit_grant_list(customer=customer_by_external_id(external_id), **query)
        return list_response(CreditGrantListOutput, request=request, page=page)

    @extend_schema(
        request=CreditGrantInput,
        responses={
            201: CreditGrantOutput,
            200: OpenApiResponse(CreditGrantOutput, description="The grant its key made before."),
            **errors(404),
        },
    )
    def post(self, request: Request, external_id: str) -> Response:
        data = self.CreditGrantInput(data=request.data)
        data.is_valid(raise_exception=True)
        grant, created = credit_grant_create(
            customer=customer_by_external_id(external_id), **data.validated_data
        )
        return Response(
            CreditGrantOutput(grant).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


class WalletTopUpView(CustomerEndpoint):
    class WalletTopUpInput(serializers.Serializer):
        amount = LedgerAmountField(decimal_places=MONEY["decimal_places"])
        note = StringField(max_length=200, required=False, default="")

    @extend_schema(request=WalletTopUpInput, responses={201: WalletTopUpOutput, **errors(404)})
    def post(self, request: Request, external_id: str) -> Response:
        data = self.WalletTopUpInput(data=request.data)
        data.is_valid(raise_exception=True)
        customer = customer_by_external_id(external_id)
        wallet_top_up(customer=customer, **data.validated_data)
        balance = CustomerBalance.objects.get(customer=customer)
        return Response(WalletTopUpOutput(balance).data, status=status.HTTP_201_CREATED)


class LimitsView(CustomerEndpoint):
    class LimitsInput(serializers.Serializer):
        soft_limit = MoneyField(required=False, allow_null=True, default=None)
        hard_limit = MoneyField(required=False, allow_null=True, default=None)
        block_overage = serializers.BooleanField(required=False, default=False)
        meter_limits = serializers.DictField(
            child=QuantityField(allow_null=True),
            required=False,
            help_text="Stops in units a period, by meter key: a quantity above zero sets one, null removes it. "
            "Meters left out keep theirs; leaving the field out keeps them all.",
        )
        default_soft_limit_off = serializers.BooleanField(
            required=False,
            help_text="true turns the default soft limit off, false turns it on again; leaving it out keeps "
            "the customer's choice.",
        )

    @extend_schema(responses={200: LimitsOutput, **errors(404)})
    def get(self, request: Request, external_id: str) -> Response:
        """The customer's spend limits, with this period's default soft limit."""
        only_known_query_parameters(request)
        customer = customer_by_external_id(external_id)
        return Response(LimitsOutput(spend_controls_with_default(customer=customer)).data)

    @extend_schema(request=LimitsInput, responses={200: LimitsOutput, **errors(404)})
    def put(self, request: Request, external_id: str) -> Response:
        data = self.LimitsInput(data=request.data)
        data.is_valid(raise_exception=True)
        customer = customer_by_external_id(external_id)
        controls = spend_controls_update(customer=customer, **data.validated_data)
        return Response(LimitsOutput(spend_controls_with_default(customer=customer, controls=controls)).data)


class CustomerUsageView(CustomerEndpoint):
    """The same numbers as the customer's /settings/usage page, from the same selectors."""

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "period",
                OpenApiTypes.DATE,
                description="The start date of an earlier period; the current one when left out.",
            )
        ],
        responses={200: CustomerUsageOutput, **errors(404)},
    )
    def get(self, request: Request, external_id: str) -> Response:
        only_known_query_parameters(request, ["period"])
        customer = customer_by_external_id(external_id)
        summary = usage_period_summary(customer=customer, period_start=request.query_params.get("period"))
        members = usage_member_totals(customer=customer, period_start=summary.period)
        return Response(CustomerUsageOutput(summary, context={"members": members}).data)


class CustomerEventsView(CustomerEndpoint):
    class EventListQuery(ListQuery):
        meter = serializers.CharField(max_length=MAX_NAME_LENGTH, required=False, help_text="A meter key.")
        user = serializers.CharField(
            max_length=MAX_NAME_LENGTH, required=False, help_text="A member's external id."
        )
        from_ = AwareDateTimeField(
            required=False, help_text="Events whose `timestamp` is at or after this (ISO 8601)."
        )
        to = AwareDateTimeField(required=False, help_text="Events whose `timestamp` is before this.")

        def get_fields(self) -> dict[str, Any]:
            # "from" is a Python keyword, so the field is declared as from_ and renamed here.
            fields = super().get_fields()
            fields["from"] = fields.pop("from_")
            return fields

    @extend_schema(
        operation_id="v1_customers_events_list",
        parameters=[EventListQuery],
        responses={200: EventListOutput, **errors(404)},
    )
    def get(self, request: Request, external_id: str) -> Response:
        """The customer's usage events, newest recorded first; filters narrow them."""
        query = list_query(self.EventListQuery, request)
        filters = EventFilters(
            meter=query.get("meter"), user=query.get("user"), since=query.get("from"), until=query.get("to")
        )
        page = usage_event_list(
            customer=customer_by_external_id(external_id),
            filters=filters,
            limit=query["limit"],
            starting_after=query.get("starting_after"),
        )
        return list_response(EventListOutput, request=request, page=page)


class CustomerLedgerView(CustomerEndpoint):
    @extend_schema(
        operation_id="v1_customers_ledger_list",
        parameters=[ListQuery],
        responses={200: CreditLedgerListOutput, **errors(404)},
    )
    def get(self, request: Request, external_id: str) -> Response:
        """The customer's credit ledger: every grant, top-up, draw-down, expiry, refund and adjustment."""
        query = list_query(ListQuery, request)
        page = credit_ledger_list(customer=customer_by_external_id(external_id), **query)
        return list_response(CreditLedgerListOutput, request=request, page=page)
