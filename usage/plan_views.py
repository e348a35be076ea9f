"""/settings/plan: the published plans beside this period's bill on each, the customer's own change, and a price
change ahead with its choice (keep the current version, or accept the new one)."""

from typing import Any

from django.http import HttpResponse, HttpResponseForbidden
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect

from core.errors import BillingError, InvalidInput
from customers.models import Member, Subscription
from customers.services import plan_version_for_code
from usage.plan_migrations import price_change_choose
from usage.selectors import usage_period_summary
from usage.selectors.plan_comparison import plan_comparison
from usage.selectors.price_changes import price_change_notices
from usage.services import plan_change_starts, subscription_plan_choose
from usage.views import HtmxHttpRequest, member_required

TEMPLATE = "usage/settings_plan.html"


@require_GET
@member_required
def settings_plan(request: HtmxHttpRequest, member: Member) -> HttpResponse:
    return render(request, TEMPLATE, _context(member, done=request.GET.get("done", "")))


@require_POST
@member_required
def settings_plan_choose(request: HtmxHttpRequest, member: Member) -> HttpResponse:
    if not member.is_admin:
        return HttpResponseForbidden("Only an admin of the account can change its plan.")
    try:
        version = plan_version_for_code(request.POST.get("plan", ""))
        if not version.plan.is_public or version.currency.lower() != member.customer.currency.lower():
            raise BillingError("That plan is not offered to this account.")
        choice = subscription_plan_choose(
            customer=member.customer, plan_version=version, by=request.user.get_username()
        )
    except BillingError as error:
        return render(request, TEMPLATE, _context(member, error=error.message), status=400)
    url = f"{reverse('settings-plan')}?done={choice.starts}"
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


@require_POST
@member_required
def settings_plan_price_change(request: HtmxHttpRequest, member: Member) -> HttpResponse:
    """Keep or accept a price change, by an admin of the account: the same rule as the email's link."""
    if not member.is_admin:
        return HttpResponseForbidden("Only an admin of the account can choose.")
    notice_id = request.POST.get("notice", "")
    try:
        if not notice_id.isdigit():
            raise InvalidInput("Which price change? The form sent none.", param="notice")
        result = price_change_choose(
            notice_id=int(notice_id),
            choice=request.POST.get("choice", ""),
            by=f"plan page ({request.user.get_username()})",
            customer=member.customer,
        )
    except BillingError as error:
        return render(request, TEMPLATE, _context(member, error=error.message), status=error.http_status)
    if not result.changed:
        already = f"Already chosen: {result.notice.get_choice_display()}. Nothing was changed."
        return render(request, TEMPLATE, _context(member, error=already), status=409)
    url = f"{reverse('settings-plan')}?done=price-{result.notice.choice}"
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


DONE = ("now", "renewal", "unchanged", "price-keep", "price-accept")


def _context(member: Member, *, done: str = "", error: str = "") -> dict[str, Any]:
    customer = member.customer
    subscription = (
        Subscription.objects.select_related("plan_version__plan", "pending_plan_version__plan")
        .filter(customer=customer)
        .first()
    )
    if subscription is None:
        return {"member": member, "is_admin": member.is_admin, "subscription": None}
    summary = usage_period_summary(customer=customer)
    comparison = plan_comparison(customer=customer, summary=summary)
    choices = [
        {
            "bill": bill,
            "starts": "current"
            if bill.current
            else plan_change_starts(current=subscription.plan_version, chosen=bill.version),
            "pending": subscription.pending_plan_version_id == bill.version.pk,
        }
        for bill in comparison.plans
    ]
    return {
        "member": member,
        "is_admin": member.is_admin,
        "subscription": subscription,
        "summary": summary,
        "comparison": comparison,
        "choices": sorted(choices, key=lambda choice: (choice["bill"].base_fee, choice["bill"].code)),
        "done": done if done in DONE else "",
        "price_changes": price_change_notices(customer=customer),
        "error": error,
    }
