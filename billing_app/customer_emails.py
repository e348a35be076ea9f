"""Emails to customers: a spend limit crossed, a hard limit reached, an account frozen, an automatic top-up
that failed or turned itself off.

Ingest records a soft-limit crossing or a hard-limit stop as a ``Notification`` as it happens
(``usage.recording``, through ``customers.spend_limits``); ``customer_emails_send`` first records the
crossings ingest could not see (a limit set or lowered below the spend already made), then emails each
notification once.
"""

import logging
from datetime import datetime
from decimal import Decimal

from django.core.mail import send_mail
from django.db.models import F, Q
from django.utils import timezone

from customers.models import Customer, MemberRole, Notification, NotificationKind, SpendControls, Subscription
from customers.spend_limits import limit_crossing_record, spend_limit_crossings
from usage.consumption import ConsumptionEngine
from usage.default_soft_limit import default_soft_limits_refresh
from usage.models import CustomerBalance

logger = logging.getLogger(__name__)

EMAILED_KINDS = (
    NotificationKind.SOFT_LIMIT_CROSSED,
    NotificationKind.HARD_LIMIT_REACHED,
    NotificationKind.ACCOUNT_FROZEN,
    NotificationKind.AUTO_TOP_UP_FAILED,
    NotificationKind.AUTO_TOP_UP_DISABLED,
)


def _period_spend(subscription: Subscription, now: datetime) -> Decimal:
    """Usage charges of the current period in money, as ingest's limit checks count them."""
    customer = subscription.customer
    engine = ConsumptionEngine(
        customer=customer,
        balance=CustomerBalance(customer=customer, currency=customer.currency),
        subscription=subscription,
        now=now,
    )
    return engine.period_spend(subscription.current_period_start)


def limit_crossings_record(*, now: datetime | None = None) -> int:
    """Record soft and hard limits the period's spend is at or over, once per limit and period.

    Ingest records crossings as they happen; this catches a limit set or lowered below the spend already
    made. Returns how many notifications were new.
    """
    now = now or timezone.now()
    recorded = 0
    # A default soft limit counts once it is current for the period: it is refreshed when the customer's
    # usage could cross it and when their limits are read or saved, so one not current has not been reached.
    default_in_force = Q(
        soft_limit__isnull=True,
        default_soft_limit_off=False,
        default_soft_limit__isnull=False,
        default_soft_limit_period_start=F("customer__subscription__current_period_start"),
    )
    controls = SpendControls.objects.filter(
        Q(soft_limit__isnull=False) | Q(hard_limit__isnull=False) | default_in_force
    )
    subscribed = [
        (control, control.customer.subscription)
        for control in controls.select_related("customer__subscription__plan_version")
        if getattr(control.customer, "subscription", None) is not None
    ]
    # A customer here for a limit of their own may have a default from an earlier period stored.
    default_soft_limits_refresh(controls_and_subscriptions=subscribed)
    for control, subscription in subscribed:
        spend = _period_spend(subscription, now)
        for crossing in spend_limit_crossings(before=None, after=spend, controls=control):
            if limit_crossing_record(
                customer=control.customer,
                crossing=crossing,
                period_start=subscription.current_period_start,
                spend=spend,
                currency=subscription.plan_version.currency,
            ):
                recorded += 1
    return recorded


def _customer_recipients(customer: Customer) -> list[str]:
    emails = [customer.email] + [
        member.email for member in customer.members.filter(role=MemberRole.ADMIN) if member.email
    ]
    return list(dict.fromkeys(email for email in emails if email))


def customer_emails_send(*, now: datetime | None = None, limit: int = 500) -> int:
    """Email each spend-limit and frozen-account notification once; returns how many emails went out.

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
