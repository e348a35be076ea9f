"""Staff pages beside the admin: the research behind a price change, for one plan version, and publishing it
with its effect on existing subscribers; the margin report."""

import csv
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from core.errors import BillingError, InvalidInput
from core.money import format_money
from plans.models import ChangeEffect, PlanVersion, VersionStatus
from plans.selectors import prices_with_rates
from plans.services import plan_version_publish
from usage.selectors.margins import (
    MarginGroup,
    MarginRow,
    MarginSort,
    margin_group_parse,
    margin_report,
    margin_sort_parse,
    report_period_parse,
)
from usage.selectors.price_changes import migration_preview, usage_percentiles

PUBLISH_EFFECTS = (ChangeEffect.GRANDFATHERED, ChangeEffect.MIGRATED_AT_RENEWAL)


def price_research(request: HttpRequest, version_id: int) -> HttpResponse:
    """For a (draft) version: each priced meter's usage percentiles beside its included quantity, and every
    subscriber's last three closed periods re-rated under it. ``?format=csv`` downloads the backtest."""
    version = get_object_or_404(PlanVersion.objects.select_related("plan"), pk=version_id)
    preview = migration_preview(version=version)
    if request.GET.get("format") == "csv":
        response = HttpResponse(content_type="text/csv")
        response["Content-Disposition"] = (
            f'attachment; filename="{version.plan.code}-v{version.number}-preview.csv"'
        )
        writer = csv.writer(response)
        writer.writerow(["customer", "name", "periods", "old_total", "new_total", "difference", "currency"])
        for row in preview.customers:
            writer.writerow(
                [
                    row.customer,
                    row.name,
                    row.periods,
                    row.old_total,
                    row.new_total,
                    row.difference,
                    version.currency,
                ]
            )
        return response
    return _research_page(request, version, preview)


def _research_page(
    request: HttpRequest, version: PlanVersion, preview: Any, status: int = 200
) -> HttpResponse:
    meters = [
        {"price": price, "percentiles": usage_percentiles(meter=price.meter)}
        for price in prices_with_rates(version)
    ]
    earliest = (timezone.now() + timedelta(days=settings.PRICE_CHANGE_NOTICE_DAYS + 1)).date()
    return render(
        request,
        "admin/usage/price_research.html",
        {
            "version": version,
            "meters": meters,
            "preview": preview,
            "title": f"Price research: {version}",
            "publishable": version.status == VersionStatus.DRAFT,
            "effects": [(effect.value, effect.label) for effect in PUBLISH_EFFECTS],
            "earliest_date": earliest,
            "notice_days": settings.PRICE_CHANGE_NOTICE_DAYS,
            "nobody_pays_differently": bool(preview.customers)
            and not preview.paying_more
            and not preview.paying_less,
        },
        status=status,
    )


@require_POST
def price_publish(request: HttpRequest, version_id: int) -> HttpResponse:
    """Publish the draft with its effect: subscribers keep their version (grandfathered), or are told and
    moved at renewal from a date at least ``PRICE_CHANGE_NOTICE_DAYS`` away (migrated at renewal)."""
    if not request.user.has_perm("plans.change_planversion"):
        return HttpResponseForbidden("Publishing a version needs the permission to change plan versions.")
    version = get_object_or_404(PlanVersion.objects.select_related("plan"), pk=version_id)
    effect = request.POST.get("effect", "")
    migrate_at = None
    raw_date = request.POST.get("date", "")
    try:
        if effect == ChangeEffect.MIGRATED_AT_RENEWAL:
            try:
                day = date.fromisoformat(raw_date)
            except ValueError:
                raise BillingError(f"Give the migration's date as YYYY-MM-DD, not {raw_date!r}.") from None
            migrate_at = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
        elif effect != ChangeEffect.GRANDFATHERED:
            raise BillingError("Choose what happens to existing subscribers.")
        plan_version_publish(
            plan_version=version, effect=effect, migrate_at=migrate_at, by_user_id=request.user.pk
        )
    except BillingError as error:
        messages.error(request, error.message)
        return _research_page(request, version, migration_preview(version=version), status=400)
    if effect == ChangeEffect.MIGRATED_AT_RENEWAL:
        messages.success(
            request,
            f"Published {version}. Subscribers of older versions are told within minutes and move at their "
            f"first renewal from {migrate_at:%Y-%m-%d} unless they keep their version.",
        )
        return redirect("admin:plans_planmigration_change", version.migration.pk)
    messages.success(request, f"Published {version}. Subscribers of older versions keep theirs.")
    return redirect("admin:plans_planversion_change", version.pk)


def margin_report_page(request: HttpRequest) -> HttpResponse:
    """Revenue, serving cost and margin of a period by customer, meter or model, sortable by each column;
    ``?format=csv`` downloads the same rows with exact amounts. Bad parameters answer 400 with the reason."""
    try:
        period = report_period_parse(request.GET.get("period") or None)
        group_by = margin_group_parse(request.GET.get("group_by") or None)
        sort = margin_sort_parse(request.GET.get("o") or None)
    except InvalidInput as error:
        return HttpResponse(error.message, status=400, content_type="text/plain; charset=utf-8")
    report = margin_report(period=period, group_by=group_by, sort=sort)
    if request.GET.get("format") == "csv":
        response = HttpResponse(content_type="text/csv")
        response["Content-Disposition"] = f'attachment; filename="margins-{period.label}-{group_by}.csv"'
        writer = csv.writer(response)
        writer.writerow(
            ["key", "label", "currency", "revenue", "cost", "cost_currency", "margin", "margin_percent"]
        )
        for row in [*report.rows, *report.totals]:
            writer.writerow(
                [
                    row.key,
                    row.label,
                    row.currency,
                    _plain(row.revenue),
                    _plain(row.cost),
                    report.cost_currency,
                    _plain(row.margin),
                    _plain(row.margin_percent),
                ]
            )
        return response
    query = {"period": period.label, "group_by": group_by.value}
    columns = [
        {
            "name": field.label,
            "sort": f"-{field.value}" if sort == field.value else field.value,
            "current": sort.removeprefix("-") == field.value,
            "descending": sort.startswith("-"),
        }
        for field in MarginSort
    ]
    return render(
        request,
        "admin/usage/margins.html",
        {
            "title": "Margins",
            "report": report,
            "rows": [_shown(row, report.cost_currency) for row in report.rows],
            "totals": [_shown(row, report.cost_currency) for row in report.totals],
            "columns": columns,
            "query": query,
            "sort": sort,
            "groups": MarginGroup.choices,
            "this_month": timezone.now().strftime("%Y-%m"),
        },
    )


def _plain(value: Decimal | None) -> str:
    return "" if value is None else f"{value.normalize():f}"


def _shown(row: MarginRow, cost_currency: str) -> dict[str, str]:
    """A row as the page shows it: amounts rounded to the currency's minor unit, for reading only."""
    return {
        "key": row.key,
        "label": row.label,
        "currency": row.currency.upper(),
        "revenue": format_money(row.revenue, row.currency),
        "cost": format_money(row.cost, cost_currency),
        "margin": "n/a (other currency)" if row.margin is None else format_money(row.margin, row.currency),
        "margin_percent": "" if row.margin_percent is None else f"{row.margin_percent} %",
        "negative": "negative" if row.margin is not None and row.margin < 0 else "",
    }
