"""The catalog: meters, plans and their immutable versions, prices, credit packs, entitlements.

A plan version is the unit of pricing a subscription points at. Once any subscription uses it, it
is frozen: a price change is a new version, and existing subscriptions stay on theirs until they
are migrated at renewal.
"""

from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

# Rates carry sub-cent precision (a token can cost $0.000002); quantities can be fractional
# (GB-hours). Money is rounded to the currency's minor unit only on invoice lines.
RATE: dict[str, Any] = {"max_digits": 24, "decimal_places": 12}
QUANTITY: dict[str, Any] = {"max_digits": 24, "decimal_places": 6}
MONEY: dict[str, Any] = {"max_digits": 18, "decimal_places": 4}


class Aggregation(models.TextChoices):
    SUM = "sum", "Sum of quantities"
    COUNT = "count", "Count of events"
    MAX = "max", "Maximum quantity"
    UNIQUE = "unique", "Unique values of a property"
    LATEST = "latest", "Latest quantity"


# The aggregations the engine bills as declared. The others are named so that a catalog asking for them gets
# a clear refusal, not a meter billed as a sum of reports (a peak-seats meter would bill every report).
BILLED_AGGREGATIONS = (Aggregation.SUM, Aggregation.COUNT)


def aggregation_refusal(aggregation: str) -> str | None:
    """Why a meter may not use ``aggregation``, or None when it may."""
    if aggregation in BILLED_AGGREGATIONS:
        return None
    return (
        f"'{aggregation}' meters are not billed yet: only 'sum' (quantities added up) and 'count' (events "
        "counted) are. Report the quantity to bill as a sum meter instead."
    )


class DisplayMode(models.TextChoices):
    UNITS = "units", "Raw units, as recorded"
    MONEY = "money", "Money only: what the usage costs"
    UNIT = "unit", "A product unit: the quantity divided by a divisor"


class Meter(models.Model):
    key = models.SlugField(max_length=64, unique=True, help_text="The event name backends send.")
    name = models.CharField(max_length=120)
    unit = models.CharField(max_length=40, help_text="What one unit is called: call, token, credits.")
    # How customers see the meter on their pages and in notifications (``plans.display``); the API keeps
    # raw quantities and adds the displayed ones.
    display_mode = models.CharField(max_length=5, choices=DisplayMode.choices, default=DisplayMode.UNITS)
    display_unit = models.CharField(
        max_length=40, blank=True, help_text='With a product unit: its name, plural ("messages").'
    )
    display_divisor = models.DecimalField(
        **QUANTITY,
        default=Decimal(1),
        help_text="With a product unit: recorded units per product unit (1000 tokens = 1 message).",
    )
    aggregation = models.CharField(max_length=10, choices=Aggregation.choices, default=Aggregation.SUM)
    unique_property = models.CharField(
        max_length=64, blank=True, help_text="For unique aggregation: the event property counted."
    )
    stripe_meter_id = models.CharField(max_length=64, blank=True)
    serving_cost_dimension = models.CharField(
        max_length=64,
        blank=True,
        default="",
        db_default="",
        help_text="The event property whose value picks a serving-cost rate (e.g. model); empty: one rate.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["key"]
        constraints = [
            models.CheckConstraint(condition=Q(display_divisor__gt=0), name="meter_display_divisor_positive"),
        ]

    def __str__(self) -> str:
        return self.key

    def clean(self) -> None:
        refusal = aggregation_refusal(self.aggregation)
        if refusal is not None:
            raise ValidationError({"aggregation": refusal})
        if self.display_mode == DisplayMode.UNIT and not self.display_unit.strip():
            raise ValidationError({"display_unit": "A product unit needs its name, such as messages."})
        if self.display_divisor is not None and self.display_divisor <= 0:
            raise ValidationError({"display_divisor": "The divisor must be greater than zero."})


class MeterServingCost(models.Model):
    """What one unit of a meter costs us to serve, from ``effective_from`` on, in the operator's currency.

    ``dimension_value`` empty is the meter's default rate; otherwise the rate of events whose
    ``Meter.serving_cost_dimension`` property has that value (a model). A provider's price change is a new row
    with a later ``effective_from``, never an edit: usage keeps the cost of the rate in force at its timestamp.
    """

    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, related_name="serving_costs")
    dimension_value = models.CharField(max_length=120, blank=True, help_text="Empty: the meter's default.")
    unit_amount = models.DecimalField(**RATE, help_text="Cost of one unit, in the operator's currency.")
    currency = models.CharField(max_length=3, help_text="The operator's currency (OPERATOR_CURRENCY).")
    effective_from = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["meter", "dimension_value", "effective_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["meter", "dimension_value", "effective_from"], name="meter_serving_cost_unique"
            ),
            models.CheckConstraint(condition=Q(unit_amount__gte=0), name="meter_serving_cost_non_negative"),
        ]

    def __str__(self) -> str:
        value = self.dimension_value or "default"
        return (
            f"{self.meter_id} {value}: {self.unit_amount} {self.currency} from {self.effective_from:%Y-%m-%d}"
        )

    def clean(self) -> None:
        operator_currency = settings.OPERATOR_CURRENCY
        if self.currency and self.currency.lower() != operator_currency:
            # Costs are summed with each other and set against revenue: one currency, or the sums are wrong.
            raise ValidationError(
                {"currency": f"Serving costs are in the operator's currency, {operator_currency}."}
            )
        self.currency = operator_currency


class BillingInterval(models.TextChoices):
    MONTH = "month", "Monthly"
    YEAR = "year", "Yearly"


class Plan(models.Model):
    code = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=120)
    description = models.TextField(blank=True)
    display_order = models.PositiveIntegerField(default=0)
    is_public = models.BooleanField(default=True, help_text="Shown on the public pricing page.")
    stripe_product_id = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["display_order", "code"]

    def __str__(self) -> str:
        return self.name


class VersionStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    PUBLISHED = "published", "Published"
    RETIRED = "retired", "Retired"


class OveragePolicy(models.TextChoices):
    ALLOWED = "allowed", "Allowed: usage past what is included and prepaid is billed as overage"
    BLOCKED = "blocked", "Blocked: usage stops when included usage, credits and wallet run out"


class PlanVersion(models.Model):
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    currency = models.CharField(max_length=3, default="usd")
    interval = models.CharField(max_length=5, choices=BillingInterval.choices, default=BillingInterval.MONTH)
    base_fee = models.DecimalField(**MONEY, default=Decimal(0))
    overage_policy = models.CharField(
        max_length=8,
        choices=OveragePolicy.choices,
        default=OveragePolicy.ALLOWED,
        help_text="Blocked: a prepaid plan never spends more than was bought, whatever the customer's own "
        "controls (their block-overage switch can only tighten an allowed plan).",
    )
    status = models.CharField(max_length=10, choices=VersionStatus.choices, default=VersionStatus.DRAFT)
    published_at = models.DateTimeField(null=True, blank=True)
    changelog_note = models.TextField(blank=True, help_text="What changed, shown on the public changelog.")
    # A hash of the version's pricing content, so catalog_import can tell "unchanged" from "new version".
    content_hash = models.CharField(max_length=64, blank=True)
    stripe_base_price_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["plan", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["plan", "number"], name="plan_version_number_unique"),
            models.CheckConstraint(condition=Q(base_fee__gte=0), name="plan_version_base_fee_non_negative"),
            models.CheckConstraint(
                condition=Q(status="draft") | Q(published_at__isnull=False),
                name="plan_version_published_has_date",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.plan.code} v{self.number}"

    @property
    def credit_unit_amount(self) -> Decimal | None:
        """What one credit is worth in the plan currency, from the cheapest credit pack."""
        rates = [pack.amount / pack.credits for pack in self.credit_packs.all() if pack.credits]
        return min(rates) if rates else None


class PriceModel(models.TextChoices):
    PER_UNIT = "per_unit", "Per unit"
    GRADUATED = "graduated", "Graduated tiers"
    VOLUME = "volume", "Volume tiers"
    PACKAGE = "package", "Package"
    DIMENSIONAL = "dimensional", "Dimensional (rate by event property)"


class PricingUnit(models.TextChoices):
    CURRENCY = "currency", "Plan currency"
    CREDITS = "credits", "Credits"


class Price(models.Model):
    plan_version = models.ForeignKey(PlanVersion, on_delete=models.CASCADE, related_name="prices")
    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, related_name="prices")
    model = models.CharField(max_length=12, choices=PriceModel.choices, default=PriceModel.PER_UNIT)
    pricing_unit = models.CharField(max_length=10, choices=PricingUnit.choices, default=PricingUnit.CURRENCY)
    included_quantity = models.DecimalField(**QUANTITY, default=Decimal(0))
    unit_amount = models.DecimalField(**RATE, null=True, blank=True)
    package_size = models.DecimalField(**QUANTITY, null=True, blank=True)
    package_amount = models.DecimalField(**RATE, null=True, blank=True)
    dimension = models.CharField(max_length=64, blank=True, help_text="Event property, e.g. model.")
    default_rate = models.DecimalField(**RATE, null=True, blank=True)
    stripe_price_id = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["plan_version", "meter__key"]
        constraints = [
            models.UniqueConstraint(fields=["plan_version", "meter"], name="price_one_per_meter"),
            models.CheckConstraint(condition=Q(included_quantity__gte=0), name="price_included_non_negative"),
            models.CheckConstraint(
                condition=Q(unit_amount__isnull=True) | Q(unit_amount__gte=0),
                name="price_unit_amount_non_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.plan_version} · {self.meter.key} ({self.get_model_display()})"


class PriceTier(models.Model):
    price = models.ForeignKey(Price, on_delete=models.CASCADE, related_name="tiers")
    position = models.PositiveSmallIntegerField()
    up_to = models.DecimalField(**QUANTITY, null=True, blank=True, help_text="Empty for the last, open tier.")
    unit_amount = models.DecimalField(**RATE, default=Decimal(0))
    flat_amount = models.DecimalField(**RATE, default=Decimal(0))

    class Meta:
        ordering = ["price", "position"]
        constraints = [
            models.UniqueConstraint(fields=["price", "position"], name="price_tier_position_unique"),
            models.CheckConstraint(
                condition=Q(unit_amount__gte=0) & Q(flat_amount__gte=0), name="price_tier_non_negative"
            ),
        ]


class DimensionRate(models.Model):
    price = models.ForeignKey(Price, on_delete=models.CASCADE, related_name="dimension_rates")
    value = models.CharField(max_length=120)
    unit_amount = models.DecimalField(**RATE)
    stripe_price_id = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["price", "value"]
        constraints = [
            models.UniqueConstraint(fields=["price", "value"], name="dimension_rate_value_unique"),
            models.CheckConstraint(condition=Q(unit_amount__gte=0), name="dimension_rate_non_negative"),
        ]


class CreditPack(models.Model):
    plan_version = models.ForeignKey(PlanVersion, on_delete=models.CASCADE, related_name="credit_packs")
    amount = models.DecimalField(**MONEY, help_text="Price of the pack in the plan currency.")
    credits = models.DecimalField(**QUANTITY)

    class Meta:
        ordering = ["plan_version", "amount"]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0) & Q(credits__gt=0), name="credit_pack_positive"),
        ]


class RateLimitScope(models.TextChoices):
    CUSTOMER = "customer", "Per customer: all its users together"
    USER = "user", "Per user: each member of the customer on its own"


class Entitlement(models.Model):
    """A feature gate (enabled on/off), a per-period cap on a meter (limit; feature = meter key), and how
    fast the meter may be used (rate_limit_per_minute, per customer or per user)."""

    plan_version = models.ForeignKey(PlanVersion, on_delete=models.CASCADE, related_name="entitlements")
    feature = models.SlugField(max_length=64)
    enabled = models.BooleanField(default=True)
    limit = models.DecimalField(
        **QUANTITY, null=True, blank=True, help_text="Units per period; empty = no cap."
    )
    rate_limit_per_minute = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Requests (checks, reservations, events) of the meter a minute; empty = no rate limit.",
    )
    rate_limit_per = models.CharField(
        max_length=8, choices=RateLimitScope.choices, default=RateLimitScope.CUSTOMER
    )

    class Meta:
        ordering = ["plan_version", "feature"]
        constraints = [
            models.UniqueConstraint(fields=["plan_version", "feature"], name="entitlement_feature_unique"),
            models.CheckConstraint(
                condition=Q(limit__isnull=True) | Q(limit__gte=0), name="entitlement_limit_ok"
            ),
            models.CheckConstraint(
                condition=Q(rate_limit_per_minute__isnull=True) | Q(rate_limit_per_minute__gt=0),
                name="entitlement_rate_limit_positive",
            ),
        ]


class ChangeEffect(models.TextChoices):
    GRANDFATHERED = "grandfathered", "Existing customers keep their version"
    MIGRATED_AT_RENEWAL = "migrated_at_renewal", "Existing customers move at renewal"
    NEW_PLAN = "new_plan", "New plan"


class PricingChangelogEntry(models.Model):
    plan = models.ForeignKey(Plan, on_delete=models.CASCADE, related_name="changelog")
    plan_version = models.OneToOneField(PlanVersion, on_delete=models.CASCADE, related_name="changelog_entry")
    published_at = models.DateTimeField()
    summary = models.TextField()
    effect = models.CharField(max_length=24, choices=ChangeEffect.choices)

    class Meta:
        ordering = ["-published_at"]
        verbose_name_plural = "pricing changelog entries"


class MigrationStatus(models.TextChoices):
    SCHEDULED = "scheduled", "Scheduled: customers are told and may choose"
    MIGRATING = "migrating", "Migrating: the date has come, subscribers move at their renewals"
    DONE = "done", "Done: every subscriber who did not keep their version is set to move"


class PlanMigration(models.Model):
    """Subscribers of a plan's older versions moved to ``plan_version`` at their first renewal on or after
    ``migrate_at``, after notice and a choice to keep their version (the changelog entry's effect
    ``migrated_at_renewal``). Each customer's notice, choice and move is a ``usage.PlanMigrationNotice``."""

    plan_version = models.OneToOneField(PlanVersion, on_delete=models.PROTECT, related_name="migration")
    migrate_at = models.DateTimeField(help_text="Subscribers move at their first renewal from this moment.")
    status = models.CharField(
        max_length=10, choices=MigrationStatus.choices, default=MigrationStatus.SCHEDULED
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-migrate_at"]

    def __str__(self) -> str:
        return f"{self.plan_version} from {self.migrate_at:%Y-%m-%d}"
