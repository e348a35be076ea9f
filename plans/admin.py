"""The catalog in the Django admin: meters, plans, versions with their prices, tiers, rates, packs, entitlements.

A version is built as a draft (prices inline on the version; tiers and dimension rates on each price's own
page), then published with the "Publish" action. Published versions and versions a subscription uses are
read-only here, as `plan_version_assert_editable` says; a change is a new draft made with "Create new draft
version from this". Prices are checked by the rating engine's `validate_price` as they are saved.
"""

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any
from weakref import WeakKeyDictionary

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import NON_FIELD_ERRORS
from django.db.models import ForeignKey, QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from core.errors import BillingError
from core.money import CREDITS
from plans.models import (
    CreditPack,
    DimensionRate,
    DisplayMode,
    Entitlement,
    Meter,
    MeterServingCost,
    Plan,
    PlanVersion,
    Price,
    PriceTier,
    PricingChangelogEntry,
    PricingUnit,
    RateLimitScope,
    VersionStatus,
)
from plans.pricing import ZERO, PriceModel, PriceSpec, Tier, validate_price
from plans.services import (
    plan_version_assert_editable,
    plan_version_draft_from,
    plan_version_is_editable,
    plan_version_next_number,
    plan_version_publish,
    plan_version_retire,
)

# --- Checking prices with the rating engine ---

_PRICE_FIELDS = (
    "meter",
    "model",
    "pricing_unit",
    "included_quantity",
    "unit_amount",
    "package_size",
    "package_amount",
    "dimension",
    "default_rate",
)


def _price_spec(
    fields: Mapping[str, Any],
    *,
    tiers: Iterable[Tier] | None = None,
    rates: Iterable[tuple[str, Any]] | None = None,
) -> PriceSpec:
    """The engine's view of a price being edited (not `selectors.price_spec`: its rows are not saved yet).

    Without `tiers` or `rates`, stand-ins the engine accepts take their place, so that the checks are about
    the price's own fields: its tiers and rates are edited, and checked, in their own inlines.
    """
    model = PriceModel(fields.get("model") or PriceModel.PER_UNIT)
    if tiers is None:
        tiers = (Tier(up_to=None),) if model in (PriceModel.GRADUATED, PriceModel.VOLUME) else ()
    if rates is None:
        rates = (("*", ZERO),) if model == PriceModel.DIMENSIONAL else ()
    meter = fields.get("meter")
    return PriceSpec(
        meter=meter.key if meter else "?",
        model=model,
        unit=CREDITS if fields.get("pricing_unit") == PricingUnit.CREDITS else "currency",
        included=fields.get("included_quantity") or ZERO,
        unit_amount=fields.get("unit_amount"),
        tiers=tuple(tiers),
        package_size=fields.get("package_size"),
        package_amount=fields.get("package_amount"),
        dimension=fields.get("dimension") or None,
        rates=tuple(rates),
        default_rate=fields.get("default_rate"),
    )


def _price_fields(price: Price) -> dict[str, Any]:
    """A (possibly unsaved) price's fields as `_price_spec` reads them."""
    fields = {name: getattr(price, name) for name in _PRICE_FIELDS if name != "meter"}
    return fields | {"meter": price.meter if price.meter_id else None}


def _assert_editable(plan_version: PlanVersion | None) -> None:
    """`plan_version_assert_editable` as a form error. An unsaved version (the add page) is a new draft."""
    if plan_version is None or plan_version.pk is None:
        return
    try:
        plan_version_assert_editable(plan_version=plan_version)
    except BillingError as error:
        raise forms.ValidationError(error.message) from error


class PriceForm(forms.ModelForm):
    """A price's own fields, checked by the engine; its tiers and rates are checked by their formsets."""

    class Meta:
        model = Price
        fields = ("plan_version", *_PRICE_FIELDS)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        _assert_editable(cleaned.get("plan_version") or getattr(self.instance, "plan_version", None))
        if self.errors:
            return cleaned  # the engine's messages would only repeat a field's own error
        errors = validate_price(_price_spec(cleaned))
        if errors:
            raise forms.ValidationError(errors)
        return cleaned


class _PriceChildFormSet(BaseInlineFormSet):
    """Checks a price's tiers or rates with `validate_price`, reporting only what the rows themselves cause.

    `self.instance` is the price with the values just posted (the admin builds the inline formsets after
    validating the price form), so a model changed in the same save is taken into account.
    """

    def clean(self) -> None:
        super().clean()
        if any(form.errors.keys() - {NON_FIELD_ERRORS} for form in self.forms):
            return  # a value could not be read; its field says why
        # Rows with only non-field errors (a database constraint such as a negative rate) are checked too,
        # so that the engine says in words what the constraint's name does not.
        rows = [
            form.cleaned_data
            for form in self.forms
            if form.cleaned_data and not form.cleaned_data.get("DELETE")
        ]
        fields = _price_fields(self.instance)
        own_errors = set(validate_price(_price_spec(fields)))
        errors = [error for error in validate_price(self.spec(fields, rows)) if error not in own_errors]
        if errors:
            raise forms.ValidationError(errors)

    def spec(self, fields: dict[str, Any], rows: list[dict[str, Any]]) -> PriceSpec:
        raise NotImplementedError


class PriceTierFormSet(_PriceChildFormSet):
    def spec(self, fields: dict[str, Any], rows: list[dict[str, Any]]) -> PriceSpec:
        rows = sorted(rows, key=lambda row: row["position"])
        return _price_spec(
            fields,
            tiers=[
                Tier(
                    up_to=row.get("up_to"),
                    unit_amount=row.get("unit_amount") or ZERO,
                    flat_amount=row.get("flat_amount") or ZERO,
                )
                for row in rows
            ],
        )

    def get_form_kwargs(self, index: int | None) -> dict[str, Any]:
        # New rows are numbered after the saved ones, so tiers are added without typing a position.
        kwargs = super().get_form_kwargs(index)
        if index is not None and index >= self.initial_form_count():
            kwargs["initial"] = {"position": index + 1}
        return kwargs


class DimensionRateFormSet(_PriceChildFormSet):
    def spec(self, fields: dict[str, Any], rows: list[dict[str, Any]]) -> PriceSpec:
        return _price_spec(fields, rates=[(row["value"], row["unit_amount"]) for row in rows])


class PlanVersionForm(forms.ModelForm):
    class Meta:
        model = PlanVersion
        fields = ("plan", "currency", "interval", "base_fee", "changelog_note")

    def clean_currency(self) -> str:
        return self.cleaned_data["currency"].lower()  # as the catalog file and the rating engine write it

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        # Covers the inlines too: the version form is validated with them, and nothing saves unless all pass.
        _assert_editable(self.instance)
        return cleaned


# --- Read-only once published or in use ---


class _VersionGuard:
    """Permissions that follow `plan_version_assert_editable`: no change or delete unless the version
    (of the object, or of the inline's parent) is an unused draft."""

    def version_of(self, obj: Any) -> PlanVersion | None:
        raise NotImplementedError

    def editable(self, request: HttpRequest, obj: Any) -> bool:
        version = None if obj is None else self.version_of(obj)
        if version is None or version.pk is None:
            return True
        # A page asks for each inline and each row: answer once per request and version.
        answers = _editable_answers.setdefault(request, {})
        if version.pk not in answers:
            answers[version.pk] = plan_version_is_editable(plan_version=version)
        return answers[version.pk]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_change_permission(request, obj) and self.editable(request, obj)  # type: ignore[misc]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_delete_permission(request, obj) and self.editable(request, obj)  # type: ignore[misc]


_editable_answers: WeakKeyDictionary[HttpRequest, dict[int, bool]] = WeakKeyDictionary()


class _InlineVersionGuard(_VersionGuard):
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_add_permission(request, obj) and self.editable(request, obj)  # type: ignore[misc]


class _ReadOnlyNotice(_VersionGuard):
    """On the change page of a read-only object, say why it is read-only and what to do instead."""

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        obj = self.get_object(request, unquote(object_id))  # type: ignore[attr-defined]
        version = None if obj is None else self.version_of(obj)
        if request.method == "GET" and version is not None:
            try:
                plan_version_assert_editable(plan_version=version)
            except BillingError as error:
                hint = 'Select it in the list of plan versions and run "Create new draft version from this".'
                self.message_user(request, f"Read-only: {error.message} {hint}", messages.INFO)  # type: ignore[attr-defined]
        return super().change_view(request, object_id, form_url, extra_context)  # type: ignore[misc]


# --- Meters and plans ---


class MeterServingCostInline(admin.TabularInline):
    """The meter's dated serving costs. A rate already in the schedule is never edited: a provider's price change
    is a new row with its own ``effective_from``, so the usage before it keeps the cost it was recorded with."""

    model = MeterServingCost
    fields = ("dimension_value", "unit_amount", "currency", "effective_from", "created_at")
    readonly_fields = ("currency", "created_at")
    extra = 0
    can_delete = False
    verbose_name = "serving cost"
    verbose_name_plural = "serving costs (what one unit costs us, in the operator's currency)"

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class MeterForm(forms.ModelForm):
    """How customers see the meter may be left out: raw units, as in the catalog file."""

    class Meta:
        model = Meter
        fields = (
            "key",
            "name",
            "unit",
            "aggregation",
            "unique_property",
            "display_mode",
            "display_unit",
            "display_divisor",
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in ("display_mode", "display_divisor"):
            if name in self.fields:
                self.fields[name].required = False

    def clean_display_mode(self) -> str:
        return self.cleaned_data.get("display_mode") or DisplayMode.UNITS

    def clean_display_divisor(self) -> Decimal:
        return self.cleaned_data.get("display_divisor") or Decimal(1)


@admin.register(Meter)
class MeterAdmin(admin.ModelAdmin):
    form = MeterForm
    list_display = (
        "key",
        "name",
        "unit",
        "aggregation",
        "display_mode",
        "unique_property",
        "serving_cost_dimension",
        "stripe_meter_id",
    )
    inlines = [MeterServingCostInline]
    list_filter = ("aggregation",)
    search_fields = ("key", "name")
    readonly_fields = ("stripe_meter_id", "created_at")

    def get_readonly_fields(self, request: HttpRequest, obj: Meter | None = None) -> tuple[str, ...]:
        # The key is the event name backends send: renaming it would orphan their events.
        return (*self.readonly_fields, "key") if obj else tuple(self.readonly_fields)


class PlanVersionInline(admin.TabularInline):
    """The plan's versions, as links; a version is edited on its own page."""

    model = PlanVersion
    fields = ("number", "status", "currency", "interval", "base_fee", "published_at")
    readonly_fields = fields
    show_change_link = True
    can_delete = False
    extra = 0

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = ("code", "name", "is_public", "display_order", "latest_version")
    list_filter = ("is_public",)
    search_fields = ("code", "name")
    prepopulated_fields = {"code": ("name",)}
    readonly_fields = ("stripe_product_id",)
    inlines = [PlanVersionInline]

    @admin.display(description="Latest published")
    def latest_version(self, plan: Plan) -> str:
        latest = plan.versions.filter(status=VersionStatus.PUBLISHED).order_by("-number").first()
        return f"v{latest.number}" if latest else "—"


# --- Plan versions ---


class PriceInline(_InlineVersionGuard, admin.TabularInline):
    model = Price
    form = PriceForm
    fields = _PRICE_FIELDS
    show_change_link = True  # tiers and dimension rates are edited on the price's page
    extra = 0

    def version_of(self, obj: PlanVersion) -> PlanVersion:
        return obj


class CreditPackInline(_InlineVersionGuard, admin.TabularInline):
    model = CreditPack
    fields = ("amount", "credits")
    extra = 0

    def version_of(self, obj: PlanVersion) -> PlanVersion:
        return obj


class EntitlementForm(forms.ModelForm):
    """A rate limit's scope may be left empty: it is then per customer, as in the catalog file."""

    class Meta:
        model = Entitlement
        fields = ("feature", "enabled", "limit", "rate_limit_per_minute", "rate_limit_per")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["rate_limit_per"].required = False

    def clean_rate_limit_per(self) -> str:
        return self.cleaned_data.get("rate_limit_per") or RateLimitScope.CUSTOMER


class EntitlementInline(_InlineVersionGuard, admin.TabularInline):
    model = Entitlement
    form = EntitlementForm
    fields = ("feature", "enabled", "limit", "rate_limit_per_minute", "rate_limit_per")
    extra = 0

    def version_of(self, obj: PlanVersion) -> PlanVersion:
        return obj


@admin.register(PlanVersion)
class PlanVersionAdmin(_ReadOnlyNotice, admin.ModelAdmin):
    form = PlanVersionForm
    list_display = ("__str__", "plan", "number", "status", "currency", "interval", "base_fee", "published_at")
    list_filter = ("status", "plan")
    list_select_related = ("plan",)
    search_fields = ("plan__code", "plan__name")
    fields = (
        "plan",
        "number",
        "status",
        "currency",
        "interval",
        "base_fee",
        "overage_policy",
        "changelog_note",
        "published_at",
        "content_hash",
        "stripe_base_price_id",
        "price_research",
    )
    readonly_fields = (
        "number",
        "status",
        "published_at",
        "content_hash",
        "stripe_base_price_id",
        "price_research",
    )
    inlines = [PriceInline, CreditPackInline, EntitlementInline]
    actions = ["publish", "draft_from", "retire"]

    def version_of(self, obj: PlanVersion) -> PlanVersion:
        return obj

    def get_readonly_fields(self, request: HttpRequest, obj: PlanVersion | None = None) -> tuple[str, ...]:
        return (*self.readonly_fields, "plan") if obj else tuple(self.readonly_fields)

    @admin.display(description="Before publishing")
    def price_research(self, obj: PlanVersion) -> str:
        if obj.pk is None:
            return "Save the draft first."
        return format_html(
            '<a href="{}">Usage percentiles beside the included quantities, what each subscriber would have '
            "paid under this version, and publishing it with notice to move them at renewal</a>",
            reverse("price-research", args=[obj.pk]),
        )

    def save_model(self, request: HttpRequest, obj: PlanVersion, form: forms.ModelForm, change: bool) -> None:
        if not change:
            obj.number = plan_version_next_number(plan=obj.plan)  # the admin view is one transaction
        super().save_model(request, obj, form, change)

    @admin.action(description="Publish")
    def publish(self, request: HttpRequest, queryset: QuerySet[PlanVersion]) -> None:
        for version in queryset.select_related("plan").order_by("plan__code", "number"):
            try:
                published = plan_version_publish(plan_version=version)
            except BillingError as error:
                self._report_error(request, error)
            else:
                effect = published.changelog_entry.get_effect_display()
                self.message_user(request, f"Published {published} ({effect}).", messages.SUCCESS)

    @admin.action(description="Create new draft version from this")
    def draft_from(self, request: HttpRequest, queryset: QuerySet[PlanVersion]) -> HttpResponse | None:
        drafts = [
            plan_version_draft_from(plan_version=version) for version in queryset.select_related("plan")
        ]
        for draft in drafts:
            self.message_user(request, f"Created draft {draft}: edit it, then publish it.", messages.SUCCESS)
        if len(drafts) == 1:
            return HttpResponseRedirect(reverse("admin:plans_planversion_change", args=[drafts[0].pk]))
        return None

    @admin.action(description="Retire (stop offering; subscribers keep it)")
    def retire(self, request: HttpRequest, queryset: QuerySet[PlanVersion]) -> None:
        for version in queryset.select_related("plan"):
            try:
                plan_version_retire(plan_version=version)
            except BillingError as error:
                self._report_error(request, error)
            else:
                self.message_user(request, f"Retired {version}.", messages.SUCCESS)

    def _report_error(self, request: HttpRequest, error: BillingError) -> None:
        head, *rest = error.message.split("\n")
        items = format_html_join("", "<li>{}</li>", ((line.removeprefix("- "),) for line in rest))
        self.message_user(
            request, format_html("{}<ul>{}</ul>", head, items) if rest else head, messages.ERROR
        )


# --- Prices ---


class PriceTierInline(_InlineVersionGuard, admin.TabularInline):
    model = PriceTier
    formset = PriceTierFormSet
    fields = ("position", "up_to", "unit_amount", "flat_amount")
    extra = 3

    def version_of(self, obj: Price) -> PlanVersion:
        return obj.plan_version


class DimensionRateInline(_InlineVersionGuard, admin.TabularInline):
    model = DimensionRate
    formset = DimensionRateFormSet
    fields = ("value", "unit_amount", "stripe_price_id")
    readonly_fields = ("stripe_price_id",)
    extra = 3

    def version_of(self, obj: Price) -> PlanVersion:
        return obj.plan_version


@admin.register(Price)
class PriceAdmin(_ReadOnlyNotice, admin.ModelAdmin):
    form = PriceForm
    list_display = ("__str__", "plan_version", "meter", "model", "pricing_unit", "included_quantity")
    list_filter = ("model", "pricing_unit", "plan_version__plan")
    list_select_related = ("plan_version__plan", "meter")
    search_fields = ("meter__key", "plan_version__plan__code")
    fields = ("plan_version", *_PRICE_FIELDS, "stripe_price_id")
    readonly_fields = ("stripe_price_id",)
    inlines = [PriceTierInline, DimensionRateInline]

    def version_of(self, obj: Price) -> PlanVersion:
        return obj.plan_version

    def get_readonly_fields(self, request: HttpRequest, obj: Price | None = None) -> tuple[str, ...]:
        return (*self.readonly_fields, "plan_version") if obj else tuple(self.readonly_fields)

    def formfield_for_foreignkey(
        self, db_field: ForeignKey, request: HttpRequest, **kwargs: Any
    ) -> forms.ModelChoiceField | None:
        if db_field.name == "plan_version":
            kwargs["queryset"] = PlanVersion.objects.filter(status=VersionStatus.DRAFT).select_related("plan")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


# --- The changelog ---


@admin.register(PricingChangelogEntry)
class PricingChangelogEntryAdmin(admin.ModelAdmin):
    """Written by `plan_version_publish`; a record of what customers were told, so never edited."""

    list_display = ("published_at", "plan", "plan_version", "effect", "summary")
    list_filter = ("effect", "plan")
    list_select_related = ("plan", "plan_version__plan")
    date_hierarchy = "published_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
