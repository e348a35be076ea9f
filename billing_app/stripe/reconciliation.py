"""Compare the local ledger with Stripe and record where they disagree.

- Meter usage (hourly job): per customer × Stripe meter × billing period (the current one and the one
  before), the overage money the drain has sent (``StripeMeterEvent`` rows marked sent, exact amounts in
  minor units) against Stripe's meter event summary for the customer over the period.
- Invoices (on ``invoice.finalized``): the post-paid overage the local engine rated for the period (the
  outbox amounts, rounded once per Stripe meter, as Stripe rounds each line) against the invoice's
  metered lines.

A difference over ``RECONCILIATION_TOLERANCE_PERCENT`` (1%) of the local number is a
``ReconciliationDivergence`` (one open row per subject and period, updated on each check and resolved when
the numbers agree again), a ``logger.warning`` and, the first time, an operator alert. Differences smaller
than what whole minor units explain (under one cent) are ignored: Stripe takes whole values, and the drain
carries the fraction of a cent.

Usage still in the outbox is in neither number, so a Stripe outage shows as a backlog, not a divergence.
"""

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import stripe
from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import Exists, OuterRef, Sum
from django.utils import timezone

from billing_app.db_routers import replica_reads
from billing_app.models import (
    DivergenceKind,
    MeterEventStatus,
    OperatorAlertKind,
    ReconciliationDivergence,
    StripeInvoice,
    StripeMeterEvent,
)
from billing_app.operator_alerts import operator_alert_raise
from billing_app.stripe.client import stripe_client, stripe_connected
from billing_app.stripe.meters import StripeMeterRoute, StripeMeterRoutes
from billing_app.stripe.outbox import minor_units, outbox_period_lines
from core.money import currency_exponent, round_money
from customers.events import CustomerEventType, customer_event_announce, exact, instant
from customers.models import Customer, Subscription
from plans.models import Meter
from plans.terms import PlanTerms

logger = logging.getLogger(__name__)

DEFAULT_TOLERANCE_PERCENT = Decimal(1)
STRIPE_MAX_LEAD = timedelta(minutes=5)
HUNDRED = Decimal(100)


def tolerance_percent() -> Decimal:
    return Decimal(str(getattr(settings, "RECONCILIATION_TOLERANCE_PERCENT", DEFAULT_TOLERANCE_PERCENT)))


def percent_difference(*, local: Decimal, remote: Decimal) -> Decimal:
    """|remote − local| as a percentage of local (100 when local is zero and remote is not)."""
    if local == 0:
        return Decimal(0) if remote == 0 else HUNDRED
    return (abs(remote - local) * HUNDRED / abs(local)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


@dataclass
class ReconciliationReport:
    checked: int = 0
    diverged: list[ReconciliationDivergence] = field(default_factory=list)
    resolved: int = 0


def _ceil_minute(moment: datetime) -> datetime:
    floor = moment.replace(second=0, microsecond=0)
    return floor if floor == moment else floor + timedelta(minutes=1)


def stripe_meter_total(
    client: stripe.StripeClient,
    *,
    stripe_meter_id: str,
    stripe_customer_id: str,
    start: datetime,
    end: datetime,
) -> Decimal:
    """Stripe's aggregate of one meter for one customer over [start, end), widened to whole minutes.

    Summaries take whole minutes, so the start is rounded down: Stripe's period starts at the local start's
    whole second (``stripe_period_bounds``), and the events of this period are dated from there.
    """
    params: Any = {
        "customer": stripe_customer_id,
        "start_time": int(start.replace(second=0, microsecond=0).timestamp()),
        "end_time": int(_ceil_minute(end).timestamp()),
    }
    total = Decimal(0)
    for summary in client.v1.billing.meters.event_summaries.list(stripe_meter_id, params).auto_paging_iter():
        total += Decimal(str(summary.aggregated_value))
    return total


def divergence_check(
    *,
    kind: str,
    customer: Customer,
    subject: str,
    period: tuple[datetime, datetime],
    local: Decimal,
    remote: Decimal,
    smallest_difference: Decimal,
    now: datetime,
    meter_id: int | None = None,
    dimension_value: str = "",
    invoice: StripeInvoice | None = None,
) -> ReconciliationDivergence | None:
    """Record (or update) a divergence when the numbers differ beyond the tolerance, else resolve any open
    one for the subject. Returns the open divergence, if any."""
    percent = percent_difference(local=local, remote=remote)
    open_divergences = ReconciliationDivergence.objects.filter(
        kind=kind, customer=customer, subject=subject, period_start=period[0], resolved_at__isnull=True
    )
    if abs(remote - local) < smallest_difference or percent <= tolerance_percent():
        open_divergences.update(resolved_at=now, checked_at=now, note="The numbers agree again.")
        return None
    with transaction.atomic():
        divergence, created = ReconciliationDivergence.objects.update_or_create(
            kind=kind,
            customer=customer,
            subject=subject,
            period_start=period[0],
            resolved_at=None,
            defaults={
                "period_end": period[1],
                "meter_id": meter_id,
                "dimension_value": dimension_value,
                "invoice": invoice,
                "local_value": local,
                "stripe_value": remote,
                "percent": percent,
                "checked_at": now,
            },
        )
        logger.warning(
            "Reconciliation: %s for %s (%s, period from %s): local %s, Stripe %s (%s%%)",
            DivergenceKind(kind).label,
            customer,
            subject,
            period[0].isoformat(),
            f"{local.normalize():f}",
            f"{remote.normalize():f}",
            percent,
        )
        if created:
            operator_alert_raise(
                kind=OperatorAlertKind.RECONCILIATION,
                customer=customer,
                message=(
                    f"{DivergenceKind(kind).label} differ by {percent}% for {customer} ({subject}): "
                    f"local {local.normalize():f}, Stripe {remote.normalize():f}."
                ),
                data={"divergence": divergence.pk, "local": str(local), "stripe": str(remote)},
                dedupe_key=f"divergence-{divergence.pk}",
            )
            customer_event_announce(
                event_type=CustomerEventType.RECONCILIATION_DIVERGENCE,
                customer=customer,
                data={
                    "divergence": divergence.pk,
                    "kind": kind,
                    "subject": subject,
                    "period_start": instant(period[0]),
                    "local": exact(local),
                    "stripe": exact(remote),
                    "percent": exact(percent),
                },
            )
    return divergence


def customer_meters_reconcile(
    *, subscription: Subscription, client: stripe.StripeClient, now: datetime
) -> ReconciliationReport:
    """Check every Stripe meter of the customer for the current period and the one before."""
    report = ReconciliationReport()
    customer = subscription.customer
    current = (subscription.current_period_start, subscription.current_period_end)
    previous = subscription.period_containing(current[0] - timedelta(microseconds=1))
    for period in (previous, current):
        # What we sent is read from the replica when there is one and it has replayed all the primary had
        # written (billing_app/db_routers.py): a row marked sent a moment ago and missing from a lagging
        # replica would show as a divergence. The divergences below are written to the primary.
        with replica_reads(caught_up=True):
            sent = StripeMeterEvent.objects.filter(
                customer=customer, period_start=period[0], status=MeterEventStatus.SENT
            )
            subjects = (
                StripeMeterRoutes(PlanTerms.of_version(subscription.plan_version)).all()
                if period == current
                else set()
            )
            subjects |= {
                StripeMeterRoute(
                    row["event_name"], row["stripe_meter_id"], row["meter_id"], row["dimension_value"]
                )
                for row in sent.values(
                    "event_name", "stripe_meter_id", "meter_id", "dimension_value"
                ).distinct()
            }
            totals = {
                name: minor_units(total, subscription.plan_version.currency)
                for name, total in sent.values_list("event_name").annotate(total=Sum("amount"))
            }
        # Events may be dated up to five minutes ahead (Stripe's limit), e.g. at the first whole minute of a
        # period that has just begun.
        end = min(period[1], now + STRIPE_MAX_LEAD)
        if end <= period[0]:
            continue
        for subject in sorted(subjects, key=lambda s: s.event_name):
            local = totals.get(subject.event_name) or Decimal(0)
            remote = stripe_meter_total(
                client,
                stripe_meter_id=subject.stripe_meter_id,
                stripe_customer_id=customer.stripe_customer_id,
                start=period[0],
                end=end,
            )
            report.checked += 1
            divergence = divergence_check(
                kind=DivergenceKind.METER_USAGE,
                customer=customer,
                subject=subject.stripe_meter_id,
                period=period,
                local=local,
                remote=remote,
                # Stripe holds whole cents; the drain carries the fraction (under one) to the next event.
                smallest_difference=Decimal(1),
                now=now,
                meter_id=subject.meter_id,
                dimension_value=subject.dimension_value,
            )
            if divergence is not None:
                report.diverged.append(divergence)
    return report


def customer_reconcile_queue(*, customer: Customer) -> bool:
    """Queue a reconciliation of the customer's Stripe meters, at most once per ``USAGE_PAGE_RECONCILE_MINUTES``
    (the usage page asks each time it is opened). The window is a Redis ``SET NX EX`` (``cache.add``): the
    first page view in it queues the task, the others change nothing. Returns whether it queued one."""
    if not customer.stripe_customer_id or not stripe_connected():
        return False
    window = settings.USAGE_PAGE_RECONCILE_MINUTES * 60
    if not cache.add(f"reconcile-on-view:{customer.pk}", 1, timeout=window):
        return False
    from billing_app.tasks import customer_reconcile_task  # the tasks module imports this one

    customer_id = customer.pk
    transaction.on_commit(lambda: customer_reconcile_task.delay(customer_id))
    return True


def reconciliation_run(
    *, client: stripe.StripeClient | None = None, now: datetime | None = None
) -> ReconciliationReport:
    """The hourly job: every Stripe meter of each customer with activity in the window.

    Its cost follows activity, not the number of subscriptions: a customer counts when usage was sent to
    Stripe for them, or Stripe invoiced them, in the last ``RECONCILIATION_ACTIVITY_HOURS``. An idle
    customer's totals cannot move on our side, and were checked by the runs after their last activity.
    """
    client = client or stripe_client()
    now = now or timezone.now()
    report = ReconciliationReport()
    since = now - timedelta(hours=settings.RECONCILIATION_ACTIVITY_HOURS)
    active = Exists(
        StripeMeterEvent.objects.filter(customer=OuterRef("customer"), created_at__gte=since)
    ) | Exists(StripeInvoice.objects.filter(customer=OuterRef("customer"), recorded_at__gte=since))
    subscriptions = (
        Subscription.objects.exclude(customer__stripe_customer_id="")
        .filter(active)
        .select_related("customer", "plan_version")
        .order_by("pk")
    )
    for subscription in subscriptions:
        result = customer_meters_reconcile(subscription=subscription, client=client, now=now)
        report.checked += result.checked
        report.diverged.extend(result.diverged)
    return report


def invoice_compare(*, invoice: StripeInvoice) -> ReconciliationDivergence | None:
    """Store the local preview of a finalized invoice's usage and compare it with the invoice's metered lines.

    The local period is the one containing the middle of Stripe's: Stripe's subscription is anchored when it
    was created in Stripe, a little after the local one, so the two periods nearly coincide.
    """
    subscription = (
        Subscription.objects.filter(customer=invoice.customer).first() if invoice.customer else None
    )
    if subscription is None or invoice.usage_total is None:
        return None
    middle = invoice.period_start + (invoice.period_end - invoice.period_start) / 2
    period = subscription.period_containing(middle)
    lines = outbox_period_lines(customer=subscription.customer, period_start=period[0])
    preview = sum((round_money(amount, invoice.currency) for amount in lines.values()), Decimal(0))
    StripeInvoice.objects.filter(pk=invoice.pk).update(local_preview_total=preview)
    invoice.local_preview_total = preview
    return divergence_check(
        kind=DivergenceKind.INVOICE_TOTAL,
        customer=subscription.customer,
        subject=invoice.stripe_invoice_id,
        period=period,
        local=preview,
        remote=invoice.usage_total,
        # Both round each line once: any whole minor unit apart is a divergence.
        smallest_difference=Decimal(1).scaleb(-currency_exponent(invoice.currency)),
        now=timezone.now(),
        invoice=invoice,
    )


def meter_label(divergence: ReconciliationDivergence) -> str:
    """How the admin names a divergence's subject: the meter key and dimension value, or the invoice id."""
    if divergence.kind == DivergenceKind.INVOICE_TOTAL:
        return divergence.subject
    meter: Meter | None = divergence.meter
    name = meter.key if meter else divergence.subject
    return f"{name}.{divergence.dimension_value}" if divergence.dimension_value else name
