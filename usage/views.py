"""/settings/usage: the customer's usage page, its HTMX partials and the limits form.

Every number comes from ``usage.selectors``, the same functions behind the usage API. Each
region of the page is a ``{% partialdef %}`` of ``usage/settings_usage.html``; HTMX polls them
every 30 s and the view renders only the region asked for. Everything is scoped to the logged-in
user's customer (through their ``Member``): an id from another customer is a 404.
"""

import ast
import gzip
import re
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache, wraps
from pathlib import Path
from typing import Any

import plotly
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseForbidden
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import trigger_client_event
from django_htmx.middleware import HtmxDetails

from billing_app.stripe.reconciliation import customer_reconcile_queue
from core.errors import InvalidInput, NotFound
from core.money import format_money
from customers.models import Customer, Member
from customers.selectors import member_for_user
from customers.services import notification_mark_read, spend_controls_update
from usage.forms import SpendLimitsForm
from usage.payment_regions import checkout_redirect_allow, invoices_context, payments_context
from usage.selectors import (
    BillingPeriod,
    DailySeries,
    NoBillingPeriod,
    UsageSummary,
    format_amount,
    format_quantity,
    usage_daily_series,
    usage_member_breakdown,
    usage_notifications,
    usage_period_resolve,
    usage_period_summary,
    usage_periods,
    usage_top_actions,
    usage_wallet,
)
from usage.selectors.listings import usage_corrections
from usage.selectors.plan_comparison import plan_comparison, upgrade_prompt
from usage.selectors.series import MeterSeries

TEMPLATE = "usage/settings_usage.html"


class HtmxHttpRequest(HttpRequest):
    """A request after django-htmx's middleware, as its docs suggest for type checking."""

    htmx: HtmxDetails
    current_usage_summary: UsageSummary


REFRESH_EVENT = "usage-changed"  # fired after a change on the page, so the numbers refresh at once


def member_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Log-in required, and a member of a customer: the dashboard is for customers' users.

    Staff without a membership are sent to the admin; anyone else logged in without one gets a
    403 page that says why.
    """

    @login_required
    @wraps(view)
    def wrapper(request: HtmxHttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        member = member_for_user(request.user)
        if member is None:
            if request.user.is_staff:
                return redirect("admin:index")
            return render(request, "usage/no_membership.html", status=403)
        return view(request, member, *args, **kwargs)

    return wrapper


# --- The page and its regions ---------------------------------------------------------------------


@require_GET
@member_required
def settings_usage(request: HtmxHttpRequest, member: Member) -> HttpResponse:
    # The customer is looking: check their Stripe meters soon (queued, at most once per few minutes).
    customer_reconcile_queue(customer=member.customer)
    period = _period_from(request, member.customer)
    if period is None:
        return render(request, TEMPLATE, {**base_context(member, None), "no_period": True})
    context = base_context(member, period)
    for build in PARTIALS.values():
        context.update(build(request, member, period))
    return checkout_redirect_allow(render(request, TEMPLATE, context))


@require_GET
@member_required
def settings_usage_partial(request: HtmxHttpRequest, member: Member, name: str) -> HttpResponse:
    build = PARTIALS.get(name)
    if build is None:
        raise Http404("No such part of the page.")
    if not request.htmx:
        # Without HTMX a region alone is no page: show the whole page at the same period.
        return redirect(_page_url(request.GET.get("period")))
    period = _period_from(request, member.customer)
    if period is None:
        raise Http404("No billing period yet.")
    context = {**base_context(member, period), **build(request, member, period)}
    return render(request, f"{TEMPLATE}#{name}", context)


def _summary(request: HtmxHttpRequest, member: Member, period: BillingPeriod) -> dict[str, Any]:
    summary = usage_period_summary(customer=member.customer, period_start=period)
    if period.is_current:
        request.current_usage_summary = summary  # the limits region reads the same numbers
    return {"summary": summary}


def _plans(request: HtmxHttpRequest, member: Member, period: BillingPeriod) -> dict[str, Any]:
    # What to buy next is about the period still running.
    if not period.is_current:
        return {"plan_comparison": None, "upgrade_prompt": None}
    summary = getattr(request, "current_usage_summary", None) or usage_period_summary(
        customer=member.customer
    )
    comparison = plan_comparison(customer=member.customer, summary=summary)
    return {
        "plan_comparison": comparison,
        "upgrade_prompt": upgrade_prompt(summary=summary, comparison=comparison),
    }


def _chart(request: HtmxHttpRequest, member: Member, period: BillingPeriod) -> dict[str, Any]:
    series = usage_daily_series(customer=member.customer, period_start=period)
    return {"series": series, "chart_data": chart_payload(series)}


def _top_actions(request: HtmxHttpRequest, member: Member, period: BillingPeriod) -> dict[str, Any]:
    # Grouped by meter, as the chart is (the sort is stable: each meter's lines keep their order).
    lines = sorted(
        usage_top_actions(customer=member.customer, period_start=period), key=lambda line: line.meter_name
    )
    return {"top_actions": lines, "top_actions_show_meter": len({line.meter_key for line in lines}) > 1}


def _members(request: HtmxHttpRequest, member: Member, period: BillingPeriod) -> dict[str, Any]:
    # A member sees only their own line; admins see who drives usage.
    only = None if member.is_admin else member
    lines = sorted(
        usage_member_breakdown(customer=member.customer, period_start=period, only_member=only),
        key=lambda line: line.meter_name,
    )
    return {"member_lines": lines, "member_lines_show_meter": len({line.meter_key for line in lines}) > 1}


def _limits(request: HtmxHttpRequest, member: Member, period: BillingPeriod) -> dict[str, Any]:
    # Limits act on the current period, whichever period the page shows.
    summary = getattr(request, "current_usage_summary", None) or usage_period_summary(
        customer=member.customer
    )
    form = SpendLimitsForm.for_summary(summary)
    return {"limits_summary": summary, "limits_form": form}


def _corrections(request: HtmxHttpRequest, member: Member, period: BillingPeriod) -> dict[str, Any]:
    return {"corrections": usage_corrections(customer=member.customer, period_start=period.start)}


def _wallet(request: HtmxHttpRequest, member: Member, period: BillingPeriod) -> dict[str, Any]:
    return {"wallet": usage_wallet(customer=member.customer)}


def _notifications(request: HtmxHttpRequest, member: Member, period: BillingPeriod) -> dict[str, Any]:
    return {"notifications": usage_notifications(customer=member.customer)}


def _payments(request: HtmxHttpRequest, member: Member, period: BillingPeriod) -> dict[str, Any]:
    return payments_context(member)


def _invoices(request: HtmxHttpRequest, member: Member, period: BillingPeriod) -> dict[str, Any]:
    return invoices_context(member)


PARTIALS: dict[str, Callable[[HtmxHttpRequest, Member, BillingPeriod], dict[str, Any]]] = {
    "summary": _summary,
    "plans": _plans,
    "chart": _chart,
    "top_actions": _top_actions,
    "members": _members,
    "limits": _limits,
    "corrections": _corrections,
    "wallet": _wallet,
    "notifications": _notifications,
    "payments": _payments,
    "invoices": _invoices,
}


def page_render(
    request: HtmxHttpRequest, member: Member, *, extra: dict[str, Any], status: int = 200
) -> HttpResponse:
    """The whole page at the current period, with ``extra`` over the regions' own context (a form with its
    errors, when a write without JavaScript was refused)."""
    period = _period_from(request, member.customer)
    if period is None:
        return render(
            request, TEMPLATE, {**base_context(member, None), "no_period": True, **extra}, status=status
        )
    context = base_context(member, period)
    for build in PARTIALS.values():
        context.update(build(request, member, period))
    return checkout_redirect_allow(render(request, TEMPLATE, {**context, **extra}, status=status))


# --- Writes -----------------------------------------------------------------------------------------


@require_POST
@member_required
def limits_update(request: HtmxHttpRequest, member: Member) -> HttpResponse:
    if not member.is_admin:
        return HttpResponseForbidden("Only an admin of the account can change its limits.")
    customer = member.customer
    summary = usage_period_summary(customer=customer)
    form = SpendLimitsForm(request.POST, currency=summary.currency, meters=summary.meters)
    saved = False
    if form.is_valid():
        try:
            spend_controls_update(
                customer=customer,
                soft_limit=form.cleaned_data["soft_limit"],
                hard_limit=form.cleaned_data["hard_limit"],
                block_overage=form.cleaned_data["block_overage"],
                meter_limits=form.meter_limits(),
                default_soft_limit_off=form.default_soft_limit_off_choice(),
            )
            saved = True
        except InvalidInput as error:
            # The service is the last word (the API saves through it too); show its reason.
            for field, message in (error.details.get("fields") or {"__all__": error.message}).items():
                form.add_error(field if field in form.fields else None, str(message))
    if saved and not request.htmx:
        return redirect(_page_url(None) + "?saved=limits#limits")
    if saved:
        summary = usage_period_summary(customer=customer)
        form = SpendLimitsForm.for_summary(summary)
    context = {
        **base_context(member, summary.period),
        "limits_summary": summary,
        "limits_form": form,
        "limits_saved": saved,
    }
    if request.htmx:
        # Answer 200 even with errors: htmx does not swap 4xx responses by default.
        response = render(request, f"{TEMPLATE}#limits", context)
        return trigger_client_event(response, REFRESH_EVENT) if saved else response
    # Without JavaScript, show the whole page again with the errors next to the fields.
    for build in PARTIALS.values():
        if build is not _limits:
            context.update(build(request, member, summary.period))
    return render(request, TEMPLATE, context, status=400)


@require_POST
@member_required
def notification_read(request: HtmxHttpRequest, member: Member, notification_id: int) -> HttpResponse:
    if not member.is_admin:
        return HttpResponseForbidden("Only an admin of the account can mark notifications read.")
    if not member.customer.notifications.filter(pk=notification_id).exists():
        raise Http404("No such notification.")
    notification_mark_read(customer=member.customer, notification_id=notification_id)
    return _after_notifications_change(request, member)


@require_POST
@member_required
def notifications_read_all(request: HtmxHttpRequest, member: Member) -> HttpResponse:
    if not member.is_admin:
        return HttpResponseForbidden("Only an admin of the account can mark notifications read.")
    unread = member.customer.notifications.filter(read_at__isnull=True).values_list("pk", flat=True)
    for notification_id in list(unread):
        notification_mark_read(customer=member.customer, notification_id=notification_id)
    return _after_notifications_change(request, member)


def _after_notifications_change(request: HtmxHttpRequest, member: Member) -> HttpResponse:
    if not request.htmx:
        return redirect(_page_url(None) + "#notifications")
    context = {
        **base_context(member, _period_from(request, member.customer)),
        "notifications": usage_notifications(customer=member.customer),
    }
    return render(request, f"{TEMPLATE}#notifications", context)


# --- plotly.js, from the installed plotly package -----------------------------------------------------

PLOTLY_VERSION = plotly.__version__
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


@lru_cache(maxsize=2)
def _plotly_bytes(compressed: bool) -> bytes:
    raw = PLOTLY_JS.read_bytes()
    return gzip.compress(raw, compresslevel=6, mtime=0) if compressed else raw


@require_GET
def plotly_js(request: HttpRequest, version: str) -> HttpResponse:
    """plotly.min.js as shipped in the plotly wheel, so the page needs no CDN and no copy in the repo.

    The URL carries the version, so browsers may keep it for a year.
    """
    if version != PLOTLY_VERSION:
        raise Http404("Not this plotly.js version.")
    gzipped = "gzip" in request.headers.get("Accept-Encoding", "")
    response = HttpResponse(_plotly_bytes(gzipped), content_type="text/javascript; charset=utf-8")
    if gzipped:
        response["Content-Encoding"] = "gzip"
    response["Vary"] = "Accept-Encoding"
    response["Cache-Control"] = "public, max-age=31536000, immutable"
    return response


# plotly.js would inject its own stylesheet as a <style> element, which our Content-Security-Policy refuses.
# It skips that when the page already has an element with the stylesheet's id and the class
# "no-inline-styles"; the page links this stylesheet so, built from the rules in the same plotly.min.js.
PLOTLY_CSS_RULES = re.compile(r"\{\"X,X div\":[^}]*\}")
PLOTLY_CSS_RULE = re.compile(
    r"""("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'):("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')"""
)


@lru_cache(maxsize=1)
def _plotly_css() -> str:
    found = PLOTLY_CSS_RULES.search(PLOTLY_JS.read_text(encoding="utf-8"))
    if found is None:
        raise RuntimeError(f"plotly {PLOTLY_VERSION}: its stylesheet rules were not found in plotly.min.js.")
    lines = []
    for selector, declarations in PLOTLY_CSS_RULE.findall(found.group(0)):
        # The placeholders plotly.js replaces itself (src/css/plotcss.js) before it inserts a rule.
        full = (
            ast.literal_eval(selector)
            .replace("X", ".js-plotly-plot .plotly")
            .replace("Y", ".plotly-notifier")
        )
        lines.append(f"{full} {{{ast.literal_eval(declarations)}}}")
    # plotly.js inserts each rule at the top of its sheet, so the last of them comes first.
    return "\n".join(reversed(lines)) + "\n"


# plotly.js also injects maplibre's stylesheet for map traces, unless an element with its id is on the page.
# The usage chart draws no map, so the page holds an empty element of that id (see settings_usage.html).
PLOTLY_MAP_STYLE_ID = re.compile(
    r'getElementById\("([0-9a-f]{64})"\)\)\{var \w+=document\.createElement\("style"\)'
)


@lru_cache(maxsize=1)
def plotly_map_style_id() -> str | None:
    """None if another plotly.js hides it otherwise: the page still works (the browser test names the refusal)."""
    found = PLOTLY_MAP_STYLE_ID.search(PLOTLY_JS.read_text(encoding="utf-8"))
    return found.group(1) if found else None


@require_GET
def plotly_css(request: HttpRequest, version: str) -> HttpResponse:
    """The stylesheet plotly.js would otherwise inject; versioned and cached like plotly_js."""
    if version != PLOTLY_VERSION:
        raise Http404("Not this plotly.js version.")
    response = HttpResponse(_plotly_css(), content_type="text/css; charset=utf-8")
    response["Cache-Control"] = "public, max-age=31536000, immutable"
    return response


# --- Helpers ------------------------------------------------------------------------------------------


def _period_from(request: HtmxHttpRequest, customer: Customer) -> BillingPeriod | None:
    """The period ``?period=`` names (the current one by default); 404 for one the customer lacks."""
    try:
        return usage_period_resolve(customer=customer, period_start=request.GET.get("period"))
    except NoBillingPeriod:
        return None
    except (InvalidInput, NotFound) as error:
        raise Http404(error.message) from error


def base_context(member: Member, period: BillingPeriod | None) -> dict[str, Any]:
    periods = usage_periods(customer=member.customer)
    return {
        "member": member,
        "customer": member.customer,
        "is_admin": member.is_admin,
        "period": period,
        "periods": periods,
        "period_query": f"?period={period.key}" if period and not period.is_current else "",
        "poll": bool(period and period.is_current),
        "plotly_version": PLOTLY_VERSION,
        "plotly_map_style_id": plotly_map_style_id(),
    }


def _page_url(period_key: str | None) -> str:
    url = reverse("settings-usage")
    return f"{url}?period={period_key}" if period_key else url


def chart_payload(series: DailySeries) -> dict[str, Any]:
    """What usage_chart.js draws. Floats here only: they are chart coordinates, the hover text is exact.

    A meter is drawn as customers see it (``plans.display``): a money meter as what each day cost, a product
    unit divided into it, other meters in their own units."""
    meters = []
    days_in_period = (series.period.end - series.period.start).total_seconds() / 86400
    for meter in series.meters:
        if meter.display.in_money:
            meters.append(_money_chart(meter, days_in_period))
            continue
        display = meter.display
        unit = display.label()
        included = display.quantity(meter.included)
        hover, cumulative_hover = [], []
        for point in meter.points:
            label = _day_label(point.day)
            shown = display.quantity(point.quantity)
            text = f"{label}: {format_quantity(shown)} {display.label(shown)}"
            if meter.included > 0 and point.beyond_included > 0:
                text += f" ({format_quantity(display.quantity(point.beyond_included))} past included)"
            text += f" · {format_amount(point.cost, meter.cost_unit)}"
            hover.append(text)
            cumulative_hover.append(
                f"{label}: {format_quantity(display.quantity(point.cumulative))} {unit} so far this period"
                + (f" of {format_quantity(included)} included" if meter.included > 0 else "")
            )
        meters.append(
            {
                "key": meter.key,
                "name": meter.name,
                "unit": unit,
                "included": float(included) if meter.included > 0 else None,
                "dailyPace": float(included) / days_in_period if meter.included > 0 else None,
                "days": [point.day.isoformat() for point in meter.points],
                "quantity": [float(display.quantity(point.quantity)) for point in meter.points],
                "cumulative": [float(display.quantity(point.cumulative)) for point in meter.points],
                "hover": hover,
                "cumulativeHover": cumulative_hover,
            }
        )
    # Open on the meter that costs the most so far: what a customer checking the bill looks for.
    costs = {meter.key: sum((point.cost for point in meter.points), Decimal(0)) for meter in series.meters}
    default = max(costs, key=lambda key: costs[key]) if costs and max(costs.values()) > 0 else None
    return {"meters": meters, "defaultMeter": default}


def _money_chart(meter: MeterSeries, days_in_period: float) -> dict[str, Any]:
    """A money meter's chart: what each day's usage cost, in the plan currency. Included usage costs nothing,
    so there is no allowance line: the customer sees the money, not the units behind it."""
    hover = [
        f"{_day_label(p.day)}: {format_money(p.money, meter.currency)} of {meter.name}" for p in meter.points
    ]
    cumulative_hover = [
        f"{_day_label(p.day)}: {format_money(p.cumulative_money, meter.currency)} so far this period"
        for p in meter.points
    ]
    return {
        "key": meter.key,
        "name": meter.name,
        "unit": meter.currency.upper(),
        "included": None,
        "dailyPace": None,
        "days": [point.day.isoformat() for point in meter.points],
        "quantity": [float(point.money) for point in meter.points],
        "cumulative": [float(point.cumulative_money) for point in meter.points],
        "hover": hover,
        "cumulativeHover": cumulative_hover,
    }


def _day_label(day: date | datetime) -> str:
    return f"{day:%a %b} {day.day}"
