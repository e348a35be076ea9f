"""What the operators must look at: divergences between our ledger and Stripe's (reconciliation), and
alerts (``billing_app.operator_alerts``, ``billing_app.circuit_breaker``)."""

from decimal import Decimal

from django.db import models
from django.db.models import Q

from billing_app.models.stripe import StripeInvoice
from customers.models import Customer
from plans.models import QUANTITY, Meter


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
