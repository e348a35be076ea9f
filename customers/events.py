"""What happens to a customer that the operator's own systems may react to, announced where it happens.

Each announcement names a ``CustomerEventType`` and carries its data; it is sent synchronously, in the
caller's transaction, so a listener that records it (the operator's webhooks, ``billing_app.webhooks_out``)
records it exactly when the thing happened and loses it with a rollback. ``customers`` and ``usage``
announce; they know nothing of who listens (``billing_app`` depends on them, never the other way).
"""

from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import models
from django.dispatch import Signal

from customers.models import Customer


class CustomerEventType(models.TextChoices):
    """The event types, as the operator's webhook endpoints subscribe to them (one home for the names)."""

    SOFT_LIMIT_CROSSED = "customer.soft_limit_crossed", "Soft spend limit crossed"
    HARD_LIMIT_REACHED = "customer.hard_limit_reached", "Hard spend limit reached"
    ENTITLEMENT_LIMIT_REACHED = "customer.entitlement_limit_reached", "Plan limit of a meter reached"
    FROZEN = "customer.frozen", "Customer frozen"
    WALLET_LOW_BALANCE = "wallet.low_balance", "Wallet balance low"
    CREDITS_EXPIRING = "credits.expiring", "Credits expiring soon"
    INVOICE_SPIKE_FLAGGED = "invoice.spike_flagged", "Invoice spike flagged"
    RECONCILIATION_DIVERGENCE = "reconciliation.divergence", "Stripe reconciliation divergence"
    MARGIN_NEGATIVE = "margin.negative", "Negative margin"


customer_event_announced = Signal()


def customer_event_announce(*, event_type: str, customer: Customer, data: dict[str, Any]) -> None:
    """Tell listeners, now and in the caller's transaction, that ``event_type`` happened to ``customer``.

    ``data`` holds JSON values only: amounts as exact decimal strings, times as ISO 8601.
    """
    customer_event_announced.send(sender=Customer, event_type=event_type, customer=customer, data=data)


def exact(value: Decimal) -> str:
    """An amount as an event carries it: the exact decimal as a string, without exponent or trailing zeros."""
    return f"{value.normalize():f}"


def instant(value: datetime) -> str:
    return value.isoformat()
