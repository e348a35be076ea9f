"""A price change's choice by the one-click link of the email (the plan page's buttons are in plan_views).

The link works without logging in (it is signed, names one notice and one choice, expires with the date to
choose by, and works once), but a GET only shows what would be chosen, with a button: mail scanners open the
links of every email they pass, and must not choose for the customer.
"""

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from core.errors import BillingError
from customers.selectors import member_for_user
from usage.models import MigrationChoice
from usage.plan_migrations import (
    PriceChangeClosed,
    price_change_choose,
    price_change_headline,
    price_change_link_read,
)

TEMPLATE = "usage/price_change_choice.html"


@require_http_methods(["GET", "POST"])
def price_change_choice(request: HttpRequest, token: str) -> HttpResponse:
    """GET: "Keep my current plan?" with a button. POST: record it, once."""
    try:
        notice, choice = price_change_link_read(token)
    except BillingError as error:
        return render(request, TEMPLATE, {"error": error.message}, status=400)
    if request.user.is_authenticated:
        member = member_for_user(request.user)
        if member is not None and member.customer_id != notice.customer_id:
            # Someone else's link, opened while logged in to another account: nothing of theirs is shown.
            return render(
                request,
                TEMPLATE,
                {"error": "This link belongs to another account. Log out, or open your own email's link."},
                status=403,
            )
    context: dict[str, Any] = {"notice": notice, "choice": choice, "headline": price_change_headline(notice)}
    if notice.choice != MigrationChoice.PENDING:
        return render(
            request, TEMPLATE, context | {"already": True}, status=200 if request.method == "GET" else 409
        )
    if notice.skipped_reason or timezone.now() >= notice.choose_by:
        return render(request, TEMPLATE, context | {"expired": True}, status=400)
    if request.method == "GET":
        return render(request, TEMPLATE, context)
    who = request.user.get_username() if request.user.is_authenticated else ""
    try:
        result = price_change_choose(
            notice_id=notice.pk, choice=choice, by=f"email link{f' ({who})' if who else ''}"
        )
    except PriceChangeClosed:
        return render(request, TEMPLATE, context | {"expired": True}, status=400)
    context["notice"] = result.notice
    if not result.changed:
        return render(request, TEMPLATE, context | {"already": True}, status=409)
    return render(request, TEMPLATE, context | {"done": True})
