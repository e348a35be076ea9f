"""Telling people: spend-limit emails to customers, and alerts to operators.

- Spend alerts: ingest records a soft-limit crossing or a hard-limit stop as a ``Notification`` (the in-app
  notification, once per threshold per period); ``spend_alerts_send`` also records crossings ingest could
  not see (a limit lowered below the spend) and emails each notification once.
- Circuit breaker: a customer whose usage of a meter in the last hour is more than ``CIRCUIT_BREAKER_MULTIPLE``
  times their typical hourly usage of it is frozen, and operators are told. "Typical" is the average hour of
  the last ``CIRCUIT_BREAKER_HISTORY_DAYS`` whole days (from the daily rollups); for a new customer it is the
  floor ``CIRCUIT_BREAKER_MIN_HOURLY_QUANTITY`` (meter units per hour), which also applies when their history
  is quieter than that. An operator unfreezes in the customer admin.
- Invoice spike: an invoice more than ``INVOICE_SPIKE_RATIO`` times the customer's previous one is raised to
  operators when Stripe creates it, an hour before it finalizes.

Operator alerts are ``OperatorAlert`` rows (raised once per ``dedupe_key``), emailed to ``OPERATOR_EMAILS`` and
posted to ``OPERATOR_SLACK_WEBHOOK_URL`` (a Slack-compatible incoming webhook) after the transaction commits.
"""

import json
import logging
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Min, Q, Sum
from django.utils import timezone

from billing_app.models import OperatorAlert, OperatorAlertKind, StripeInvoice, StripeInvoiceStatus
from customers.models import (
    Customer,
    CustomerStatus,
    MemberRole,
    Notification,
    NotificationKind,
    SpendControls,
    Subscription,
)
from customers.services import customer_freeze, notification_record
from plans.models import Meter
from usage.balances import CustomerLedger
from usage.locks import customer_balance_for_update
from usage.models import CustomerBalance, DailyUsageRollup, UsageEvent

logger = logging.getLogger(__name__)

DEFAULT_CIRCUIT_BREAKER_MULTIPLE = Decimal(10)
DEFAULT_CIRCUIT_BREAKER_MIN_HOURLY_QUANTITY = Decimal(100)
DEFAULT_CIRCUIT_BREAKER_HISTORY_DAYS = 14
DEFAULT_INVOICE_SPIKE_RATIO = Decimal("1.5")
SLACK_TIMEOUT_SECONDS = 5
CUSTOMERS_PER_QUERY = 500
EMAILED_KINDS = (
    NotificationKind.SOFT_LIMIT_CROSSED,
    NotificationKind.HARD_LIMIT_REACHED,
    NotificationKind.ACCOUNT_FROZEN,
)


def _setting_decimal(name: str, default: Decimal) -> Decimal:
    return Decimal(str(getattr(settings, name, default)))


# --- operators -------------------------------------------------------------------------------------------


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


# --- spend alerts ----------------------------------------------------------------------------------------


def _period_spend(subscription: Subscription, now: datetime) -> Decimal:
    """Usage charges of the current period in money, as ingest's limit checks count them."""
    customer = subscription.customer
    ledger = CustomerLedger(
        customer=customer,
        balance=CustomerBalance(customer=customer, currency=customer.currency),
        subscription=subscription,
        now=now,
    )
    return ledger.period_spend(subscription.current_period_start)


def limit_crossings_record(*, now: datetime | None = None) -> int:
    """Record soft and hard limits the period's spend is at or over, once per threshold and period.

    Ingest records crossings as they happen; this catches a limit set or lowered below the spend already
    made. Returns how many notifications were new.
    """
    now = now or timezone.now()
    recorded = 0
    controls = SpendControls.objects.filter(Q(soft_limit__isnull=False) | Q(hard_limit__isnull=False))
    for control in controls.select_related("customer__subscription__plan_version"):
        subscription = getattr(control.customer, "subscription", None)
        if subscription is None:
            continue
        spend = _period_spend(subscription, now)
        currency = subscription.plan_version.currency.upper()
        for kind, limit, label in (
            (NotificationKind.SOFT_LIMIT_CROSSED, control.soft_limit, "soft"),
            (NotificationKind.HARD_LIMIT_REACHED, control.hard_limit, "hard"),
        ):
            if limit is None or spend < limit:
                continue
            # The same threshold text as ingest's, so the two never record one crossing twice.
            if notification_record(
                customer=control.customer,
                kind=kind,
                period_start=subscription.current_period_start,
                threshold=f"{limit:f}",
                message=f"Usage charges reached {spend:.2f} {currency} this period "
                f"({label} limit {limit:.2f} {currency}).",
            ):
                recorded += 1
    return recorded


def _customer_recipients(customer: Customer) -> list[str]:
    emails = [customer.email] + [
        member.email for member in customer.members.filter(role=MemberRole.ADMIN) if member.email
    ]
    return list(dict.fromkeys(email for email in emails if email))


def spend_alerts_send(*, now: datetime | None = None, limit: int = 500) -> int:
    """Email each spend notification once; returns how many emails went out.

    A notification is claimed by setting ``emailed_at`` where it is still empty (a conditional UPDATE), so
    two runs never email it twice; a failed send clears the claim for the next run.
    """
    now = now or timezone.now()
    limit_crossings_record(now=now)
    sent = 0
    waiting = Notification.objects.filter(kind__in=EMAILED_KINDS, emailed_at__isnull=True).select_related(
        "customer"
    )
    for notification in waiting.order_by("id")[:limit]:
        claimed = Notification.objects.filter(pk=notification.pk, emailed_at__isnull=True).update(
            emailed_at=now
        )
        if not claimed:
            continue
        recipients = _customer_recipients(notification.customer)
        if not recipients:
            continue
        subject = f"{notification.get_kind_display()} — {notification.customer.name}"
        try:
            send_mail(subject, notification.message, None, recipients)
        except Exception:
            logger.exception("Could not email notification %s", notification.pk)
            Notification.objects.filter(pk=notification.pk).update(emailed_at=None)
            continue
        sent += 1
    return sent


# --- circuit breaker ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunawayUsage:
    customer: Customer
    meter: Meter
    last_hour: Decimal  # meter units received in the last hour
    typical_hourly: Decimal  # meter units in an average hour of the history (0 without history)
    threshold: Decimal  # multiple × max(typical, floor)


def runaway_usage_find(*, now: datetime | None = None) -> list[RunawayUsage]:
    """Unfrozen customers whose last hour of a meter is over the breaker's threshold.

    Reads the last hour of events through the (customer, received_at) index and the history from the
    daily rollups: never a scan of the ledger.
    """
    now = now or timezone.now()
    since = now - timedelta(hours=1)
    multiple = _setting_decimal("CIRCUIT_BREAKER_MULTIPLE", DEFAULT_CIRCUIT_BREAKER_MULTIPLE)
    floor = _setting_decimal(
        "CIRCUIT_BREAKER_MIN_HOURLY_QUANTITY", DEFAULT_CIRCUIT_BREAKER_MIN_HOURLY_QUANTITY
    )
    history_days = int(
        getattr(settings, "CIRCUIT_BREAKER_HISTORY_DAYS", DEFAULT_CIRCUIT_BREAKER_HISTORY_DAYS)
    )
    # Index-driven: the last hour of each unfrozen customer's events through (customer, received_at), a
    # chunk of customers per query. ``timestamp`` keeps a backfill of old usage from looking like a burst.
    customer_ids = list(
        Customer.objects.exclude(status=CustomerStatus.FROZEN).order_by("pk").values_list("pk", flat=True)
    )
    last_hour: list[dict[str, Any]] = []
    for chunk in range(0, len(customer_ids), CUSTOMERS_PER_QUERY):
        last_hour += (
            UsageEvent.objects.filter(
                customer_id__in=customer_ids[chunk : chunk + CUSTOMERS_PER_QUERY],
                received_at__gte=since,
                timestamp__gte=since,
            )
            .values("customer_id", "meter_id")
            .annotate(total=Sum("quantity"))
        )
    # No threshold can be below multiple × floor: only heavier hours need their history read.
    heavy = [row for row in last_hour if row["total"] > multiple * floor]
    today = now.date()
    found = []
    for row in heavy:
        history = DailyUsageRollup.objects.filter(
            customer_id=row["customer_id"],
            meter_id=row["meter_id"],
            day__gte=today - timedelta(days=history_days),
            day__lt=today,
        ).aggregate(total=Sum("quantity"), first=Min("day"))
        days = (today - history["first"]).days if history["first"] else 0
        typical = history["total"] / (24 * days) if days else Decimal(0)
        threshold = multiple * max(typical, floor)
        if row["total"] > threshold:
            found.append(
                RunawayUsage(
                    customer=Customer.objects.get(pk=row["customer_id"]),
                    meter=Meter.objects.get(pk=row["meter_id"]),
                    last_hour=row["total"],
                    typical_hourly=typical,
                    threshold=threshold,
                )
            )
    return found


def circuit_breaker_check(*, now: datetime | None = None) -> list[Customer]:
    """Freeze customers with runaway usage and alert operators; returns the customers frozen now.

    A customer whose circuit-breaker alert an operator acknowledged in the last hour is left alone: the
    operator looked and let them through.
    """
    now = now or timezone.now()
    frozen = []
    for runaway in runaway_usage_find(now=now):
        customer = runaway.customer
        if OperatorAlert.objects.filter(
            kind=OperatorAlertKind.CIRCUIT_BREAKER,
            customer=customer,
            acknowledged_at__gte=now - timedelta(hours=1),
        ).exists():
            continue
        reason = (
            f"{runaway.last_hour.normalize():f} {runaway.meter.unit} of {runaway.meter.name} in the last hour, "
            f"over the threshold of {runaway.threshold.normalize():f} "
            f"(typical hour {runaway.typical_hourly:.2f})"
        )
        with transaction.atomic():
            # Under the customer's lock, so a batch being ingested finishes before the freeze and the next
            # one sees it.
            customer_balance_for_update(customer)
            customer.refresh_from_db()
            if customer.is_frozen:
                continue
            subscription = Subscription.objects.filter(customer=customer).first()
            period_start = subscription.current_period_start if subscription else now
            customer_freeze(customer=customer, reason=f"circuit breaker: {reason}", period_start=period_start)
            operator_alert_raise(
                kind=OperatorAlertKind.CIRCUIT_BREAKER,
                customer=customer,
                message=f"{customer} was frozen: {reason}. Unfreeze them in the customer admin once it is safe.",
                data={
                    "meter": runaway.meter.key,
                    "last_hour": str(runaway.last_hour),
                    "typical_hourly": str(runaway.typical_hourly),
                    "threshold": str(runaway.threshold),
                },
                dedupe_key=f"circuit-breaker-{customer.pk}-{now:%Y%m%dT%H%M}",
            )
        frozen.append(customer)
    return frozen


# --- invoice spike ---------------------------------------------------------------------------------------


def invoice_spike_check(*, invoice: StripeInvoice) -> OperatorAlert | None:
    """Alert operators when ``invoice`` is over ``INVOICE_SPIKE_RATIO`` × the customer's previous invoice."""
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
    ratio = _setting_decimal("INVOICE_SPIKE_RATIO", DEFAULT_INVOICE_SPIKE_RATIO)
    if invoice.total <= previous.total * ratio:
        return None
    increase = (invoice.total - previous.total) * 100 / previous.total
    currency = invoice.currency.upper()
    return operator_alert_raise(
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
