"""The money in the Django admin: wallets, credit grants, the credit ledger, usage events, holds and the Stripe
outbox (overage per customer, meter and hour), read-only and linked to one another.

Rows here are facts: a balance changes by a new ledger row, never by an edit, so staff see but do not edit.
What staff may do goes through the same services as the API: releasing a hold (``reservation_release``),
correcting an event (``usage_event_correct``, with a preview), granting credits and topping up a wallet from
the wallets list (``credit_grant_create``, ``wallet_top_up``). Amounts show with their unit at the places
a person reads (``$12.30``, ``1,250 credits``); the exact stored value is on each row's own page.
"""

import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from core.errors import BillingError
from customers.models import Customer
from plans.display import plural
from usage.admin.common import ReadOnly, customer_link, link
from usage.corrections import CorrectionResult, usage_event_correct
from usage.forms import CreditGrantForm, EventCorrectionForm, WalletTopUpForm
from usage.models import (
    CreditGrant,
    CreditLedgerEntry,
    CustomerBalance,
    DetachedUsagePartition,
    Reservation,
    ReservationStatus,
    StripeUsageOutbox,
    UsageEvent,
)
from usage.selectors.formatting import format_amount, format_quantity
from usage.services import credit_grant_create, reservation_release, wallet_top_up


def _filtered(model: str, text: str, **lookups: Any) -> str:
    query = "&".join(f"{key}={value}" for key, value in lookups.items())
    return format_html('<a href="{}?{}">{}</a>', reverse(f"admin:usage_{model}_changelist"), query, text)


@admin.register(CustomerBalance)
class CustomerBalanceAdmin(ReadOnly):
    """Each customer's wallet: the cached sum of its wallet ledger rows."""

    list_display = ("customer_link", "wallet", "updated_at", "ledger", "money_actions")
    list_select_related = ("customer",)
    search_fields = ("customer__external_id", "customer__name")
    ordering = ("customer__external_id",)

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "<int:customer_id>/grant-credits/",
                self.admin_site.admin_view(self.grant_view),
                name="usage_customerbalance_grant",
            ),
            path(
                "<int:customer_id>/top-up/",
                self.admin_site.admin_view(self.top_up_view),
                name="usage_customerbalance_top_up",
            ),
            *super().get_urls(),
        ]

    @admin.display(description="Money")
    def money_actions(self, obj: CustomerBalance) -> str:
        return format_html(
            '<a href="{}">Grant credits</a> · <a href="{}">Top up</a>',
            reverse("admin:usage_customerbalance_grant", args=[obj.customer_id]),
            reverse("admin:usage_customerbalance_top_up", args=[obj.customer_id]),
        )

    def grant_view(self, request: HttpRequest, customer_id: int) -> HttpResponse:
        """Grant credits through ``credit_grant_create``, as ``POST /customers/{id}/credits`` does; the form's
        idempotency key, made when it is shown, keeps a second click from granting twice."""

        def grant(customer: Customer, values: dict[str, Any]) -> str:
            created_grant, created = credit_grant_create(
                customer=customer,
                amount=values["amount"],
                unit=values["unit"] or None,
                expires_at=values["expires_at"],
                description=f"{values['description']} (by staff {request.user.get_username()})",
                idempotency_key=f"admin:{values['idempotency_key']}",
            )
            return f"Granted {created_grant}." if created else "This form already granted its credits."

        return self._money_form(request, customer_id, CreditGrantForm, "Grant credits", grant)

    def top_up_view(self, request: HttpRequest, customer_id: int) -> HttpResponse:
        """Add money to the wallet through ``wallet_top_up``, as ``POST /customers/{id}/wallet/top-ups`` does.
        The form's key is the ledger row's reference, so a second click tops up once."""

        def top_up(customer: Customer, values: dict[str, Any]) -> str:
            entry = wallet_top_up(
                customer=customer,
                amount=values["amount"],
                note=f"{values['note']} (by staff {request.user.get_username()})",
                reference=f"admin:{values['idempotency_key']}",
            )
            return f"Topped up {format_amount(entry.amount, entry.unit)}."

        return self._money_form(request, customer_id, WalletTopUpForm, "Top up the wallet", top_up)

    def _money_form(
        self,
        request: HttpRequest,
        customer_id: int,
        form_class: type[forms.Form],
        title: str,
        write: Callable[[Customer, dict[str, Any]], str],
    ) -> HttpResponse:
        if not request.user.has_perm("usage.add_creditledgerentry"):
            raise PermissionDenied
        customer = get_object_or_404(Customer, pk=customer_id)
        if request.method == "POST":
            form = form_class(request.POST)
            if form.is_valid():
                try:
                    message = write(customer, form.cleaned_data)
                except BillingError as error:
                    form.add_error(None, error.message)
                else:
                    self.message_user(request, message, messages.SUCCESS)
                    return HttpResponseRedirect(reverse("admin:usage_customerbalance_changelist"))
        else:
            form = form_class(initial={"idempotency_key": uuid.uuid4().hex})
        context = {
            **self.admin_site.each_context(request),
            "title": f"{title}: {customer.external_id}",
            "opts": self.model._meta,
            "customer": customer,
            "form": form,
        }
        return TemplateResponse(request, "admin/usage/money_form.html", context)

    @admin.display(description="Customer", ordering="customer__external_id")
    def customer_link(self, obj: CustomerBalance) -> str:
        return customer_link(obj)

    @admin.display(description="Wallet balance", ordering="wallet_balance")
    def wallet(self, obj: CustomerBalance) -> str:
        return format_amount(obj.wallet_balance, obj.currency)

    @admin.display(description="Ledger")
    def ledger(self, obj: CustomerBalance) -> str:
        return _filtered(
            "creditledgerentry", "wallet rows", customer__id__exact=obj.customer_id, grant__isnull="True"
        )


@admin.register(CreditGrant)
class CreditGrantAdmin(ReadOnly):
    list_display = (
        "created_at",
        "customer_link",
        "kind",
        "granted",
        "left",
        "priority",
        "expires_at",
        "expired_at",
        "description",
        "entries",
    )
    list_filter = ("kind", "unit", ("expired_at", admin.EmptyFieldListFilter))
    list_select_related = ("customer",)
    search_fields = ("customer__external_id", "description")
    date_hierarchy = "created_at"

    @admin.display(description="Customer", ordering="customer__external_id")
    def customer_link(self, obj: CreditGrant) -> str:
        return customer_link(obj)

    @admin.display(description="Granted", ordering="amount")
    def granted(self, obj: CreditGrant) -> str:
        return format_amount(obj.amount, obj.unit)

    @admin.display(description="Left", ordering="remaining")
    def left(self, obj: CreditGrant) -> str:
        return format_amount(obj.remaining, obj.unit)

    @admin.display(description="Ledger")
    def entries(self, obj: CreditGrant) -> str:
        return _filtered("creditledgerentry", "rows", grant__id__exact=obj.pk)


@admin.register(CreditLedgerEntry)
class CreditLedgerEntryAdmin(ReadOnly):
    """Every change of a grant or a wallet, with what caused it."""

    list_display = (
        "created_at",
        "customer_link",
        "kind",
        "amount_display",
        "source",
        "cause",
        "note",
        "reference",
    )
    list_filter = ("kind", "unit", ("grant", admin.EmptyFieldListFilter))
    list_select_related = ("customer", "grant", "usage_event__meter", "reservation")
    search_fields = ("customer__external_id", "note", "reference")
    date_hierarchy = "created_at"

    @admin.display(description="Customer", ordering="customer__external_id")
    def customer_link(self, obj: CreditLedgerEntry) -> str:
        return customer_link(obj)

    @admin.display(description="Amount", ordering="amount")
    def amount_display(self, obj: CreditLedgerEntry) -> str:
        sign = "+" if obj.amount > 0 else ""
        return sign + format_amount(obj.amount, obj.unit)

    @admin.display(description="Source")
    def source(self, obj: CreditLedgerEntry) -> str:
        grant = obj.grant
        if grant is None:
            return "Wallet"
        return link("creditgrant", grant.pk, grant.description or f"Grant {grant.pk}")

    @admin.display(description="Caused by")
    def cause(self, obj: CreditLedgerEntry) -> str:
        if obj.usage_event_id is not None:
            return link("usageevent", obj.usage_event_id, f"event {obj.usage_event_id}")
        if obj.reservation_id is not None:
            return link("reservation", obj.reservation_id, "hold")
        return "—"


@admin.register(UsageEvent)
class UsageEventAdmin(ReadOnly):
    """Usage as recorded, with how each event was paid for: allowance, credits, wallet, overage."""

    list_display = (
        "timestamp",
        "customer_link",
        "meter",
        "quantity_display",
        "cost_display",
        "paid_by",
        "billable",
        "ledger",
    )
    list_filter = ("billable", "meter", "period_start", ("corrects", admin.EmptyFieldListFilter))
    list_select_related = ("customer", "meter", "member")
    search_fields = ("customer__external_id", "idempotency_key", "action", "correction_reason")
    date_hierarchy = "timestamp"
    readonly_fields = ("correct_link",)

    def get_list_display(self, request: HttpRequest) -> tuple[str, ...]:
        return (*self.list_display, "correction")

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "<int:event_id>/correct/",
                self.admin_site.admin_view(self.correct_view),
                name="usage_usageevent_correct",
            ),
            *super().get_urls(),
        ]

    def correct_view(self, request: HttpRequest, event_id: int) -> HttpResponse:
        """Correct one event: a form, a preview of the period's charges before and after, then confirm.

        Both go through ``usage_event_correct`` (the API's service), the preview as its dry run. Staff who may
        add usage events (superusers) may correct them.
        """
        if not request.user.has_perm("usage.add_usageevent"):
            raise PermissionDenied
        event = get_object_or_404(UsageEvent.objects.select_related("customer", "meter"), pk=event_id)
        corrections = list(event.corrections.order_by("received_at", "id"))
        # What the event counts now, its corrections included: the form starts from it, as a correction says
        # what the event should count in all.
        counts = event.quantity + sum((c.quantity for c in corrections), Decimal(0))
        preview: CorrectionResult | None = None
        if request.method == "POST":
            form = EventCorrectionForm(request.POST)
            if form.is_valid():
                values = form.cleaned_data
                try:
                    result = usage_event_correct(
                        event_id=event.pk,
                        quantity=values["quantity"],
                        reason=values["reason"],
                        idempotency_key=values["idempotency_key"],
                        by=f"staff {request.user.get_username()}",
                        dry_run="confirm" not in request.POST,
                    )
                except BillingError as error:
                    form.add_error(None, error.message)
                else:
                    if not result.dry_run:
                        self.message_user(request, _correction_message(result), messages.SUCCESS)
                        return HttpResponseRedirect(reverse("admin:usage_usageevent_change", args=[event.pk]))
                    preview = result
        else:
            form = EventCorrectionForm(
                initial={"quantity": f"{counts.normalize():f}", "idempotency_key": uuid.uuid4().hex}
            )
        context = {
            **self.admin_site.each_context(request),
            "title": f"Correct event {event.pk}",
            "opts": self.model._meta,
            "event": event,
            "recorded": f"{format_quantity(event.quantity)} {plural(event.meter.unit, event.quantity)}",
            "counts": f"{format_quantity(counts)} {plural(event.meter.unit, counts)}" if corrections else "",
            "form": form,
            "preview": preview,
            "corrections": corrections,
        }
        return TemplateResponse(request, "admin/usage/correct_event.html", context)

    @admin.display(description="Correction")
    def correct_link(self, obj: UsageEvent) -> str:
        if obj.corrects_id is not None:
            return format_html(
                "Corrects {}: {} (by {})",
                link("usageevent", obj.corrects_id, f"event {obj.corrects_id}"),
                obj.correction_reason,
                obj.corrected_by,
            )
        return format_html(
            '<a class="button" href="{}">Correct this event</a>',
            reverse("admin:usage_usageevent_correct", args=[obj.pk]),
        )

    @admin.display(description="Correction")
    def correction(self, obj: UsageEvent) -> str:
        if obj.corrects_id is None:
            return "—"
        return format_html(
            "of {}: {}",
            link("usageevent", obj.corrects_id, f"event {obj.corrects_id}"),
            obj.correction_reason,
        )

    @admin.display(description="Customer", ordering="customer__external_id")
    def customer_link(self, obj: UsageEvent) -> str:
        return customer_link(obj)

    @admin.display(description="Quantity", ordering="quantity")
    def quantity_display(self, obj: UsageEvent) -> str:
        return f"{format_quantity(obj.quantity)} {obj.meter.unit}"

    @admin.display(description="Cost", ordering="cost")
    def cost_display(self, obj: UsageEvent) -> str:
        return format_amount(obj.cost, obj.cost_unit) if obj.cost_unit else "—"

    @admin.display(description="Paid by")
    def paid_by(self, obj: UsageEvent) -> str:
        """Where the event's cost came from, in consumption order, naming only the parts that paid: one
        column rather than four keeps the list within a laptop screen."""
        parts = []
        if obj.included_quantity:
            parts.append(f"included {format_quantity(obj.included_quantity)}")
        for label, amount in (
            ("grants", obj.credits_amount),
            ("wallet", obj.wallet_amount),
            ("overage", obj.overage_amount),
        ):
            if amount and obj.cost_unit:
                parts.append(f"{label} {format_amount(amount, obj.cost_unit)}")
        return " · ".join(parts) or "—"

    @admin.display(description="Ledger")
    def ledger(self, obj: UsageEvent) -> str:
        return _filtered("creditledgerentry", "rows", usage_event__id__exact=obj.pk)


@admin.register(DetachedUsagePartition)
class DetachedUsagePartitionAdmin(ReadOnly):
    """Months of usage events retention took out of the ledger: tables still in the database to archive."""

    list_display = ("table_name", "range_start", "range_end", "event_count", "detached_at")


@admin.register(Reservation)
class ReservationAdmin(ReadOnly):
    """Holds in flight and settled. Releasing one goes through the API's own service."""

    list_display = (
        "created_at",
        "customer_link",
        "meter",
        "quantity",
        "held",
        "status",
        "expires_at",
        "settled_at",
    )
    list_filter = ("status", "meter")
    list_select_related = ("customer", "meter")
    search_fields = ("customer__external_id", "idempotency_key", "id")
    date_hierarchy = "created_at"
    actions = ["release"]

    @admin.display(description="Customer", ordering="customer__external_id")
    def customer_link(self, obj: Reservation) -> str:
        return customer_link(obj)

    @admin.display(description="Held")
    def held(self, obj: Reservation) -> str:
        return format_amount(obj.held_cost, obj.unit) if obj.unit else "—"

    @admin.action(description="Release the selected holds")
    def release(self, request: HttpRequest, queryset: QuerySet[Reservation]) -> None:
        released = 0
        for reservation in queryset.filter(status=ReservationStatus.HELD):
            try:
                reservation_release(reservation_id=reservation.pk)
            except BillingError as error:
                self.message_user(request, f"{reservation.pk}: {error.message}", messages.ERROR)
            else:
                released += 1
        self.message_user(request, f"{released} hold(s) released.", messages.SUCCESS)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The changelist needs it for its action; the row's own form stays read-only (no editable fields).
        return obj is None and super(ReadOnly, self).has_change_permission(request, obj)


@admin.register(StripeUsageOutbox)
class StripeUsageOutboxAdmin(ReadOnly):
    """Overage waiting for, or sent to, Stripe."""

    list_display = (
        "window_start",
        "customer_link",
        "meter",
        "dimension_value",
        "event_count",
        "amount_display",
        "status",
        "event",
    )
    list_filter = ("status", "meter")
    list_select_related = ("customer", "meter")
    search_fields = ("customer__external_id", "meter_event_identifier")
    date_hierarchy = "created_at"

    @admin.display(description="Customer", ordering="customer__external_id")
    def customer_link(self, obj: StripeUsageOutbox) -> str:
        return customer_link(obj)

    @admin.display(description="Overage")
    def amount_display(self, obj: StripeUsageOutbox) -> str:
        return format_amount(obj.amount, obj.currency)

    @admin.display(description="Latest event")
    def event(self, obj: StripeUsageOutbox) -> str:
        return link("usageevent", obj.last_event_id, f"event {obj.last_event_id}")


def _correction_message(result: CorrectionResult) -> str:
    if result.correction is None:
        return f"Event {result.event.pk} already counts {format_quantity(result.corrected_quantity)}: nothing changed."
    flags = f" Flagged: {', '.join(result.flags)}." if result.flags else ""
    return (
        f"Event {result.event.pk} corrected to {format_quantity(result.corrected_quantity)} "
        f"(correction {result.correction.pk}: {format_quantity(result.correction.quantity)}).{flags}"
    )
