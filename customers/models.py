"""Customers (the operator's accounts), their members, subscriptions and spend controls."""

from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q

from core.money import LEDGER_PLACES, QUANTITY_PLACES
from customers.periods import period_bounds
from plans.models import MONEY, BillingInterval, PlanMigration, PlanVersion


class CustomerStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    FROZEN = "frozen", "Frozen"


# A customer's id is a segment of our URLs (/api/v1/customers/{external_id}): letters, digits and - . _ ~ : @,
# which no client escapes differently, and not only dots, which URL resolution reads as "here" or "parent".
EXTERNAL_ID_CHARACTERS = "letters, digits and - . _ ~ : @"
external_id_validator = RegexValidator(
    r"\A(?!\.+\Z)[A-Za-z0-9._~:@-]+\Z",
    f"An external id may hold only {EXTERNAL_ID_CHARACTERS}, and not only dots.",
)


class Customer(models.Model):
    external_id = models.CharField(
        max_length=120,
        unique=True,
        validators=[external_id_validator],
        help_text=f"The id in the operator's system: {EXTERNAL_ID_CHARACTERS}.",
    )
    name = models.CharField(max_length=200)
    email = models.EmailField(blank=True)
    currency = models.CharField(max_length=3, default="usd")
    status = models.CharField(max_length=10, choices=CustomerStatus.choices, default=CustomerStatus.ACTIVE)
    frozen_reason = models.CharField(max_length=300, blank=True)
    stripe_customer_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.external_id})"

    @property
    def is_frozen(self) -> bool:
        return self.status == CustomerStatus.FROZEN


class MemberRole(models.TextChoices):
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"


class Member(models.Model):
    """A user or seat of a customer: who drives usage, and who may log in to the dashboard."""

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="members")
    external_id = models.CharField(max_length=120)
    name = models.CharField(max_length=200, blank=True)
    email = models.EmailField(blank=True)
    role = models.CharField(max_length=10, choices=MemberRole.choices, default=MemberRole.MEMBER)
    # One dashboard login belongs to exactly one customer.
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="member"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["customer", "name", "external_id"]
        constraints = [
            models.UniqueConstraint(fields=["customer", "external_id"], name="member_external_id_unique"),
        ]

    def __str__(self) -> str:
        return self.name or self.external_id

    @property
    def is_admin(self) -> bool:
        return self.role == MemberRole.ADMIN


class SubscriptionStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    PAST_DUE = "past_due", "Past due"
    CANCELED = "canceled", "Canceled"


class Subscription(models.Model):
    """A customer on a plan version. One live subscription per customer."""

    customer = models.OneToOneField(Customer, on_delete=models.CASCADE, related_name="subscription")
    plan_version = models.ForeignKey(PlanVersion, on_delete=models.PROTECT, related_name="subscriptions")
    status = models.CharField(
        max_length=10, choices=SubscriptionStatus.choices, default=SubscriptionStatus.ACTIVE
    )
    billing_anchor = models.DateTimeField(help_text="Periods start on this day of the month (or year).")
    current_period_start = models.DateTimeField()
    current_period_end = models.DateTimeField()
    # Set when the subscribed version is no longer the plan's latest: the customer keeps their price.
    grandfathered = models.BooleanField(default=False)
    # A version to move to at the next renewal (a migration planned on purpose).
    pending_plan_version = models.ForeignKey(
        PlanVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="pending_subscriptions"
    )
    stripe_subscription_id = models.CharField(max_length=64, blank=True)
    # A plan change keeps the billing period: the plan in force started here (None: with the period), and
    # the period had by then used this, per meter id: {"included": units, "billable": units}. The new
    # plan's allowance is prorated for the time left and added to what was used; its tiers count from here.
    plan_started_at = models.DateTimeField(null=True, blank=True)
    usage_at_plan_start = models.JSONField(default=dict, blank=True)
    # The base fees of the plans earlier in the current period, each for the share of the period it covered.
    base_fee_before_plan = models.DecimalField(max_digits=24, decimal_places=12, default=Decimal(0))
    # The base fee billed in advance when the current period started (Stripe charges it then): with
    # ``period_base_fee`` it gives the adjustment a plan change adds to the period's invoice.
    base_fee_charged = models.DecimalField(max_digits=24, decimal_places=12, default=Decimal(0))
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(current_period_end__gt=models.F("current_period_start")),
                name="subscription_period_ok",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.customer} on {self.plan_version}"

    @property
    def interval(self) -> str:
        return str(self.plan_version.interval)

    def period_containing(self, moment: datetime) -> tuple[datetime, datetime]:
        return period_bounds(
            anchor=self.billing_anchor, interval=BillingInterval(self.interval), moment=moment
        )

    def plan_share(self) -> Decimal:
        """The share of the current period the plan in force covers: 1, or after a mid-period change the
        time left at the change over the period's length (to the second, as Stripe prorates)."""
        if self.plan_started_at is None or self.plan_started_at <= self.current_period_start:
            return Decimal(1)
        return self.period_share_from(self.plan_started_at)

    def period_share_from(self, moment: datetime) -> Decimal:
        """The share of the current period from ``moment`` to its end, to the second."""
        start, end = self.current_period_start, self.current_period_end
        left = max(int((end - moment).total_seconds()), 0)
        return Decimal(left) / Decimal(int((end - start).total_seconds()))

    def period_base_fee(self, plan_base_fee: Decimal) -> Decimal:
        """The current period's base fee: earlier plans' shares, plus the plan in force's for its share."""
        return self.base_fee_before_plan + (plan_base_fee * self.plan_share()).quantize(LEDGER_PLACES)

    def base_fee_adjustment(self) -> Decimal:
        """What plan changes in the current period add to its base fee (negative: give back), to bill at its
        end: the period's base fee as owed now, less the fee charged in advance when it started."""
        return self.period_base_fee(self.plan_version.base_fee) - self.base_fee_charged

    def used_before_plan(self, meter_id: int) -> tuple[Decimal, Decimal]:
        """(allowance units, billable units) the current period had used when the plan in force started."""
        used = self.usage_at_plan_start.get(str(meter_id)) or {}
        return Decimal(used.get("included", 0)), Decimal(used.get("billable", 0))

    def period_allowance(self, *, meter_id: int, plan_included: Decimal, period_start: datetime) -> Decimal:
        """A meter's allowance in the period starting ``period_start``, in units. In the current period: what
        was used of earlier plans' allowance, plus the plan in force's prorated for the part it covers.
        Other periods had the plan's whole allowance."""
        if period_start != self.current_period_start:
            return plan_included
        included_before, _ = self.used_before_plan(meter_id)
        share = plan_included * self.plan_share()
        return included_before + share.quantize(QUANTITY_PLACES, rounding=ROUND_HALF_UP)


class SoftLimitSource(models.TextChoices):
    CUSTOMER = "customer", "Set by the customer"
    DEFAULT = "default", "Default: a share of typical spend"


class SpendControls(models.Model):
    """Limits the customer sets for themselves. Amounts are in the plan currency (or credits)."""

    customer = models.OneToOneField(Customer, on_delete=models.CASCADE, related_name="spend_controls")
    soft_limit = models.DecimalField(
        **MONEY, null=True, blank=True, help_text="Warn when spend reaches this."
    )
    hard_limit = models.DecimalField(
        **MONEY, null=True, blank=True, help_text="Refuse billable usage once spend reaches this (opt-in)."
    )
    block_overage = models.BooleanField(
        default=False, help_text="Use only the included quota, credits and wallet; never bill overage."
    )
    # Stops in meter units, per meter key: {"llm_tokens": "5000000"}. Decimal strings, as the API writes
    # quantities, so that JSON never carries a float; validated by ``spend_controls_update``.
    meter_limits = models.JSONField(
        default=dict,
        blank=True,
        help_text='Refuse usage of a meter past this many units a period: {"key": "5000000"}.',
    )
    # With no soft limit of their own, a customer is warned at a default: a share of their typical spend
    # (``customers.spend_limits.default_soft_limit_of``), unless they turn it off.
    default_soft_limit_off = models.BooleanField(
        default=False, help_text="No default warning when no soft limit is set."
    )
    # The default for the period starting ``default_soft_limit_period_start``, computed once per period
    # (``usage.default_soft_limit``) so that ingest never reads past periods; None: no default (no closed
    # period, or nothing was charged).
    default_soft_limit = models.DecimalField(
        **MONEY, null=True, blank=True, editable=False, help_text="The default soft limit for the period."
    )
    default_soft_limit_period_start = models.DateTimeField(null=True, blank=True, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "spend controls"
        constraints = [
            models.CheckConstraint(
                condition=Q(soft_limit__isnull=True) | Q(soft_limit__gte=0),
                name="spend_soft_limit_non_negative",
            ),
            models.CheckConstraint(
                condition=Q(hard_limit__isnull=True) | Q(hard_limit__gte=0),
                name="spend_hard_limit_non_negative",
            ),
            models.CheckConstraint(
                condition=Q(soft_limit__isnull=True)
                | Q(hard_limit__isnull=True)
                | Q(hard_limit__gte=models.F("soft_limit")),
                name="spend_hard_limit_above_soft",
            ),
        ]

    def __str__(self) -> str:
        return f"Spend limits of {self.customer_id}"

    @property
    def default_soft_limit_applies(self) -> bool:
        """Whether the stored default is the soft limit in force: the customer set none and kept it on."""
        return (
            self.soft_limit is None
            and not self.default_soft_limit_off
            and self.default_soft_limit is not None
        )

    @property
    def soft_limit_in_force(self) -> Decimal | None:
        """The amount the customer is warned at: their own soft limit, else the default when it applies.
        The default is the one stored for ``default_soft_limit_period_start``: callers refresh it first."""
        if self.soft_limit is not None:
            return self.soft_limit
        return self.default_soft_limit if self.default_soft_limit_applies else None

    @property
    def soft_limit_source(self) -> "SoftLimitSource | None":
        if self.soft_limit is not None:
            return SoftLimitSource.CUSTOMER
        return SoftLimitSource.DEFAULT if self.default_soft_limit_applies else None

    def meter_limit(self, meter_key: str) -> Decimal | None:
        """The customer's stop for ``meter_key`` in units a period, or None when they set none."""
        value = (self.meter_limits or {}).get(meter_key)
        return Decimal(value) if value is not None else None


class NotificationKind(models.TextChoices):
    SOFT_LIMIT_CROSSED = "soft_limit_crossed", "Soft limit crossed"
    HARD_LIMIT_REACHED = "hard_limit_reached", "Hard limit reached"
    ACCOUNT_FROZEN = "account_frozen", "Account frozen"
    CREDITS_LOW = "credits_low", "Credits running low"
    ENTITLEMENT_LIMIT_REACHED = "entitlement_limit_reached", "Plan limit reached"
    PLAN_CHANGED = "plan_changed", "Plan changed"
    PLAN_CHANGE_SCHEDULED = "plan_change_scheduled", "Plan change scheduled"
    AUTO_TOP_UP_FAILED = "auto_top_up_failed", "Automatic top-up failed"
    AUTO_TOP_UP_DISABLED = "auto_top_up_disabled", "Automatic top-up turned off"
    USAGE_CORRECTED = "usage_corrected", "Usage corrected"
    PRICE_CHANGE_NOTICE = "price_change_notice", "Price change ahead"
    PRICE_CHANGE_CREDIT = "price_change_credit", "Price change credit"


class Notification(models.Model):
    """Something the customer should know, told once.

    A spend limit is told once per (limit amount, period): ``limit`` holds the amount crossed. A frozen
    account is told once per hour it is frozen in: ``frozen_hour``. Both are values, not formatted text, so
    ingest and the alerting jobs find the same notification whatever digits they print.
    """

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="notifications")
    kind = models.CharField(max_length=32, choices=NotificationKind.choices)
    period_start = models.DateTimeField()
    limit = models.DecimalField(
        **MONEY, null=True, blank=True, help_text="The spend limit crossed, in the plan currency."
    )
    frozen_hour = models.DateTimeField(null=True, blank=True, help_text="The hour the account was frozen in.")
    plan_migration = models.ForeignKey(
        PlanMigration,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="notifications",
        help_text="The price change told of: once per kind and migration.",
    )
    message = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    read_at = models.DateTimeField(null=True, blank=True)
    emailed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "kind", "period_start", "limit"],
                condition=Q(limit__isnull=False),
                name="notification_limit_once_per_period",
            ),
            models.UniqueConstraint(
                fields=["customer", "kind", "period_start", "frozen_hour"],
                condition=Q(frozen_hour__isnull=False),
                name="notification_freeze_once_per_hour",
            ),
            models.UniqueConstraint(
                fields=["customer", "kind", "plan_migration"],
                condition=Q(plan_migration__isnull=False),
                name="notification_price_change_once",
            ),
        ]
        indexes = [models.Index(fields=["customer", "read_at", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.message}"
