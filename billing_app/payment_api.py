"""The API's money-in endpoints: Checkout Sessions, automatic top-up, invoices and the upcoming invoice.

They live beside the services they call (``billing_app.stripe.checkout``, ``billing_app.auto_top_up``,
``billing_app.invoices``) because ``usage`` does not import ``billing_app``; ``billing_app/urls.py`` mounts them
under ``/api/v1/customers/{external_id}/``.
"""

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from billing_app.api_schema import errors
from billing_app.auto_top_up import auto_top_up_state, auto_top_up_update
from billing_app.invoices import MAX_PAGE, customer_invoices, upcoming_invoice_preview
from billing_app.models import CheckoutKind
from billing_app.stripe.checkout import checkout_session_create
from core.errors import InvalidInput
from customers.selectors import customer_by_external_id
from usage.api.customer_views import CustomerEndpoint
from usage.api.fields import AmountString, DecimalString, MoneyField, StringField, Timestamp

# --- Checkout Sessions ----------------------------------------------------------------------------------


class CheckoutSessionOutput(serializers.Serializer):
    object = serializers.CharField(default="checkout_session")
    id = serializers.CharField(source="stripe_session_id", help_text="Stripe's Checkout Session id (cs_…).")
    url = serializers.CharField(help_text="Stripe's payment page: send the customer's browser here.")
    kind = serializers.ChoiceField(choices=CheckoutKind.choices)
    status = serializers.CharField(help_text="open, complete (paid and credited) or expired.")
    amount = AmountString(help_text="What the customer pays.")
    currency = serializers.CharField()
    pack = serializers.IntegerField(source="credit_pack_id", allow_null=True)
    credits = DecimalString(allow_null=True, help_text="The credits a pack grants; null for a top-up.")
    expires_at = Timestamp(allow_null=True)


class CheckoutSessionsView(CustomerEndpoint):
    class CheckoutSessionInput(serializers.Serializer):
        kind = serializers.ChoiceField(choices=CheckoutKind.values)
        amount = MoneyField(required=False, allow_null=True, default=None, help_text="A top-up's amount.")
        pack = serializers.IntegerField(required=False, allow_null=True, default=None, min_value=1)
        success_url = StringField(max_length=2000, help_text="May hold {CHECKOUT_SESSION_ID}.")
        cancel_url = StringField(max_length=2000)

    @extend_schema(
        request=CheckoutSessionInput,
        responses={201: CheckoutSessionOutput, **errors(404, 409, 503)},
        description="Open a Stripe Checkout Session for a wallet top-up or one of the plan's credit packs. "
        "Nothing is credited until Stripe says the session is paid; an expired session credits nothing.",
    )
    def post(self, request: Request, external_id: str) -> Response:
        data = self.CheckoutSessionInput(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        checkout = checkout_session_create(
            customer=customer_by_external_id(external_id),
            kind=values["kind"],
            amount=values["amount"],
            pack_id=values["pack"],
            success_url=values["success_url"],
            cancel_url=values["cancel_url"],
        )
        return Response(CheckoutSessionOutput(checkout).data, status=status.HTTP_201_CREATED)


# --- automatic top-up -----------------------------------------------------------------------------------


class SavedCardOutput(serializers.Serializer):
    brand = serializers.CharField()
    last4 = serializers.CharField()
    exp_month = serializers.IntegerField(allow_null=True)
    exp_year = serializers.IntegerField(allow_null=True)


class AutoTopUpOutput(serializers.Serializer):
    object = serializers.CharField(default="auto_top_up")
    enabled = serializers.BooleanField()
    threshold = AmountString(allow_null=True)
    amount = AmountString(allow_null=True)
    monthly_cap = AmountString(allow_null=True)
    currency = serializers.CharField()
    charged_this_month = AmountString()
    consecutive_failures = serializers.IntegerField()
    disabled_reason = serializers.CharField(help_text="Why it turned itself off, if it did.")
    offered = serializers.BooleanField(help_text="Whether it may be turned on now.")
    unavailable_reason = serializers.CharField(help_text="Why not, when it may not.")
    payment_method = SavedCardOutput(allow_null=True)


def auto_top_up_output(customer: Any) -> dict[str, Any]:
    state = auto_top_up_state(customer=customer)
    row = state.settings
    return AutoTopUpOutput(
        {
            "enabled": state.enabled,
            "threshold": row.threshold if row else None,
            "amount": row.amount if row else None,
            "monthly_cap": row.monthly_cap if row else None,
            "currency": state.currency,
            "charged_this_month": state.charged_this_month,
            "consecutive_failures": row.consecutive_failures if row else 0,
            "disabled_reason": row.disabled_reason if row else "",
            "offered": state.offered,
            "unavailable_reason": state.unavailable_reason,
            "payment_method": state.payment_method,
        }
    ).data


class AutoTopUpView(CustomerEndpoint):
    class AutoTopUpInput(serializers.Serializer):
        enabled = serializers.BooleanField()
        threshold = MoneyField(help_text="Top up when the wallet falls below this.")
        amount = MoneyField(help_text="What each top-up adds.")
        monthly_cap = MoneyField(help_text="At most this much a calendar month (UTC).")

    @extend_schema(responses={200: AutoTopUpOutput, **errors(404)})
    def get(self, request: Request, external_id: str) -> Response:
        return Response(auto_top_up_output(customer_by_external_id(external_id)))

    @extend_schema(request=AutoTopUpInput, responses={200: AutoTopUpOutput, **errors(404, 409)})
    def put(self, request: Request, external_id: str) -> Response:
        data = self.AutoTopUpInput(data=request.data)
        data.is_valid(raise_exception=True)
        customer = customer_by_external_id(external_id)
        auto_top_up_update(customer=customer, **data.validated_data)
        return Response(auto_top_up_output(customer))


# --- invoices -------------------------------------------------------------------------------------------


class InvoiceLineOutput(serializers.Serializer):
    description = serializers.CharField()
    amount = AmountString(unit_source="invoice.currency")
    quantity = DecimalString(allow_null=True)
    period_start = Timestamp(allow_null=True)
    period_end = Timestamp(allow_null=True)


class InvoiceOutput(serializers.Serializer):
    object = serializers.CharField(default="invoice")
    id = serializers.CharField(source="stripe_invoice_id")
    number = serializers.CharField()
    status = serializers.CharField()
    currency = serializers.CharField()
    total = AmountString()
    amount_due = AmountString()
    amount_paid = AmountString()
    amount_remaining = AmountString()
    period_start = Timestamp()
    period_end = Timestamp()
    created = Timestamp(source="stripe_created_at")
    paid_at = Timestamp(allow_null=True)
    payment_failed_at = Timestamp(allow_null=True)
    hosted_invoice_url = serializers.CharField()
    lines = InvoiceLineOutput(many=True, source="lines.all")


class InvoiceListOutput(serializers.Serializer):
    object = serializers.CharField(default="list")
    # DRF moves declared fields off the class, so this does not hide ``Serializer.data`` (mypy cannot know).
    data = InvoiceOutput(many=True)  # type: ignore[assignment]
    has_more = serializers.BooleanField()


class InvoicesView(CustomerEndpoint):
    @extend_schema(
        parameters=[
            OpenApiParameter("limit", OpenApiTypes.INT, description=f"1 to {MAX_PAGE}; 10 by default."),
            OpenApiParameter(
                "starting_after", OpenApiTypes.STR, description="The last id of the previous page."
            ),
        ],
        responses={200: InvoiceListOutput, **errors(404)},
    )
    def get(self, request: Request, external_id: str) -> Response:
        raw_limit = request.query_params.get("limit", "10")
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_PAGE:
            raise InvalidInput(f"limit must be a whole number from 1 to {MAX_PAGE}.", param="limit")
        page = customer_invoices(
            customer=customer_by_external_id(external_id),
            limit=int(raw_limit),
            starting_after=request.query_params.get("starting_after") or None,
        )
        return Response(InvoiceListOutput({"data": page.invoices, "has_more": page.has_more}).data)


class UpcomingInvoiceLineOutput(serializers.Serializer):
    kind = serializers.ChoiceField(choices=["usage", "base_fee_adjustment", "base_fee"])
    description = serializers.CharField()
    amount = AmountString()
    period_start = Timestamp()
    period_end = Timestamp()


class UpcomingInvoiceOutput(serializers.Serializer):
    object = serializers.CharField(default="upcoming_invoice")
    currency = serializers.CharField()
    period_start = Timestamp(help_text="The period whose usage it bills.")
    period_end = Timestamp(help_text="When Stripe issues it.")
    total = AmountString()
    amount_due = AmountString(help_text="The total, or zero when the total is negative.")
    lines = UpcomingInvoiceLineOutput(many=True)


class UpcomingInvoiceView(CustomerEndpoint):
    @extend_schema(responses={200: UpcomingInvoiceOutput, **errors(404, 409)})
    def get(self, request: Request, external_id: str) -> Response:
        preview = upcoming_invoice_preview(customer=customer_by_external_id(external_id))
        return Response(UpcomingInvoiceOutput(preview).data)
