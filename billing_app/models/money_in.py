"""Money in: Checkout sessions, saved cards and automatic top-ups (``billing_app.stripe.checkout``,
``billing_app.auto_top_up``)."""

from django.db import models
from django.db.models import Q

from customers.models import Customer
from plans.models import MONEY, QUANTITY, CreditPack
from usage.models import CreditLedgerEntry


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
