from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone

from billing_app.api_auth import api_keys_forget
from billing_app.models import (
    ApiKey,
    OperatorAlert,
    ReconciliationDivergence,
    StripeInvoice,
    StripeMeterEvent,
    StripeWebhookEvent,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from billing_app.stripe.client import stripe_connected
from billing_app.stripe.outbox import outbox_backlog
from billing_app.stripe.reconciliation import meter_label
from billing_app.webhooks_out import (
    webhook_deliveries_resend,
    webhook_deliveries_send_queue,
    webhook_endpoint_create,
    webhook_url_problem,
)
from customers.events import CustomerEventType
from customers.services import customer_unfreeze

# The index links the staff pages that live beside the admin (the margin report).
admin.site.index_template = "admin/billing_index.html"


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "prefix",
        "kind",
        "customer",
        "rate_limit_per_minute",
        "created_at",
        "last_used_at",
        "revoked_at",
    )
    list_filter = ("kind",)
    list_select_related = ("customer",)
    readonly_fields = ("prefix", "kind", "key_hash", "created_at", "last_used_at")
    fields = (
        "name",
        "customer",
        "prefix",
        "kind",
        "rate_limit_per_minute",
        "created_at",
        "last_used_at",
        "revoked_at",
    )
    autocomplete_fields = ("customer",)
    actions = ("revoke",)

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> tuple[str, ...]:
        # A key's customer (and so its kind) is chosen when it is made: empty for a secret key, a customer
        # for that customer's publishable key.
        return (*self.readonly_fields, "customer") if obj is not None else tuple(self.readonly_fields)

    def get_form(self, request: HttpRequest, obj: ApiKey | None = None, change: bool = False, **kwargs: Any):
        form = super().get_form(request, obj, change=change, **kwargs)
        if obj is None:
            form.base_fields["customer"].help_text = (
                "Empty: a secret key (sk_…) for a backend, with full access. A customer: that customer's "
                "publishable key (pk_…), which may only read its usage and ask /check, for its frontend."
            )
        return form

    def save_model(self, request: HttpRequest, obj: ApiKey, form, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            api_keys_forget()
            return
        # A new key: generate the secret and show it once; only its hash is stored.
        api_key, raw_key = ApiKey.generate(
            name=obj.name, rate_limit_per_minute=obj.rate_limit_per_minute, customer=obj.customer
        )
        obj.pk, obj.prefix, obj.key_hash, obj.kind = (
            api_key.pk,
            api_key.prefix,
            api_key.key_hash,
            api_key.kind,
        )
        messages.warning(
            request, f"The key {obj.name} is {raw_key}. Copy it now: it will not be shown again."
        )

    @admin.action(description="Revoke the selected keys")
    def revoke(self, request: HttpRequest, queryset) -> None:
        queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        api_keys_forget()


# --- Stripe and alerts -----------------------------------------------------------------------------------

STRIPE_NOT_CONNECTED = (
    "Stripe not connected: STRIPE_API_KEY is not set. Usage is recorded and queued in the Stripe outbox, "
    "and nothing is sent until a key is configured."
)


def _stripe_status_message(request: HttpRequest) -> None:
    if not stripe_connected():
        messages.warning(request, STRIPE_NOT_CONNECTED)


_admin_index = admin.site.index


def _index_with_stripe_status(
    request: HttpRequest, extra_context: dict[str, Any] | None = None
) -> TemplateResponse:
    """The admin home page, with the Stripe connection warning above the app list."""
    _stripe_status_message(request)
    return _admin_index(request, extra_context)


# The admin builds its URLs after every admin module is imported, so the index it routes to is this one.
admin.site.index = _index_with_stripe_status  # type: ignore[method-assign]


class _StripeStatusAdmin(admin.ModelAdmin):
    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        _stripe_status_message(request)
        return super().changelist_view(request, extra_context)


class _ReadOnlyAdmin(_StripeStatusAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ReconciliationDivergence)
class ReconciliationDivergenceAdmin(_StripeStatusAdmin):
    """Local and Stripe numbers side by side; open ones first."""

    list_display = (
        "customer",
        "kind",
        "subject_label",
        "period_start",
        "local_value_display",
        "stripe_value_display",
        "difference_display",
        "percent_display",
        "checked_at",
        "resolved_at",
    )
    list_filter = ("kind", ("resolved_at", admin.EmptyFieldListFilter))
    list_select_related = ("customer", "meter")
    search_fields = ("customer__name", "customer__external_id", "subject")
    readonly_fields = (
        "kind",
        "customer",
        "meter",
        "dimension_value",
        "subject",
        "invoice",
        "period_start",
        "period_end",
        "local_value",
        "stripe_value",
        "percent",
        "detected_at",
        "checked_at",
        "resolved_at",
    )
    fields = (*readonly_fields, "note")
    actions = ("mark_resolved",)
    ordering = ("resolved_at", "-detected_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="Meter / invoice")
    def subject_label(self, divergence: ReconciliationDivergence) -> str:
        return meter_label(divergence)

    @admin.display(description="Local", ordering="local_value")
    def local_value_display(self, divergence: ReconciliationDivergence) -> str:
        return _number(divergence.local_value)

    @admin.display(description="Stripe", ordering="stripe_value")
    def stripe_value_display(self, divergence: ReconciliationDivergence) -> str:
        return _number(divergence.stripe_value)

    @admin.display(description="Stripe − local")
    def difference_display(self, divergence: ReconciliationDivergence) -> str:
        difference = divergence.difference
        return ("+" if difference > 0 else "") + _number(difference)

    @admin.display(description="Difference", ordering="percent")
    def percent_display(self, divergence: ReconciliationDivergence) -> str:
        return f"{divergence.percent}%"

    @admin.action(description="Mark the selected divergences resolved")
    def mark_resolved(self, request: HttpRequest, queryset: QuerySet[ReconciliationDivergence]) -> None:
        count = queryset.filter(resolved_at__isnull=True).update(resolved_at=timezone.now())
        messages.success(request, f"{count} divergence(s) marked resolved.")


def _number(value: Decimal) -> str:
    return f"{value.normalize():,f}" if value == value.to_integral_value() else f"{value:,.2f}"


@admin.register(OperatorAlert)
class OperatorAlertAdmin(_ReadOnlyAdmin):
    list_display = ("created_at", "kind", "customer", "message", "acknowledged_at")
    list_filter = ("kind", ("acknowledged_at", admin.EmptyFieldListFilter))
    list_select_related = ("customer",)
    search_fields = ("message", "customer__name", "customer__external_id")
    readonly_fields = ("kind", "customer", "message", "data", "dedupe_key", "created_at", "acknowledged_at")
    actions = ("acknowledge", "unfreeze_and_acknowledge")

    @admin.action(description="Acknowledge")
    def acknowledge(self, request: HttpRequest, queryset: QuerySet[OperatorAlert]) -> None:
        queryset.filter(acknowledged_at__isnull=True).update(acknowledged_at=timezone.now())

    @admin.action(description="Unfreeze the customers and acknowledge")
    def unfreeze_and_acknowledge(self, request: HttpRequest, queryset: QuerySet[OperatorAlert]) -> None:
        alerts = list(queryset.select_related("customer").filter(customer__isnull=False))
        for alert in alerts:
            if alert.customer is not None and alert.customer.is_frozen:
                customer_unfreeze(customer=alert.customer)
        # Acknowledging keeps the circuit breaker from freezing them again within the hour.
        queryset.update(acknowledged_at=timezone.now())
        messages.success(request, f"{len({a.customer_id for a in alerts})} customer(s) unfrozen.")


@admin.register(StripeInvoice)
class StripeInvoiceAdmin(_ReadOnlyAdmin):
    list_display = (
        "stripe_invoice_id",
        "customer",
        "status",
        "period_start",
        "period_end",
        "total",
        "usage_total",
        "local_preview_total",
        "currency",
    )
    list_filter = ("status",)
    list_select_related = ("customer",)
    search_fields = ("stripe_invoice_id", "customer__name", "customer__external_id")


@admin.register(StripeWebhookEvent)
class StripeWebhookEventAdmin(_ReadOnlyAdmin):
    list_display = ("received_at", "type", "stripe_event_id", "processed_at", "attempts", "error")
    list_filter = ("type", ("processed_at", admin.EmptyFieldListFilter))
    search_fields = ("stripe_event_id", "type")


@admin.register(StripeMeterEvent)
class StripeMeterEventAdmin(_ReadOnlyAdmin):
    """What the outbox drain sent (or owes) Stripe, one row per meter event."""

    list_display = (
        "created_at",
        "customer",
        "event_name",
        "window_start",
        "quantity",
        "value",
        "status",
        "attempts",
        "sent_at",
        "last_error",
    )
    list_filter = ("status", "event_name")
    list_select_related = ("customer",)
    search_fields = ("identifier", "customer__name", "customer__external_id")

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        backlog = outbox_backlog()
        if backlog["pending_rows"]:
            messages.info(
                request,
                f"{backlog['pending_rows']} outbox row(s) and {backlog['pending_events']} meter event(s) are "
                f"waiting for Stripe (oldest queued {backlog['oldest_pending']:%Y-%m-%d %H:%M} UTC).",
            )
        return super().changelist_view(request, extra_context)


# --- webhooks to the operator's backend ------------------------------------------------------------------


class WebhookEndpointForm(forms.ModelForm):
    url = forms.URLField(max_length=2000, assume_scheme="https", help_text="http:// or https://")
    events = forms.MultipleChoiceField(
        choices=CustomerEventType.choices, widget=forms.CheckboxSelectMultiple, help_text="What it receives."
    )

    class Meta:
        model = WebhookEndpoint
        fields = ("url", "events", "description", "enabled")

    def clean_url(self) -> str:
        url: str = self.cleaned_data["url"]
        if problem := webhook_url_problem(url):
            raise forms.ValidationError(f"The URL {problem}.")
        return url


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    """The operator's receivers. The signing secret is shown once, when one is added."""

    form = WebhookEndpointForm
    list_display = ("url", "event_list", "enabled", "failing_since", "disabled_reason", "created_at")
    list_filter = ("enabled",)
    search_fields = ("url", "description")
    readonly_fields = ("failing_since", "disabled_reason", "created_at")
    actions = ("enable", "disable")

    @admin.display(description="Events")
    def event_list(self, endpoint: WebhookEndpoint) -> str:
        return ", ".join(endpoint.events)

    def save_model(self, request: HttpRequest, obj: WebhookEndpoint, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        endpoint = webhook_endpoint_create(url=obj.url, events=obj.events, description=obj.description)
        obj.pk, obj.secret, obj.created_at = endpoint.pk, endpoint.secret, endpoint.created_at
        messages.warning(
            request,
            f"The signing secret of {obj.url} is {endpoint.secret}. Copy it now: it will not be shown again.",
        )

    @admin.action(description="Enable (pending deliveries are sent again)")
    def enable(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> None:
        count = queryset.update(enabled=True, failing_since=None, disabled_reason="")
        webhook_deliveries_send_queue()
        messages.success(request, f"{count} endpoint(s) enabled.")

    @admin.action(description="Disable")
    def disable(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> None:
        count = queryset.update(enabled=False, disabled_reason="Turned off in admin.")
        messages.success(request, f"{count} endpoint(s) disabled.")


class WebhookAttemptInline(admin.TabularInline):
    model = WebhookAttempt
    extra = 0
    can_delete = False
    fields = ("attempted_at", "status_code", "duration_ms", "response_body", "error", "succeeded")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(_ReadOnlyAdmin):
    """Each event owed to an endpoint, with every attempt and what the endpoint answered."""

    list_display = (
        "created_at",
        "event_type",
        "event_id",
        "customer",
        "endpoint",
        "status",
        "attempts",
        "last_status_code",
        "next_attempt_at",
        "delivered_at",
    )
    list_filter = ("status", "event__type", "endpoint")
    list_select_related = ("event", "customer", "endpoint")
    search_fields = ("event__event_id", "customer__external_id", "endpoint__url")
    readonly_fields = (
        "event_id",
        "event_type",
        "endpoint",
        "customer",
        "status",
        "attempts",
        "next_attempt_at",
        "last_attempt_at",
        "last_status_code",
        "last_error",
        "delivered_at",
        "created_at",
        "body",
    )
    fields = readonly_fields
    inlines = (WebhookAttemptInline,)
    actions = ("resend",)

    @admin.display(description="Event id", ordering="event__event_id")
    def event_id(self, delivery: WebhookDelivery) -> str:
        return delivery.event.event_id

    @admin.display(description="Type", ordering="event__type")
    def event_type(self, delivery: WebhookDelivery) -> str:
        return delivery.event.type

    @admin.display(description="Body posted")
    def body(self, delivery: WebhookDelivery) -> str:
        return delivery.event.body

    @admin.action(description="Resend (the same event id)")
    def resend(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        count = webhook_deliveries_resend(deliveries=queryset)
        disabled = queryset.filter(endpoint__enabled=False).count()
        note = f" {disabled} wait for their endpoint to be enabled." if disabled else ""
        messages.success(
            request, f"{count} deliver{'y' if count == 1 else 'ies'} queued to be sent again.{note}"
        )
