"""Emails to customers: a spend limit crossed, a hard limit reached, an account frozen, an automatic top-up
that failed or turned itself off, a price change's notice and reminder (with one-click links), and the credit
of a price change's safety net.

Ingest records a soft-limit crossing or a hard-limit stop as a ``Notification`` as it happens
(``usage.recording``, through ``customers.spend_limits``); ``customer_emails_send`` first records the
crossings ingest could not see (a limit set or lowered below the spend already made), then emails each
notification once.
"""

import logging
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.mail import send_mail
from django.db.models import F, Q
from django.urls import reverse
from django.utils import timezone

from core.money import format_money
from customers.models import Customer, MemberRole, Notification, NotificationKind, SpendControls, Subscription
from customers.spend_limits import limit_crossing_record, spend_limit_crossings
from usage.consumption import ConsumptionEngine
from usage.default_soft_limit import default_soft_limits_refresh
from usage.models import CustomerBalance, MigrationChoice, PlanMigrationNotice
from usage.plan_migrations import price_change_headline, price_change_link_token

logger = logging.getLogger(__name__)

EMAILED_KINDS = (
    NotificationKind.SOFT_LIMIT_CROSSED,
    NotificationKind.HARD_LIMIT_REACHED,
    NotificationKind.ACCOUNT_FROZEN,
    NotificationKind.AUTO_TOP_UP_FAILED,
    NotificationKind.AUTO_TOP_UP_DISABLED,
    NotificationKind.PRICE_CHANGE_CREDIT,
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


def price_change_emails_send(*, now: datetime | None = None, limit: int = 500) -> int:
    """Email each price-change notice once, and once more ``PRICE_CHANGE_REMINDER_DAYS`` before the date to
    customers who have not chosen; returns how many emails went out. Claimed like notifications above
    (``notice_sent_at``, ``reminder_sent_at``), so two runs never send one twice."""
    now = now or timezone.now()
    open_notices = PlanMigrationNotice.objects.filter(
        choice=MigrationChoice.PENDING, skipped_reason="", choose_by__gt=now
    ).select_related("migration__plan_version__plan", "customer", "from_version")
    due_notices = open_notices.filter(notice_sent_at__isnull=True)
    # A customer told within the reminder window has just read the notice: no reminder on its heels.
    due_reminders = open_notices.filter(
        notice_sent_at__isnull=False,
        reminder_sent_at__isnull=True,
        choose_by__lte=now + timedelta(days=settings.PRICE_CHANGE_REMINDER_DAYS),
        notice_sent_at__lt=F("choose_by") - timedelta(days=settings.PRICE_CHANGE_REMINDER_DAYS),
    )
    sent = 0
    for field, waiting, reminder in (
        ("notice_sent_at", due_notices, False),
        ("reminder_sent_at", due_reminders, True),
    ):
        for notice in waiting.order_by("pk")[:limit]:
            claimed = PlanMigrationNotice.objects.filter(pk=notice.pk, **{f"{field}__isnull": True}).update(
                **{field: now}
            )
            if not claimed:
                continue
            recipients = _customer_recipients(notice.customer)
            if not recipients:
                continue
            subject, body = _price_change_email(notice, reminder=reminder)
            try:
                send_mail(subject, body, None, recipients)
            except Exception:
                logger.exception("Could not email price-change notice %s", notice.pk)
                PlanMigrationNotice.objects.filter(pk=notice.pk).update(**{field: None})
                continue
            sent += 1
    return sent


def _price_change_email(notice: PlanMigrationNotice, *, reminder: bool) -> tuple[str, str]:
    target = notice.migration.plan_version
    plan = target.plan.name
    currency = target.currency
    entry = getattr(target, "changelog_entry", None)
    links = {
        choice: settings.SITE_URL
        + reverse("price-change-choice", args=[price_change_link_token(notice=notice, choice=choice)])
        for choice in (MigrationChoice.KEEP, MigrationChoice.ACCEPT)
    }
    lines = [
        f"Hello {notice.customer.name},",
        "",
        price_change_headline(notice),
        "",
        "What changes:",
        *(f"  {line}" for line in (entry.summary.splitlines() if entry else []) if line.strip()),
    ]
    if notice.usage:
        lines += ["", f"Your usage over your last {notice.periods} closed periods:"]
        lines += [f"  {meter}: {Decimal(units).normalize():f}" for meter, units in notice.usage.items()]
    if notice.old_total is not None and notice.new_total is not None and notice.periods:
        lines += [
            "",
            f"What you paid for them (v{notice.from_version.number}): {format_money(notice.old_total, currency)}",
            f"What you would have paid on the new version (v{target.number}): "
            f"{format_money(notice.new_total, currency)}",
        ]
    lines += [
        "",
        f"Choose by {notice.choose_by:%B %-d, %Y}:",
        f"  Keep my current plan, for as long as I stay on it: {links[MigrationChoice.KEEP]}",
        f"  Accept the new prices at my renewal: {links[MigrationChoice.ACCEPT]}",
        "",
        "If you do nothing, your plan moves to the new prices at your first renewal from that date.",
        "Each link asks you to confirm, and works once.",
    ]
    when = "Reminder: " if reminder else ""
    return f"{when}{plan} prices change on {notice.choose_by:%b %-d, %Y} — {notice.customer.name}", "\n".join(
        lines
    )
