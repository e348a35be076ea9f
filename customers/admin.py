"""Customers in the Django admin: their members, subscription and spend controls on one page."""

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import models
from django.db.models import ForeignKey, QuerySet
from django.http import HttpRequest

from customers.models import (
    Customer,
    CustomerStatus,
    Member,
    Notification,
    SpendControls,
    Subscription,
)
from customers.services import customer_unfreeze
from plans.models import PlanVersion, VersionStatus


class MemberInline(admin.TabularInline):
    model = Member
    verbose_name_plural = "Members (the customer's users)"
    # Narrower inputs than the admin's default, so the row fits a 1366 px screen beside the sidebar.
    formfield_overrides = {
        models.CharField: {"widget": forms.TextInput(attrs={"size": 14})},
        models.EmailField: {"widget": forms.EmailInput(attrs={"size": 20})},
    }
    fields = ("external_id", "name", "email", "role", "user")
    raw_id_fields = ("user",)
    extra = 0


class SubscriptionInline(admin.StackedInline):
    model = Subscription
    fk_name = "customer"
    verbose_name = verbose_name_plural = "Plan and billing period"
    fields = (
        "plan_version",
        "status",
        "billing_anchor",
        ("current_period_start", "current_period_end"),
        "grandfathered",
        "pending_plan_version",
        "stripe_subscription_id",
    )
    readonly_fields = ("stripe_subscription_id",)
    can_delete = False
    max_num = 1
    extra = 0

    def formfield_for_foreignkey(
        self, db_field: ForeignKey, request: HttpRequest, **kwargs: Any
    ) -> forms.ModelChoiceField | None:
        # A customer can be put on a published version only; drafts are still being priced.
        if db_field.name in ("plan_version", "pending_plan_version"):
            kwargs["queryset"] = PlanVersion.objects.filter(status=VersionStatus.PUBLISHED).select_related(
                "plan"
            )
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


class SpendControlsInline(admin.StackedInline):
    model = SpendControls
    verbose_name = verbose_name_plural = "Spend limits the customer set"
    fields = (("soft_limit", "hard_limit"), "block_overage", "meter_limits")
    can_delete = False
    max_num = 1
    extra = 0


@admin.register(Customer)
class CustomerAdmin(admin.ModelAdmin):
    list_display = ("name", "external_id", "email", "currency", "status", "plan_version", "created_at")
    list_filter = ("status", "subscription__status", "subscription__plan_version__plan")
    list_select_related = ("subscription__plan_version__plan",)
    search_fields = ("name", "external_id", "email")
    readonly_fields = ("stripe_customer_id", "created_at")
    inlines = [SubscriptionInline, SpendControlsInline, MemberInline]
    actions = ["unfreeze"]

    @admin.display(description="Plan")
    def plan_version(self, customer: Customer) -> str:
        subscription = getattr(customer, "subscription", None)
        return str(subscription.plan_version) if subscription else "—"

    @admin.action(description="Unfreeze (let billable usage through again)")
    def unfreeze(self, request: HttpRequest, queryset: QuerySet[Customer]) -> None:
        frozen = list(queryset.filter(status=CustomerStatus.FROZEN))
        for customer in frozen:
            customer_unfreeze(customer=customer)
        skipped = queryset.count() - len(frozen)
        note = f" ({skipped} were not frozen)" if skipped else ""
        self.message_user(request, f"Unfroze {len(frozen)} customer(s){note}.", messages.SUCCESS)


@admin.register(Member)
class MemberAdmin(admin.ModelAdmin):
    list_display = ("__str__", "external_id", "email", "customer", "role", "user")
    list_filter = ("role",)
    list_select_related = ("customer", "user")
    search_fields = ("name", "external_id", "email", "customer__name", "customer__external_id")
    autocomplete_fields = ("customer",)
    raw_id_fields = ("user",)


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    """What customers were told; written by the services, so read-only here."""

    list_display = ("created_at", "customer", "kind", "message", "read_at", "emailed_at")
    list_filter = ("kind",)
    list_select_related = ("customer",)
    search_fields = ("customer__name", "customer__external_id", "message")
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
