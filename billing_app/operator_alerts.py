"""Telling operators: alerts recorded once, emailed and posted to a Slack-compatible webhook.

Operator alerts are ``OperatorAlert`` rows (raised once per ``dedupe_key``), emailed to ``OPERATOR_EMAILS`` and
posted to ``OPERATOR_SLACK_WEBHOOK_URL`` (a Slack-compatible incoming webhook) after the transaction commits.
The circuit breaker (``billing_app.circuit_breaker``), the Stripe outbox and reconciliation raise them, and so
does an invoice spike: an invoice more than ``INVOICE_SPIKE_RATIO`` times the customer's previous one is
raised when Stripe creates it, an hour before it finalizes.
"""

import json
import logging
import urllib.request
from decimal import Decimal
from functools import partial
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Q

from billing_app.models import OperatorAlert, OperatorAlertKind, StripeInvoice, StripeInvoiceStatus
from customers.events import CustomerEventType, customer_event_announce, exact, instant
from customers.models import Customer

logger = logging.getLogger(__name__)

DEFAULT_INVOICE_SPIKE_RATIO = Decimal("1.5")
SLACK_TIMEOUT_SECONDS = 5


def setting_decimal(name: str, default: Decimal) -> Decimal:
    return Decimal(str(getattr(settings, name, default)))


def operators_notify(*, subject: str, message: str) -> None:
    """Email the operators and post to the Slack-compatible webhook. Never raises: a failed notice is
    logged, and the alert stays in the admin either way."""
    if settings.OPERATOR_EMAILS:
        try:
            send_mail(f"[billing] {subject}", message, None, list(settings.OPERATOR_EMAILS))
        except Exception:
            logger.exception("Could not email operators about %r", subject)
    url = settings.OPERATOR_SLACK_WEBHOOK_URL
    if url:
        slack_post(url=url, text=f"*{subject}*\n{message}")


def slack_post(*, url: str, text: str) -> bool:
    """POST ``{"text": ...}`` as Slack's incoming webhooks (and Mattermost, Discord's /slack) accept it."""
    if not url.startswith(("https://", "http://")):
        logger.error("OPERATOR_SLACK_WEBHOOK_URL must be an http(s) URL")
        return False
    # The scheme is checked above; the URL is the operator's own setting.
    request = urllib.request.Request(  # noqa: S310
        url,
        data=json.dumps({"text": text}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=SLACK_TIMEOUT_SECONDS) as response:  # noqa: S310
            return 200 <= response.status < 300
    except Exception:
        logger.exception("Could not post the operator alert to the Slack webhook")
        return False


def operator_alert_raise(
    *,
    kind: str,
    message: str,
    customer: Customer | None = None,
    data: dict[str, Any] | None = None,
    dedupe_key: str | None = None,
) -> OperatorAlert | None:
    """Record an alert and notify operators once the transaction commits; None if ``dedupe_key`` was raised."""
    fields = {"kind": kind, "message": message, "customer": customer, "data": data or {}}
    if dedupe_key is None:
        alert = OperatorAlert.objects.create(**fields)
    else:
        alert, created = OperatorAlert.objects.get_or_create(dedupe_key=dedupe_key, defaults=fields)
        if not created:
            return None
    logger.warning("Operator alert (%s): %s", kind, message)
    subject = OperatorAlertKind(kind).label + (f": {customer.name}" if customer else "")
    # After commit: a rolled-back alert must not page anyone, and no network call runs inside a transaction.
    transaction.on_commit(partial(operators_notify, subject=subject, message=message), robust=True)
    return alert


# --- invoice spike ---------------------------------------------------------------------------------------


def invoice_spike_check(*, invoice: StripeInvoice) -> OperatorAlert | None:
    """Alert operators (and announce ``invoice.spike_flagged``, once per invoice) when ``invoice`` is over
    ``INVOICE_SPIKE_RATIO`` × the customer's previous invoice."""
    if invoice.customer is None:
        return None
    previous = (
        StripeInvoice.objects.filter(customer=invoice.customer)
        .filter(
            Q(stripe_created_at__lt=invoice.stripe_created_at)
            | Q(stripe_created_at=invoice.stripe_created_at, pk__lt=invoice.pk)
        )
        .exclude(status=StripeInvoiceStatus.VOID)
        .order_by("-stripe_created_at", "-pk")
        .first()
    )
    if previous is None or previous.total <= 0:
        return None
    ratio = setting_decimal("INVOICE_SPIKE_RATIO", DEFAULT_INVOICE_SPIKE_RATIO)
    if invoice.total <= previous.total * ratio:
        return None
    increase = (invoice.total - previous.total) * 100 / previous.total
    currency = invoice.currency.upper()
    alert = operator_alert_raise(
        kind=OperatorAlertKind.INVOICE_SPIKE,
        customer=invoice.customer,
        message=(
            f"Invoice {invoice.stripe_invoice_id} for {invoice.customer} is {invoice.total:.2f} {currency}, "
            f"{increase:.0f}% more than the previous one ({previous.total:.2f} {currency}). "
            "Check it before Stripe finalizes it."
        ),
        data={
            "invoice": invoice.stripe_invoice_id,
            "total": str(invoice.total),
            "previous_invoice": previous.stripe_invoice_id,
            "previous_total": str(previous.total),
            "increase_percent": f"{increase:.2f}",
        },
        dedupe_key=f"invoice-spike-{invoice.stripe_invoice_id}",
    )
    if alert is not None:
        customer_event_announce(
            event_type=CustomerEventType.INVOICE_SPIKE_FLAGGED,
            customer=invoice.customer,
            data={
                "invoice": invoice.stripe_invoice_id,
                "total": exact(invoice.total),
                "previous_invoice": previous.stripe_invoice_id,
                "previous_total": exact(previous.total),
                "currency": invoice.currency,
                "period_start": instant(invoice.period_start),
            },
        )
    return alert
