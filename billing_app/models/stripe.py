"""What the Stripe integration remembers (``billing_app.stripe``): meters per dimension value, subscriptions as
synced, meter events sent and to send, webhooks received, and invoices as Stripe made them."""

from decimal import Decimal

from django.db import models

from core.money import format_money
from customers.models import Customer, Subscription
from plans.models import MONEY, QUANTITY, RATE, Meter, PlanVersion


class StripeDimensionMeter(models.Model):
    """The Stripe meter of one dimension value of a meter (``llm_tokens.gpt-4o``).

    A dimensional price becomes one Stripe price per dimension value, and each of those needs its own
    Stripe meter so that Stripe can total (and bill) the values apart. The meter is shared by every plan
    version that prices the value: Stripe allows one meter per event name.
    """

    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, related_name="stripe_dimension_meters")
    value = models.CharField(max_length=120)
    event_name = models.CharField(max_length=100, unique=True)
    stripe_meter_id = models.CharField(max_length=64, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["meter", "value"], name="stripe_dimension_meter_unique"),
        ]

    def __str__(self) -> str:
        return self.event_name


class StripeSubscriptionSync(models.Model):
    """Which plan version and status the Stripe subscription was last brought to.

    When a migration at renewal moves the local subscription to another version (or it is canceled), the
    difference shows here without asking Stripe, and the sync job swaps the Stripe items.
    """

    subscription = models.OneToOneField(Subscription, on_delete=models.CASCADE, related_name="stripe_sync")
    plan_version = models.ForeignKey(PlanVersion, on_delete=models.PROTECT, related_name="+")
    pending_plan_version = models.ForeignKey(
        PlanVersion,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The migration at renewal whose prices Stripe already carries for its next period.",
    )
    status = models.CharField(max_length=10)
    complete = models.BooleanField(
        default=True,
        help_text="False while something waits for Stripe's next period (items of a meter the plan left).",
    )
    # Stripe bills a base fee in advance, for the whole period, when the period starts; a plan change later in
    # the period is settled with an invoice item of the difference (docs/stripe.md). This is the period's base
    # fee Stripe has been told so far, exact, so the items add up to our figure rounded once.
    base_fee_period_start = models.DateTimeField(null=True, blank=True)
    base_fee_invoiced = models.DecimalField(**RATE, default=Decimal(0))
    synced_at = models.DateTimeField(auto_now=True)


class MeterEventStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent (or nothing to send)"
    TOO_OLD = "too_old", "Too old for Stripe: invoice manually"
    FAILED = "failed", "Refused by Stripe"


class StripeMeterEvent(models.Model):
    """One meter event the outbox drain owes Stripe: a group of outbox rows, fixed when they were claimed.

    ``identifier`` is derived from the outbox rows it carries, so every retry (after a timeout, an outage or
    a worker killed mid-call) sends the same identifier and Stripe counts it once. ``value`` is money in
    whole minor units (cents), as we rated it: Stripe prices every meter at one minor unit per unit and
    never re-rates our quantities (docs/stripe.md). The fraction of a minor unit stays in
    ``StripeUsageCarry``; a give-back makes ``value`` negative.
    """

    identifier = models.CharField(max_length=100, unique=True)
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="stripe_meter_events")
    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, related_name="stripe_meter_events")
    dimension_value = models.CharField(max_length=120, blank=True)
    event_name = models.CharField(max_length=100)
    stripe_meter_id = models.CharField(max_length=64)
    stripe_customer_id = models.CharField(max_length=64)
    period_start = models.DateTimeField()
    window_start = models.DateTimeField(help_text="The hour the usage happened in (UTC).")
    timestamp = models.DateTimeField(
        help_text="The timestamp sent to Stripe, inside the hour and the period."
    )
    quantity = models.DecimalField(**QUANTITY, help_text="Exact overage units of the outbox rows.")
    amount = models.DecimalField(
        **RATE, default=Decimal(0), help_text="Exact overage money of the outbox rows, in the currency."
    )
    value = models.BigIntegerField(help_text="Whole minor units of money sent to Stripe.")
    row_count = models.PositiveIntegerField()
    status = models.CharField(
        max_length=10, choices=MeterEventStatus.choices, default=MeterEventStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    # A lease, not a lock: a drain takes it before the HTTP call so that two drains do not post the same
    # event at once; a drain that dies keeps it only until ``claimed_until``.
    claimed_by = models.CharField(max_length=64, blank=True)
    claimed_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["status", "id"]),
            models.Index(fields=["customer", "event_name", "period_start"]),
        ]

    def __str__(self) -> str:
        return f"{self.event_name} × {self.value} ({self.identifier})"


class StripeUsageCarry(models.Model):
    """What the drain has claimed and sent for one customer, Stripe meter and billing period.

    Stripe takes whole meter values only, and our meters carry money in minor units. Each meter event
    sends ``floor(minor_units) - value`` of the running total, so the fraction of a cent is carried into
    the next event of the same meter and period and the sum sent never drifts from the ledger by a cent
    or more; at period close the last fraction is rounded half up (``usage_carries_finalize``), which makes
    Stripe's line the local amount rounded once. The row is also the lock that serializes those sums.
    """

    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="stripe_usage_carries")
    event_name = models.CharField(max_length=100)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    minor_units = models.DecimalField(
        **RATE, default=Decimal(0), help_text="Overage money claimed, in minor units, exact."
    )
    value = models.BigIntegerField(default=0, help_text="Whole minor units put into meter events.")
    finalized_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "event_name", "period_start"], name="stripe_usage_carry_unique"
            ),
        ]


class StripeWebhookEvent(models.Model):
    """Every event Stripe posted, stored before it is processed and processed once (by its Stripe id)."""

    stripe_event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=120)
    thin = models.BooleanField(
        default=False, help_text="A v2 thin event: the payload names, not holds, the object."
    )
    payload = models.JSONField()
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-received_at", "-id"]
        indexes = [models.Index(fields=["type", "-received_at"])]

    def __str__(self) -> str:
        return f"{self.type} ({self.stripe_event_id})"


class StripeInvoiceStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    OPEN = "open", "Open"
    PAID = "paid", "Paid"
    VOID = "void", "Void"
    UNCOLLECTIBLE = "uncollectible", "Uncollectible"


class StripeInvoice(models.Model):
    """A Stripe invoice as its webhooks described it, beside what the local ledger expected.

    Amounts are in major units of ``currency``; ``total_minor`` is Stripe's integer as received.
    """

    customer = models.ForeignKey(
        Customer, null=True, blank=True, on_delete=models.PROTECT, related_name="stripe_invoices"
    )
    stripe_invoice_id = models.CharField(max_length=255, unique=True)
    stripe_customer_id = models.CharField(max_length=64)
    stripe_subscription_id = models.CharField(max_length=64, blank=True)
    status = models.CharField(max_length=16, choices=StripeInvoiceStatus.choices)
    billing_reason = models.CharField(max_length=40, blank=True)
    currency = models.CharField(max_length=3)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    total_minor = models.BigIntegerField()
    total = models.DecimalField(**MONEY)
    usage_total = models.DecimalField(**MONEY, null=True, blank=True, help_text="The metered lines.")
    local_preview_total = models.DecimalField(
        **MONEY,
        null=True,
        blank=True,
        help_text="The post-paid overage the local ledger rated for the period.",
    )
    stripe_created_at = models.DateTimeField()
    finalized_at = models.DateTimeField(null=True, blank=True)
    number = models.CharField(max_length=64, blank=True)
    amount_due = models.DecimalField(**MONEY, default=Decimal(0))
    amount_paid = models.DecimalField(**MONEY, default=Decimal(0))
    amount_remaining = models.DecimalField(**MONEY, default=Decimal(0))
    hosted_invoice_url = models.URLField(max_length=500, blank=True)
    invoice_pdf = models.URLField(max_length=500, blank=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    attempt_count = models.PositiveIntegerField(default=0)
    payment_failed_at = models.DateTimeField(
        null=True, blank=True, help_text="The last failed collection attempt, while the invoice is unpaid."
    )
    recorded_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-stripe_created_at"]
        indexes = [models.Index(fields=["customer", "-stripe_created_at"])]

    def __str__(self) -> str:
        return self.stripe_invoice_id

    @property
    def total_display(self) -> str:
        return format_money(self.total, self.currency)


class StripeInvoiceLine(models.Model):
    """One line of a mirrored Stripe invoice, as its latest webhook listed it (replaced on each one)."""

    invoice = models.ForeignKey(StripeInvoice, on_delete=models.CASCADE, related_name="lines")
    position = models.PositiveIntegerField()
    stripe_line_id = models.CharField(max_length=255)
    description = models.TextField(blank=True)
    amount_minor = models.BigIntegerField()
    amount = models.DecimalField(**MONEY, help_text="In major units of the invoice's currency.")
    quantity = models.DecimalField(**QUANTITY, null=True, blank=True)
    period_start = models.DateTimeField(null=True, blank=True)
    period_end = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["invoice", "position"]
        constraints = [
            models.UniqueConstraint(fields=["invoice", "stripe_line_id"], name="stripe_invoice_line_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.description} ({self.amount})"
