"""The money-in writes of /settings/usage: open a Checkout Session, come back from it, save automatic top-up.

Only a customer's admins pay or change anything; members see the regions without their forms.
"""

import logging
from decimal import Decimal, InvalidOperation

from django.http import Http404, HttpResponse, HttpResponseForbidden
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from billing_app.auto_top_up import auto_top_up_update
from billing_app.models import CheckoutKind, CheckoutSession, CheckoutStatus
from billing_app.stripe.checkout import checkout_session_create, checkout_session_refresh
from core.errors import BillingError
from customers.models import Member
from usage.payment_regions import AutoTopUpForm, payments_context
from usage.views import TEMPLATE, HtmxHttpRequest, base_context, member_required, page_render

logger = logging.getLogger(__name__)

FORBIDDEN = "Only an admin of the account can pay or change payments."


def _page_url(anchor: str, **query: str) -> str:
    url = reverse("settings-usage")
    if query:
        url += "?" + "&".join(f"{key}={value}" for key, value in query.items())
    return f"{url}#{anchor}"


@require_POST
@member_required
def checkout_start(request: HtmxHttpRequest, member: Member) -> HttpResponse:
    """Open a Checkout Session for the form's top-up or pack, and send the browser to Stripe's page."""
    if not member.is_admin:
        return HttpResponseForbidden(FORBIDDEN)
    kind = request.POST.get("kind", "")
    try:
        amount = Decimal(request.POST["amount"]) if kind == CheckoutKind.TOP_UP else None
        pack_id = int(request.POST["pack"]) if kind == CheckoutKind.CREDIT_PACK else None
    except (KeyError, InvalidOperation, ValueError):
        return _payments_error(request, member, "Enter an amount, or choose a pack.")
    if amount is not None and not amount.is_finite():
        return _payments_error(request, member, "Enter an amount, or choose a pack.")
    return_url = request.build_absolute_uri(reverse("settings-usage-checkout-return"))
    try:
        checkout = checkout_session_create(
            customer=member.customer,
            kind=kind,
            amount=amount,
            pack_id=pack_id,
            success_url=f"{return_url}?session_id={{CHECKOUT_SESSION_ID}}",
            cancel_url=request.build_absolute_uri(_page_url("payments", checkout="canceled")),
        )
    except BillingError as error:
        return _payments_error(request, member, error.message)
    if request.htmx:
        response = HttpResponse(status=204)
        response["HX-Redirect"] = checkout.url
        return response
    return redirect(checkout.url)


def _payments_error(request: HtmxHttpRequest, member: Member, message: str) -> HttpResponse:
    context = {**payments_context(member), "payments_error": message}
    if request.htmx:
        # 200: htmx does not swap error answers by default.
        return render(request, f"{TEMPLATE}#payments", {**base_context(member, None), **context})
    return page_render(request, member, extra=context, status=400)


@require_GET
@member_required
def checkout_return(request: HtmxHttpRequest, member: Member) -> HttpResponse:
    """Where Stripe sends the browser after paying. The session is looked up at once (Stripe's advice), so
    the page shows the new balance even before the webhook arrives; if the look-up fails, the webhook or the
    sweep credits it."""
    checkout = CheckoutSession.objects.filter(
        customer=member.customer, stripe_session_id=request.GET.get("session_id") or ""
    ).first()
    if checkout is None:
        raise Http404("No such payment.")
    try:
        checkout = checkout_session_refresh(checkout=checkout)
    except Exception:
        # Any trouble reaching Stripe or crediting: the webhook or the sweep settles it, and the page says
        # the payment is being confirmed.
        logger.exception("Looking up Checkout Session %s failed", checkout.stripe_session_id)
        checkout.refresh_from_db()
    outcome = "complete" if checkout.status == CheckoutStatus.COMPLETE else "pending"
    return redirect(_page_url("payments", checkout=outcome))


@require_POST
@member_required
def auto_top_up_save(request: HtmxHttpRequest, member: Member) -> HttpResponse:
    if not member.is_admin:
        return HttpResponseForbidden(FORBIDDEN)
    form = AutoTopUpForm(request.POST)
    saved = False
    if form.is_valid():
        try:
            auto_top_up_update(customer=member.customer, **form.cleaned_data)
            saved = True
        except BillingError as error:
            # The service is the last word (the API saves through it too); show its reason.
            param = error.details.get("param")
            form.add_error(param if param in form.fields else None, error.message)
    if saved and not request.htmx:
        return redirect(_page_url("payments", saved="auto-top-up"))
    context = {**payments_context(member), "auto_top_up_saved": saved}
    if not saved:
        context["auto_top_up_form"] = form
    if request.htmx:
        return render(request, f"{TEMPLATE}#payments", {**base_context(member, None), **context})
    return page_render(request, member, extra=context, status=400)
