"""A price change that moves subscribers, on the staff side: the research behind it and publishing it (pages
beside the admin, routed in billing_app/urls.py), then its progress and each customer's notice (the admin)."""

import csv
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from core.errors import BillingError
from plans.models import ChangeEffect, PlanMigration, PlanVersion, VersionStatus
from plans.selectors import prices_with_rates
from plans.services import plan_version_publish
from usage.admin.common import ReadOnly, customer_link, link
from usage.models import PlanMigrationNotice
from usage.plan_migrations import plan_migration_progress
from usage.selectors.formatting import format_amount
from usage.selectors.price_changes import migration_preview, usage_percentiles

# --- Research and publishing ---

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


# --- The migration and each customer's notice ---


class _NoticeColumns:
    """What operators read of each customer's notice: the choice, the move, the safety net."""

    @admin.display(description="Last periods: old → new")
    def bill(self, obj: PlanMigrationNotice) -> str:
        if obj.old_total is None or obj.new_total is None:
            return "—"
        currency = obj.migration.plan_version.currency
        return f"{format_amount(obj.old_total, currency)} → {format_amount(obj.new_total, currency)}"

    @admin.display(description="Safety-net credit")
    def credit(self, obj: PlanMigrationNotice) -> str:
        grant = obj.safety_net_grant
        if grant is None:
            return "—" if obj.safety_net_checked_at is None else "none needed"
        return link("creditgrant", grant.pk, format_amount(grant.amount, grant.unit))


class PlanMigrationNoticeInline(_NoticeColumns, admin.TabularInline):
    model = PlanMigrationNotice
    fields = (
        "customer",
        "from_version",
        "bill",
        "choice",
        "chosen_at",
        "chosen_by",
        "notice_sent_at",
        "reminder_sent_at",
        "scheduled_at",
        "migrated_at",
        "skipped_reason",
        "credit",
    )
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True
    max_num = 0

    def get_queryset(self, request: HttpRequest) -> QuerySet[PlanMigrationNotice]:
        return (
            super()
            .get_queryset(request)
            .select_related("customer", "from_version", "migration__plan_version", "safety_net_grant")
        )


@admin.register(PlanMigration)
class PlanMigrationAdmin(ReadOnly):
    """A price change that moves subscribers at renewal: its progress, and each customer's notice and choice.
    Written by publishing a version with the effect "migrated at renewal" (the price research page or the
    catalog file); moved forward by the ``price-changes`` periodic task."""

    list_display = ("plan_version", "migrate_at", "status", "progress", "created_by", "created_at")
    list_filter = ("status",)
    list_select_related = ("plan_version__plan", "created_by")
    fields = ("plan_version", "migrate_at", "status", "progress", "created_by", "created_at")
    readonly_fields = fields
    inlines = [PlanMigrationNoticeInline]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Viewing the page with its inline is enough; nothing here is edited by hand.
        return False

    @admin.display(description="Progress")
    def progress(self, obj: PlanMigration) -> str:
        counts = plan_migration_progress(obj)
        return (
            f"{counts['customers']} customers: {counts['notified']} emailed; {counts['kept']} kept, "
            f"{counts['accepted']} accepted, {counts['pending']} not chosen; {counts['scheduled']} set to move, "
            f"{counts['migrated']} moved, {counts['skipped']} left where they are; "
            f"{counts['credited']} credited by the safety net"
        )


@admin.register(PlanMigrationNotice)
class PlanMigrationNoticeAdmin(_NoticeColumns, ReadOnly):
    """Every customer told of a price change; filter by choice, or by the safety net's credits."""

    list_display = (
        "customer_link",
        "migration",
        "bill",
        "choice",
        "chosen_at",
        "scheduled_at",
        "migrated_at",
        "first_period",
        "credit",
        "skipped_reason",
    )
    list_filter = ("choice", "migration", ("safety_net_grant", admin.EmptyFieldListFilter))
    list_select_related = ("customer", "migration__plan_version__plan", "safety_net_grant")
    search_fields = ("customer__external_id", "customer__name")

    @admin.display(description="Customer", ordering="customer__external_id")
    def customer_link(self, obj: PlanMigrationNotice) -> str:
        return customer_link(obj)

    @admin.display(description="First period on it: old → new")
    def first_period(self, obj: PlanMigrationNotice) -> str:
        if obj.first_period_old_total is None or obj.first_period_new_total is None:
            return "—"
        currency = obj.migration.plan_version.currency
        return (
            f"{format_amount(obj.first_period_old_total, currency)} → "
            f"{format_amount(obj.first_period_new_total, currency)}"
        )
