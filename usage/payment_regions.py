"""What the money-in regions of /settings/usage show: add funds and credit packs (Stripe Checkout), automatic
top-up, and invoices with the upcoming one. The numbers come from ``billing_app`` (its checkout, auto top-up
and invoice reads); this module only gathers them for the page and holds the auto top-up form.

The usage page is the customer's billing page, so it reads ``billing_app`` here and in ``usage.payment_views``;
nothing else in ``usage`` does.
"""

from decimal import Decimal
from typing import Any

from django import forms
from django.http import HttpResponse

from billing_app.auto_top_up import AutoTopUpState, auto_top_up_state
from billing_app.invoices import customer_invoices, upcoming_invoice_preview
from billing_app.stripe.checkout import checkout_page_origin, credit_packs_for_sale, top_up_bounds
from billing_app.stripe.client import stripe_connected
from core.money import format_money
from customers.models import Member
from plans.models import MONEY
from usage.errors import NoSubscription

INVOICES_ON_PAGE = 12


class AutoTopUpForm(forms.Form):
    """Saved through ``billing_app.auto_top_up.auto_top_up_update``, which the API saves through too."""

    enabled = forms.BooleanField(label="Top up automatically", required=False)
    threshold = forms.DecimalField(
        label="When the wallet falls below",
        min_value=Decimal(0),
        max_digits=MONEY["max_digits"],
        decimal_places=2,
    )
    amount = forms.DecimalField(
        label="Add", min_value=Decimal("0.01"), max_digits=MONEY["max_digits"], decimal_places=2
    )
    monthly_cap = forms.DecimalField(
        label="At most, per month",
        min_value=Decimal("0.01"),
        max_digits=MONEY["max_digits"],
        decimal_places=2,
    )

    @classmethod
    def for_state(cls, state: AutoTopUpState) -> "AutoTopUpForm":
        row = state.settings
        bounds = top_up_bounds(customer=state.customer)
        amount = row.amount if row else max(bounds.minimum, Decimal(25))
        cents = Decimal("0.01")
        return cls(
            initial={
                "enabled": state.enabled,
                "threshold": (row.threshold if row else Decimal(10)).quantize(cents),
                "amount": amount.quantize(cents),
                "monthly_cap": (row.monthly_cap if row else amount * 4).quantize(cents),
            }
        )


def payments_context(member: Member) -> dict[str, Any]:
    """Add funds, credit packs and automatic top-up."""
    customer = member.customer
    state = auto_top_up_state(customer=customer)
    packs = [
        {
            "id": pack.pk,
            "credits": pack.credits,
            "price_display": format_money(pack.amount, customer.currency),
        }
        for pack in credit_packs_for_sale(customer=customer)
    ]
    return {
        "payments_connected": stripe_connected(),
        "top_up_bounds": top_up_bounds(customer=customer),
        "credit_packs": packs,
        "auto_top_up": state,
        "auto_top_up_form": AutoTopUpForm.for_state(state),
    }


def invoices_context(member: Member) -> dict[str, Any]:
    customer = member.customer
    try:
        upcoming = upcoming_invoice_preview(customer=customer)
    except NoSubscription:
        upcoming = None
    return {
        "invoices": customer_invoices(customer=customer, limit=INVOICES_ON_PAGE).invoices,
        "upcoming_invoice": upcoming,
    }


def checkout_redirect_allow(response: HttpResponse) -> HttpResponse:
    """Let the page's forms redirect to Stripe's payment page (CSP ``form-action`` covers redirects)."""
    response._csp_update = {"form-action": [checkout_page_origin()]}  # type: ignore[attr-defined]
    return response
