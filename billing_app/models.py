"""Operator-side records: API keys for the metering API, and what the Stripe integration and the alerting
jobs remember (``billing_app.stripe``, ``billing_app.operator_alerts``, ``billing_app.circuit_breaker``)."""

import hashlib
import secrets
from decimal import Decimal

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q

from core.money import format_money
from customers.events import CustomerEventType
from customers.models import Customer, Subscription
from plans.models import MONEY, QUANTITY, RATE, CreditPack, Meter, PlanVersion
from usage.models import CreditLedgerEntry


def api_key_hash(raw_key: str) -> str:
    # Keys are 32 random bytes, so a fast hash is as safe as a slow one and keeps auth cheap.
    return hashlib.sha256(raw_key.encode()).hexdigest()


class ApiKeyKind(models.TextChoices):
    SECRET = "secret", "Secret: every endpoint, for a backend"
    PUBLISHABLE = "publishable", "Publishable: one customer's usage and checks, for a frontend"


class ApiKey(models.Model):
    """A key a client sends as ``Authorization: Bearer <key>``. Only its hash is stored.

    A secret key (``sk_``) may call every endpoint. A publishable key (``pk_``) belongs to one customer and
    may only read that customer's usage and ask checks about it (``billing_app.api_auth.ApiKeyScope``), so
    the customer's frontend can hold it.
    """

    name = models.CharField(max_length=120)
    kind = models.CharField(max_length=12, choices=ApiKeyKind.choices, default=ApiKeyKind.SECRET)
    customer = models.ForeignKey(
        Customer,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="publishable_keys",
        help_text="Set for a publishable key: the only customer it may ask about.",
    )
    prefix = models.CharField(max_length=16, help_text="The first characters, to recognise a key.")
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    rate_limit_per_minute = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Requests a minute this key may make. Empty: the default (API_RATE_LIMIT_PER_MINUTE); "
        "0: no limit.",
    )

    class Meta:
        verbose_name = "API key"
        constraints = [
            models.CheckConstraint(
                condition=Q(kind=ApiKeyKind.SECRET, customer__isnull=True)
                | Q(kind=ApiKeyKind.PUBLISHABLE, customer__isnull=False),
                name="api_key_customer_iff_publishable",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @classmethod
    def generate(
        cls,
        *,
        name: str,
        rate_limit_per_minute: int | None = None,
        test_mode: bool | None = None,
        customer: Customer | None = None,
    ) -> tuple["ApiKey", str]:
        """Create a key and return it with the raw secret, which is shown once and never stored.

        A test-mode key (``sk_test_``, the demo's) says so in its prefix, so it is never mistaken for one
        that a production backend uses. Unless told, the mode follows ``DEBUG``: a key made on a
        development server is a test key, one made in production a live key. With a ``customer`` the key is
        that customer's publishable key (``pk_test_``, ``pk_live_``).
        """
        if test_mode is None:
            test_mode = settings.DEBUG
        kind = ApiKeyKind.SECRET if customer is None else ApiKeyKind.PUBLISHABLE
        start = "sk" if kind == ApiKeyKind.SECRET else "pk"
        raw_key = f"{start}_{'test' if test_mode else 'live'}_" + secrets.token_urlsafe(32)
        api_key = cls.objects.create(
            name=name,
            kind=kind,
            customer=customer,
            prefix=raw_key[:12],
            key_hash=api_key_hash(raw_key),
            rate_limit_per_minute=rate_limit_per_minute,
        )
        return api_key, raw_key

    @classmethod
    def generate_publishable(
        cls, *, customer: Customer, name: str | None = None, rate_limit_per_minute: int | None = None
    ) -> tuple["ApiKey", str]:
        """The customer's publishable key, named after the customer unless told."""
        return cls.generate(
            name=name or f"Publishable key of {customer.external_id}",
            customer=customer,
            rate_limit_per_minute=rate_limit_per_minute,
        )


class IdempotencyKey(models.Model):
    """An ``Idempotency-Key`` an API key sent with a write, and the answer that write got.

    Written in the write's own transaction, so a crash keeps neither; a retry with the same key and the
    same request (``fingerprint``) gets ``status_code`` and ``response_body`` back instead of running
    again. Kept ``IDEMPOTENCY_KEY_RETENTION_DAYS`` (``billing_app.idempotency``).
    """

    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="idempotency_keys")
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(
        max_length=64, help_text="SHA-256 of the API key, method, path and canonical body of the request."
    )
    method = models.CharField(max_length=10)
    path = models.TextField()
    status_code = models.PositiveSmallIntegerField()
    response_body = models.TextField(blank=True)
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["api_key", "key"], name="idempotency_key_unique_per_api_key"),
        ]

    def __str__(self) -> str:
        return f"{self.key} ({self.method} {self.path} → {self.status_code})"


# --- Stripe ----------------------------------------------------------------------------------------


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


# --- money in: Checkout, saved cards, auto top-up ---------------------------------------------------------


class CheckoutKind(models.TextChoices):
    TOP_UP = "top_up", "Wallet top-up"
    CREDIT_PACK = "credit_pack", "Credit pack"


class CheckoutStatus(models.TextChoices):
    OPEN = "open", "Waiting for payment"
    COMPLETE = "complete", "Paid and credited"
    EXPIRED = "expired", "Expired unpaid"


class CheckoutSession(models.Model):
    """A Stripe Checkout Session we opened for a top-up or a credit pack, and what it credited.

    What is bought (``amount``, and ``credits`` of a pack) is fixed here when the session opens, so a pack
    repriced later does not change a purchase in flight. ``ledger_entry`` is the row that credited it.
    """

    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="checkout_sessions")
    kind = models.CharField(max_length=12, choices=CheckoutKind.choices)
    status = models.CharField(max_length=10, choices=CheckoutStatus.choices, default=CheckoutStatus.OPEN)
    # NULL until Stripe answered the create call (the row is written first, so its id is the call's key).
    stripe_session_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    url = models.URLField(max_length=2000, blank=True)
    currency = models.CharField(max_length=3)
    amount = models.DecimalField(**MONEY, help_text="What the customer pays, in major units.")
    credit_pack = models.ForeignKey(
        CreditPack, null=True, blank=True, on_delete=models.PROTECT, related_name="checkout_sessions"
    )
    credits = models.DecimalField(**QUANTITY, null=True, blank=True, help_text="The credits a pack grants.")
    success_url = models.URLField(max_length=2000)
    cancel_url = models.URLField(max_length=2000)
    expires_at = models.DateTimeField(null=True, blank=True)
    ledger_entry = models.OneToOneField(
        CreditLedgerEntry, null=True, blank=True, on_delete=models.PROTECT, related_name="checkout_session"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="checkout_session_amount_positive"),
            models.CheckConstraint(
                condition=Q(kind=CheckoutKind.TOP_UP, credit_pack__isnull=True)
                | Q(kind=CheckoutKind.CREDIT_PACK, credit_pack__isnull=False, credits__gt=0),
                name="checkout_session_pack_iff_credit_pack",
            ),
        ]
        indexes = [models.Index(fields=["status", "created_at"])]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.amount} {self.currency} ({self.stripe_session_id})"

    @property
    def ledger_reference(self) -> str:
        """The credit ledger's ``reference`` of this session's money: one crediting per session."""
        return f"checkout:{self.stripe_session_id}"


class SavedPaymentMethod(models.Model):
    """A card Stripe saved to the customer from a paid Checkout Session (``setup_future_usage``)."""

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="saved_payment_methods")
    stripe_payment_method_id = models.CharField(max_length=255, unique=True)
    brand = models.CharField(max_length=32, blank=True)
    last4 = models.CharField(max_length=4, blank=True)
    exp_month = models.PositiveSmallIntegerField(null=True, blank=True)
    exp_year = models.PositiveSmallIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    detached_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.brand} ····{self.last4}"


class AutoTopUp(models.Model):
    """A customer's automatic top-up: when the wallet falls below ``threshold``, charge the saved card
    ``amount``, at most ``monthly_cap`` per calendar month (UTC). Amounts are in the customer's currency."""

    customer = models.OneToOneField(Customer, on_delete=models.CASCADE, related_name="auto_top_up")
    enabled = models.BooleanField(default=False)
    threshold = models.DecimalField(**MONEY)
    amount = models.DecimalField(**MONEY)
    monthly_cap = models.DecimalField(**MONEY)
    consecutive_failures = models.PositiveSmallIntegerField(default=0)
    disabled_reason = models.CharField(
        max_length=300, blank=True, help_text="Why it turned itself off; cleared when an admin turns it on."
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(threshold__gte=0), name="auto_top_up_threshold_ok"),
            models.CheckConstraint(condition=Q(amount__gt=0), name="auto_top_up_amount_positive"),
            models.CheckConstraint(
                condition=Q(monthly_cap__gte=models.F("amount")), name="auto_top_up_cap_covers_amount"
            ),
        ]

    def __str__(self) -> str:
        return f"Auto top-up of {self.customer_id}: {'on' if self.enabled else 'off'}"


class AutoTopUpChargeStatus(models.TextChoices):
    PENDING = "pending", "Charging"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class AutoTopUpCharge(models.Model):
    """One off-session charge of the saved card for a wallet that fell below the threshold.

    ``sequence`` numbers the customer's charges: the n-th crossing is charged with the idempotency key
    ``idempotency_key`` (derived from it), so a retried task never charges a crossing twice. At most one
    charge per customer is pending at a time (a constraint), which is what makes concurrent crossings charge
    once.
    """

    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="auto_top_up_charges")
    sequence = models.PositiveIntegerField()
    amount = models.DecimalField(**MONEY)
    currency = models.CharField(max_length=3)
    payment_method = models.ForeignKey(SavedPaymentMethod, on_delete=models.PROTECT, related_name="charges")
    status = models.CharField(
        max_length=10, choices=AutoTopUpChargeStatus.choices, default=AutoTopUpChargeStatus.PENDING
    )
    idempotency_key = models.CharField(max_length=255, unique=True)
    stripe_payment_intent_id = models.CharField(max_length=255, blank=True)
    failure_code = models.CharField(max_length=64, blank=True)
    failure_message = models.CharField(max_length=500, blank=True)
    ledger_entry = models.OneToOneField(
        CreditLedgerEntry, null=True, blank=True, on_delete=models.PROTECT, related_name="auto_top_up_charge"
    )
    created_at = models.DateTimeField()
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["customer", "sequence"], name="auto_top_up_charge_sequence"),
            models.UniqueConstraint(
                fields=["customer"],
                condition=Q(status=AutoTopUpChargeStatus.PENDING),
                name="auto_top_up_one_pending_charge",
            ),
            models.CheckConstraint(condition=Q(amount__gt=0), name="auto_top_up_charge_amount_positive"),
        ]

    def __str__(self) -> str:
        return f"Auto top-up {self.sequence} of {self.customer_id}: {self.amount} ({self.status})"


class DivergenceKind(models.TextChoices):
    METER_USAGE = "meter_usage", "Meter usage (local ledger vs Stripe meter)"
    INVOICE_TOTAL = "invoice_total", "Invoice (local preview vs Stripe invoice)"


class ReconciliationDivergence(models.Model):
    """Local and Stripe numbers that differ by more than the tolerance. Open until they agree again.

    ``local_value`` and ``stripe_value`` are meter units for meter usage, money (major units) for invoices.
    """

    kind = models.CharField(max_length=16, choices=DivergenceKind.choices)
    customer = models.ForeignKey(
        Customer, on_delete=models.PROTECT, related_name="reconciliation_divergences"
    )
    meter = models.ForeignKey(Meter, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    dimension_value = models.CharField(max_length=120, blank=True)
    # The Stripe meter (meter usage) or invoice (invoice total) compared: one open divergence per subject.
    subject = models.CharField(max_length=255)
    invoice = models.ForeignKey(
        StripeInvoice, null=True, blank=True, on_delete=models.PROTECT, related_name="divergences"
    )
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    local_value = models.DecimalField(**QUANTITY)
    stripe_value = models.DecimalField(**QUANTITY)
    percent = models.DecimalField(
        max_digits=12, decimal_places=2, help_text="|Stripe − local| / local × 100."
    )
    detected_at = models.DateTimeField(auto_now_add=True)
    checked_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)
    note = models.TextField(blank=True)

    class Meta:
        ordering = ["-detected_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "customer", "subject", "period_start"],
                condition=Q(resolved_at__isnull=True),
                name="reconciliation_divergence_one_open",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.customer_id} {self.subject} {self.percent}%"

    @property
    def difference(self) -> Decimal:
        return self.stripe_value - self.local_value


class OperatorAlertKind(models.TextChoices):
    CIRCUIT_BREAKER = "circuit_breaker", "Circuit breaker tripped"
    INVOICE_SPIKE = "invoice_spike", "Invoice spike"
    METER_ERROR = "meter_error", "Stripe meter error"
    RECONCILIATION = "reconciliation", "Reconciliation divergence"
    TOO_OLD_USAGE = "too_old_usage", "Usage too old for Stripe"
    STRIPE_REFUSED = "stripe_refused", "Stripe refused usage"
    OUTBOX_STUCK = "outbox_stuck", "Usage waiting for Stripe"
    MARGIN_NEGATIVE = "margin_negative", "Negative margin"
    WEBHOOK_ENDPOINT_DISABLED = "webhook_disabled", "Webhook endpoint disabled"


class OperatorAlert(models.Model):
    """Something an operator must look at. Raised once per ``dedupe_key``; emailed (and posted to Slack)."""

    kind = models.CharField(max_length=20, choices=OperatorAlertKind.choices)
    customer = models.ForeignKey(
        Customer, null=True, blank=True, on_delete=models.PROTECT, related_name="operator_alerts"
    )
    message = models.TextField()
    data = models.JSONField(default=dict, blank=True)
    # NULL when the alert may repeat; otherwise what makes it the same alert (e.g. the invoice id).
    dedupe_key = models.CharField(max_length=200, null=True, blank=True, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["kind", "customer", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.message[:80]}"


# --- webhooks to the operator's backend (billing_app.webhooks_out) --------------------------------------


def webhook_secret_generate() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


class WebhookEndpoint(models.Model):
    """A URL of the operator's backend that receives signed POSTs of the events it subscribes to.

    ``secret`` signs every delivery. It is stored as it is (signing needs it, a hash would not do) and shown
    once, when the endpoint is made. An endpoint whose deliveries have all failed for
    ``WEBHOOK_DISABLE_AFTER_HOURS`` turns itself off (``disabled_reason`` says why); its pending deliveries
    wait until it is turned on again.
    """

    url = models.URLField(max_length=2000)
    events = ArrayField(
        models.CharField(max_length=64, choices=CustomerEventType.choices),
        help_text="The event types it receives.",
    )
    secret = models.CharField(max_length=100, default=webhook_secret_generate, editable=False)
    description = models.CharField(max_length=200, blank=True)
    enabled = models.BooleanField(default=True)
    disabled_reason = models.CharField(max_length=300, blank=True)
    failing_since = models.DateTimeField(
        null=True, blank=True, help_text="The first failure of the failures in a row; empty after a success."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["enabled"])]

    def __str__(self) -> str:
        return self.url


class WebhookEvent(models.Model):
    """One event as its endpoints receive it: ``body`` is the exact JSON posted, the same on every try.

    ``event_id`` (``evt_…``) is in the body as ``id``: a receiver that gets the event twice (a retry after a
    timeout, a resend) dedupes on it.
    """

    event_id = models.CharField(max_length=40, unique=True)
    type = models.CharField(max_length=64, choices=CustomerEventType.choices)
    customer = models.ForeignKey(
        Customer, null=True, blank=True, on_delete=models.CASCADE, related_name="webhook_events"
    )
    body = models.TextField()
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.type} ({self.event_id})"


class WebhookDeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending (or retrying)"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed: gave up after WEBHOOK_RETRY_HOURS"


class WebhookDelivery(models.Model):
    """An event owed to one endpoint: the outbox row that the delivery task drains.

    Due when ``next_attempt_at`` has come. A sender moves ``next_attempt_at`` past its own HTTP call before
    making it (a lease), so two workers never post the same delivery at once, and a worker that dies mid-call
    leaves it due again a minute later. ``customer`` is the event's, kept here so that a customer's events
    go to an endpoint in order: none is sent while an earlier one of theirs is pending.
    """

    event = models.ForeignKey(WebhookEvent, on_delete=models.CASCADE, related_name="deliveries")
    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    customer = models.ForeignKey(
        Customer, null=True, blank=True, on_delete=models.CASCADE, related_name="webhook_deliveries"
    )
    status = models.CharField(
        max_length=10, choices=WebhookDeliveryStatus.choices, default=WebhookDeliveryStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "webhook deliveries"
        constraints = [
            models.UniqueConstraint(fields=["event", "endpoint"], name="webhook_delivery_once_per_endpoint"),
        ]
        indexes = [
            models.Index(
                fields=["next_attempt_at", "id"],
                condition=Q(status=WebhookDeliveryStatus.PENDING),
                name="webhook_delivery_due",
            ),
            models.Index(fields=["endpoint", "customer", "status", "id"]),
        ]

    def __str__(self) -> str:
        return f"{self.event} → {self.endpoint}"


class WebhookAttempt(models.Model):
    """One POST of a delivery and what the endpoint answered (or why it could not)."""

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_rows")
    attempted_at = models.DateTimeField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.TextField(blank=True, help_text="The start of the answer's body.")
    error = models.TextField(blank=True, help_text="Why there was no answer (timeout, refused connection).")
    duration_ms = models.PositiveIntegerField()
    succeeded = models.BooleanField()

    class Meta:
        ordering = ["-attempted_at", "-id"]

    def __str__(self) -> str:
        return f"{self.attempted_at:%Y-%m-%d %H:%M:%S} {self.status_code or self.error[:40]}"
