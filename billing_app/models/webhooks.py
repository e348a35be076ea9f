"""Webhooks to the operator's backend (``billing_app.webhooks_out``): endpoints, events, and each event's
deliveries and their attempts."""

import secrets

from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q

from customers.events import CustomerEventType
from customers.models import Customer


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
