"""Drain the Stripe usage outbox into Stripe meter events: nothing lost, nothing counted twice.

Ingest writes ``StripeUsageOutbox`` rows (post-paid overage, and give-backs of it) in the transaction that
accepted the usage. What reaches Stripe is money as we rated it, in minor units, never quantities for Stripe
to rate again (docs/stripe.md). The drain works in two steps:

1. **Claim** (one short transaction): lock pending rows with ``select_for_update(skip_locked=True)``, so
   concurrent drains take disjoint rows; group them per customer × Stripe meter (the meter, or the meter's
   dimension value for dimensional prices) × period × hour; turn each group into a ``StripeMeterEvent`` whose
   ``identifier`` is derived from its row ids and whose whole-cent ``value`` is fixed from the running total
   of ``StripeUsageCarry``; stamp the identifier on the rows; commit. Groups whose hour is too old for Stripe
   (35 days) are marked ``too_old`` and raised to operators to invoice by hand, never dropped. Rows with no
   Stripe meter yet stay pending and the next batch starts after them, so one customer's stuck rows never
   hold back anyone else's; rows pending longer than ``STRIPE_OUTBOX_STUCK_MINUTES`` raise an operator alert.
2. **Send** (no transaction, no row lock held over the network): post each pending meter event with its
   identifier, then mark it and its rows sent. A lease (``claimed_until``) keeps two drains from posting
   the same event at the same time; it is a courtesy, not the guarantee.

Why it is crash-safe: after the claim commits, an event's identifier and value never change. Whatever
dies (the worker between the call and the "sent" update, the connection mid-call, Stripe for an hour),
the event stays pending and the next drain posts the same identifier. Stripe counts an identifier once
(within at least 24 hours; the drain retries within minutes) and answers a repeat with "An event already
exists with identifier ...", which the drain takes as success. Before the claim commits nothing has been
sent, and a rolled-back claim leaves the rows pending as they were.

Whole minor units: Stripe meter values are integers. Each event sends ``floor(total claimed) - cents sent so
far`` for its carry key, so a fraction of a cent is carried into the next event instead of being rounded away,
and what Stripe has is always within one cent of the ledger. A give-back sends a negative value. At period
close ``billing_app.stripe.carries`` rounds the last fraction half up. Only the drain reads the outbox; it never
looks at usage events.
"""

import hashlib
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from typing import Any

import stripe
from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Min, Q
from django.utils import timezone

from billing_app.models import (
    MeterEventStatus,
    OperatorAlertKind,
    StripeMeterEvent,
    StripeUsageCarry,
)
from billing_app.operator_alerts import operator_alert_raise
from billing_app.stripe.client import stripe_client
from billing_app.stripe.meters import StripeMeterRoute, StripeMeterRoutes
from billing_app.stripe.periods import stripe_period_bounds
from core.money import currency_exponent
from customers.models import Customer, Subscription
from plans.terms import PlanTerms
from usage.models import OutboxStatus, StripeUsageOutbox

logger = logging.getLogger(__name__)

# Stripe accepts meter events up to 35 calendar days old and 5 minutes ahead.
STRIPE_MAX_EVENT_AGE = timedelta(days=35)
# Claimed events must still be inside Stripe's window when a retry sends them a little later.
AGE_MARGIN = timedelta(minutes=15)
WINDOW = timedelta(hours=1)
DEFAULT_BATCH_SIZE = 500
DEFAULT_MAX_BATCHES = 20
DEFAULT_LEASE_SECONDS = 120
DEFAULT_STUCK_MINUTES = 15
TRANSIENT_ERRORS = (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError)


@dataclass
class DrainResult:
    rows_claimed: int = 0
    events_created: int = 0
    events_sent: int = 0
    rows_too_old: int = 0
    events_failed: int = 0
    waiting_for_sync: int = 0
    # The last row id the claim looked at: the next batch starts after it, so rows that must wait (no Stripe
    # meter yet) never fill every batch and hold back the rows behind them.
    last_row_id: int = 0
    rows_stuck: int = 0


@dataclass
class _Group:
    customer: Customer
    route: StripeMeterRoute
    period_start: datetime
    window_start: datetime
    rows: list[StripeUsageOutbox] = field(default_factory=list)

    @property
    def quantity(self) -> Decimal:
        return sum((row.quantity for row in self.rows), Decimal(0))

    @property
    def amount(self) -> Decimal:
        return sum((row.amount for row in self.rows), Decimal(0))


def meter_event_timestamp(
    *, window_start: datetime, period_start: datetime, period_end: datetime, now: datetime
) -> datetime | None:
    """When to date a group's meter event, or None if its hour is too old for Stripe.

    Stripe bills an event in the period its timestamp falls in, and holds our period in whole seconds
    (``stripe_period_bounds``: the Stripe subscription is backdated to the local start). So: the hour's start,
    kept inside that period (usage in the first seconds of a period is dated at its start, never before it),
    and moved later only when Stripe's 35-day window opened inside the hour.
    """
    first, end = stripe_period_bounds(period_start, period_end)
    last = end - timedelta(seconds=1)
    inside = min(max(window_start, first), last)
    earliest = (now - STRIPE_MAX_EVENT_AGE + AGE_MARGIN).replace(microsecond=0)
    if inside >= earliest:
        return inside
    if earliest < min(window_start + WINDOW, end):
        return earliest
    return None


def meter_event_identifier(rows: list[StripeUsageOutbox]) -> str:
    """Deterministic from the rows sent together: the same rows always make the same identifier.

    A row belongs to one event only, so the smallest id already makes it unique; the hash of all ids and
    the first row's creation time keeps it unique across databases that reuse ids with one Stripe account.
    """
    ids = sorted(row.pk for row in rows)
    first = min(rows, key=lambda row: row.pk)
    digest = hashlib.sha256(f"{','.join(map(str, ids))}|{first.created_at.isoformat()}".encode()).hexdigest()
    return f"ob-{ids[0]}-{digest[:20]}"


class _Routes:
    """Which Stripe meter each outbox row feeds, by the customer's plan version (read once per claim)."""

    def __init__(self) -> None:
        self._subscriptions: dict[int, Subscription | None] = {}
        self._by_version: dict[int | None, StripeMeterRoutes] = {}

    def subscription(self, customer: Customer) -> Subscription | None:
        if customer.pk not in self._subscriptions:
            self._subscriptions[customer.pk] = (
                Subscription.objects.filter(customer=customer).select_related("plan_version").first()
            )
        return self._subscriptions[customer.pk]

    def route(self, row: StripeUsageOutbox) -> StripeMeterRoute | None:
        subscription = self.subscription(row.customer)
        version = subscription.plan_version if subscription else None
        key = version.pk if version else None
        if key not in self._by_version:
            terms = (
                PlanTerms.of_version(version) if version else PlanTerms.without_plan(row.customer.currency)
            )
            self._by_version[key] = StripeMeterRoutes(terms)
        return self._by_version[key].route(meter=row.meter, dimension_value=row.dimension_value)


def _carry_for_update(
    customer: Customer, route: StripeMeterRoute, period_start: datetime, subscription: Subscription | None
) -> StripeUsageCarry:
    """Lock the carry of (customer, Stripe meter, period), creating it on first use."""
    if subscription is not None:
        _, period_end = subscription.period_containing(period_start)
    else:
        period_end = period_start + timedelta(days=31)
    StripeUsageCarry.objects.bulk_create(
        [
            StripeUsageCarry(
                customer=customer,
                event_name=route.event_name,
                period_start=period_start,
                period_end=period_end,
            )
        ],
        ignore_conflicts=True,
    )
    return StripeUsageCarry.objects.select_for_update().get(
        customer=customer, event_name=route.event_name, period_start=period_start
    )


def _whole(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_FLOOR))


def minor_units(amount: Decimal, currency: str) -> Decimal:
    """``amount`` of ``currency`` in its minor unit, exact: 0.1234 USD -> 12.34 (cents)."""
    return amount.scaleb(currency_exponent(currency))


@transaction.atomic
def outbox_claim(
    *, batch_size: int = DEFAULT_BATCH_SIZE, now: datetime | None = None, after_id: int = 0
) -> DrainResult:
    """Turn up to ``batch_size`` pending outbox rows with ids above ``after_id`` into pending meter events
    (see the module docstring)."""
    now = now or timezone.now()
    result = DrainResult()
    rows = list(
        StripeUsageOutbox.objects.select_for_update(skip_locked=True, of=("self",))
        .filter(status=OutboxStatus.PENDING, meter_event_identifier="", pk__gt=after_id)
        # Customers Stripe cannot bill yet wait: usage sent before the Stripe subscription exists is dated
        # before its first period and would never be invoiced.
        .exclude(customer__stripe_customer_id="")
        .exclude(customer__subscription__stripe_subscription_id="")
        .select_related("customer", "meter")
        .order_by("id")[:batch_size]
    )
    routes = _Routes()
    groups: dict[tuple[int, str, datetime, datetime], _Group] = {}
    result.last_row_id = rows[-1].pk if rows else after_id
    for row in rows:
        route = routes.route(row)
        if route is None:
            result.waiting_for_sync += 1
            continue
        key = (row.customer_id, route.event_name, row.period_start, row.window_start)
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group(row.customer, route, row.period_start, row.window_start)
        group.rows.append(row)
    too_old: list[tuple[_Group, str]] = []
    # Carries are locked in key order, so two drains never wait on each other in a circle.
    for key in sorted(groups):
        group = groups[key]
        result.rows_claimed += len(group.rows)
        row_ids = [row.pk for row in group.rows]
        identifier = meter_event_identifier(group.rows)
        carry = _carry_for_update(
            group.customer, group.route, group.period_start, routes.subscription(group.customer)
        )
        timestamp = meter_event_timestamp(
            window_start=group.window_start,
            period_start=group.period_start,
            period_end=carry.period_end,
            now=now,
        )
        if timestamp is None:
            too_old.append((group, identifier))
            result.rows_too_old += len(group.rows)
            continue
        amount = group.amount
        carry.minor_units += minor_units(amount, group.rows[0].currency)
        # Negative after a give-back: Stripe's sum meter takes it off what was sent before.
        value = _whole(carry.minor_units) - carry.value
        carry.value += value
        carry.save(update_fields=["minor_units", "value"])
        # Nothing whole to send yet: the fraction waits in the carry and the rows are done.
        status = MeterEventStatus.PENDING if value else MeterEventStatus.SENT
        StripeMeterEvent.objects.create(
            identifier=identifier,
            customer=group.customer,
            meter_id=group.rows[0].meter_id,
            dimension_value=group.rows[0].dimension_value,
            event_name=group.route.event_name,
            stripe_meter_id=group.route.stripe_meter_id,
            stripe_customer_id=group.customer.stripe_customer_id,
            period_start=group.period_start,
            window_start=group.window_start,
            timestamp=timestamp,
            quantity=group.quantity,
            amount=amount,
            value=value,
            row_count=len(group.rows),
            status=status,
            sent_at=None if value else now,
        )
        rows_update: dict[str, Any] = {"meter_event_identifier": identifier}
        if not value:
            rows_update.update(status=OutboxStatus.SENT, sent_at=now)
        StripeUsageOutbox.objects.filter(pk__in=row_ids).update(**rows_update)
        result.events_created += 1
    if too_old:
        _too_old(too_old)
    return result


def _too_old(groups: list[tuple[_Group, str]]) -> None:
    """Flag rows Stripe will not take any more, and tell operators to bill them as invoice items: one
    alert per customer per claim, with each hour's quantity and amount in its data."""
    by_customer: dict[int, list[tuple[_Group, str]]] = {}
    for group, identifier in groups:
        row_ids = [row.pk for row in group.rows]
        StripeUsageOutbox.objects.filter(pk__in=row_ids).update(
            status=OutboxStatus.TOO_OLD,
            last_error=f"The hour {group.window_start:%Y-%m-%d %H:00} UTC is past Stripe's 35-day window.",
            meter_event_identifier=identifier,
        )
        by_customer.setdefault(group.customer.pk, []).append((group, identifier))
    for customer_groups in by_customer.values():
        customer = customer_groups[0][0].customer
        currency = customer_groups[0][0].rows[0].currency
        amounts = [sum((row.amount for row in group.rows), Decimal(0)) for group, _ in customer_groups]
        hours = [
            {
                "identifier": identifier,
                "event_name": group.route.event_name,
                "period_start": group.period_start.isoformat(),
                "window_start": group.window_start.isoformat(),
                "quantity": str(group.quantity),
                "amount": str(hour_amount),
                "outbox_ids": [row.pk for row in group.rows],
            }
            for (group, identifier), hour_amount in zip(customer_groups, amounts, strict=True)
        ]
        amount = sum(amounts, Decimal(0))
        windows = sorted(group.window_start for group, _ in customer_groups)
        operator_alert_raise(
            kind=OperatorAlertKind.TOO_OLD_USAGE,
            customer=customer,
            message=(
                f"{len(hours)} hour(s) of {customer}'s overage ({amount:.2f} {currency.upper()}, "
                f"{windows[0]:%Y-%m-%d %H:00} to {windows[-1]:%Y-%m-%d %H:00} UTC) are too old for "
                "Stripe's 35-day window: invoice them manually."
            ),
            data={"currency": currency, "amount": str(amount), "hours": hours},
            dedupe_key=f"too-old-{customer_groups[0][1]}",
        )


# --- sending ---------------------------------------------------------------------------------------------


def _lease(event_id: int, *, owner: str, now: datetime) -> bool:
    """Take the event for one send unless another live drain holds it; True if taken."""
    lease = timedelta(seconds=getattr(settings, "STRIPE_OUTBOX_LEASE_SECONDS", DEFAULT_LEASE_SECONDS))
    return bool(
        StripeMeterEvent.objects.filter(pk=event_id, status=MeterEventStatus.PENDING)
        .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now) | Q(claimed_by=owner))
        .update(claimed_by=owner, claimed_until=now + lease, attempts=F("attempts") + 1)
    )


@transaction.atomic
def _mark(event: StripeMeterEvent, status: str, *, now: datetime, error: str = "") -> None:
    event.status, event.last_error, event.claimed_until = status, error, None
    event.sent_at = now if status == MeterEventStatus.SENT else None
    event.save(update_fields=["status", "last_error", "claimed_until", "sent_at"])
    row_status = {
        MeterEventStatus.SENT: OutboxStatus.SENT,
        MeterEventStatus.TOO_OLD: OutboxStatus.TOO_OLD,
    }.get(MeterEventStatus(status))
    rows = StripeUsageOutbox.objects.filter(meter_event_identifier=event.identifier)
    if row_status is not None:
        rows.update(status=row_status, sent_at=event.sent_at, last_error=error)
    else:
        rows.update(last_error=error, attempts=F("attempts") + 1)


def _already_counted(error: stripe.InvalidRequestError) -> bool:
    """Stripe's answer to an identifier it has already counted (the earlier post got through)."""
    return "already exists with identifier" in (error.user_message or "")


def _outside_window(error: stripe.InvalidRequestError) -> bool:
    return getattr(error, "param", None) == "timestamp"


def meter_event_send(
    event: StripeMeterEvent, *, client: stripe.StripeClient, now: datetime | None = None
) -> str:
    """Post one meter event and record the outcome; transient errors are recorded and re-raised."""
    now = now or timezone.now()
    params: Any = {
        "event_name": event.event_name,
        "identifier": event.identifier,
        "timestamp": int(event.timestamp.timestamp()),
        "payload": {"stripe_customer_id": event.stripe_customer_id, "value": str(event.value)},
    }
    try:
        client.v1.billing.meter_events.create(params)
    except stripe.InvalidRequestError as error:
        message = error.user_message or str(error)
        if _already_counted(error):
            _mark(event, MeterEventStatus.SENT, now=now)
            return MeterEventStatus.SENT
        if _outside_window(error):
            _mark(event, MeterEventStatus.TOO_OLD, now=now, error=message)
            _alert_refused(event, OperatorAlertKind.TOO_OLD_USAGE, message)
            return MeterEventStatus.TOO_OLD
        _mark(event, MeterEventStatus.FAILED, now=now, error=message)
        _alert_refused(event, OperatorAlertKind.STRIPE_REFUSED, message)
        return MeterEventStatus.FAILED
    except TRANSIENT_ERRORS as error:
        StripeMeterEvent.objects.filter(pk=event.pk).update(
            last_error=f"{type(error).__name__}: {error.user_message or error}", claimed_until=None
        )
        raise
    _mark(event, MeterEventStatus.SENT, now=now)
    return MeterEventStatus.SENT


def _alert_refused(event: StripeMeterEvent, kind: str, message: str) -> None:
    operator_alert_raise(
        kind=kind,
        customer=event.customer,
        message=(
            f"Stripe refused {event.value} units of {event.event_name} for the hour "
            f"{event.window_start:%Y-%m-%d %H:00} UTC: {message} "
            + (
                "Invoice them manually."
                if kind == OperatorAlertKind.TOO_OLD_USAGE
                else "Check the meter and customer."
            )
        ),
        data={"identifier": event.identifier, "value": event.value, "quantity": str(event.quantity)},
        dedupe_key=f"refused-{event.identifier}",
    )


def meter_events_send(
    *, client: stripe.StripeClient, owner: str | None = None, now: datetime | None = None, limit: int = 5000
) -> DrainResult:
    """Post pending meter events, oldest first. Stops at the first transient error (re-raised): when Stripe is
    down, the next attempt comes from the task's backoff, and every event keeps waiting in order."""
    owner = owner or uuid.uuid4().hex
    result = DrainResult()
    pending = StripeMeterEvent.objects.filter(status=MeterEventStatus.PENDING).order_by("id")
    for event_id in list(pending.values_list("pk", flat=True)[:limit]):
        moment = now or timezone.now()
        if not _lease(event_id, owner=owner, now=moment):
            continue
        event = StripeMeterEvent.objects.select_related("customer").get(pk=event_id)
        outcome = meter_event_send(event, client=client, now=moment)
        if outcome == MeterEventStatus.SENT:
            result.events_sent += 1
        elif outcome == MeterEventStatus.TOO_OLD:
            result.rows_too_old += event.row_count
        else:
            result.events_failed += 1
    return result


def outbox_drain(
    *,
    client: stripe.StripeClient | None = None,
    owner: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batches: int = DEFAULT_MAX_BATCHES,
    now: datetime | None = None,
) -> DrainResult:
    """Claim pending outbox rows into meter events, then post every pending meter event."""
    client = client or stripe_client()
    result = DrainResult()
    after_id = 0
    for _ in range(max_batches):
        claimed = outbox_claim(batch_size=batch_size, now=now, after_id=after_id)
        result.rows_claimed += claimed.rows_claimed
        result.events_created += claimed.events_created
        result.rows_too_old += claimed.rows_too_old
        result.waiting_for_sync += claimed.waiting_for_sync
        if claimed.last_row_id == after_id:
            break
        after_id = claimed.last_row_id
    result.rows_stuck = outbox_stuck_alert(now=now)
    sent = meter_events_send(client=client, owner=owner, now=now)
    result.events_sent = sent.events_sent
    result.events_failed = sent.events_failed
    result.rows_too_old += sent.rows_too_old
    return result


def outbox_stuck_alert(*, now: datetime | None = None) -> int:
    """Tell operators about rows waiting longer than ``STRIPE_OUTBOX_STUCK_MINUTES`` (default: 15 drains of
    one minute): one alert per customer and oldest stuck row. Returns the number of stuck rows."""
    now = now or timezone.now()
    minutes = getattr(settings, "STRIPE_OUTBOX_STUCK_MINUTES", DEFAULT_STUCK_MINUTES)
    stuck = StripeUsageOutbox.objects.filter(
        status=OutboxStatus.PENDING,
        meter_event_identifier="",
        created_at__lt=now - timedelta(minutes=minutes),
    )
    total = 0
    for customer_id, count, oldest_id, oldest_at in (
        stuck.values_list("customer_id")
        .annotate(count=Count("id"), oldest=Min("id"), since=Min("created_at"))
        .order_by("customer_id")
    ):
        total += count
        customer = Customer.objects.get(pk=customer_id)
        operator_alert_raise(
            kind=OperatorAlertKind.OUTBOX_STUCK,
            customer=customer,
            message=(
                f"{count} outbox row(s) of {customer} have waited for Stripe since {oldest_at:%Y-%m-%d %H:%M} "
                "UTC: the customer or its plan's Stripe meters are not synced (see the sync errors)."
            ),
            data={"rows": count, "oldest_outbox_id": oldest_id},
            dedupe_key=f"outbox-stuck-{oldest_id}",
        )
    return total


def outbox_period_lines(*, customer: Customer, period_start: datetime) -> dict[str, Decimal]:
    """The overage money we rated for one period, per Stripe meter (event name): what each metered line of
    Stripe's invoice must bill once rounded. Usage too old for Stripe is billed by hand and left out; rows
    with no Stripe meter yet are under ``""``."""
    routes = _Routes()
    lines: dict[str, Decimal] = {}
    rows = (
        StripeUsageOutbox.objects.filter(customer=customer, period_start=period_start)
        .exclude(status=OutboxStatus.TOO_OLD)
        .select_related("customer", "meter")
    )
    for row in rows:
        route = routes.route(row)
        name = route.event_name if route else ""
        lines[name] = lines.get(name, Decimal(0)) + row.amount
    return lines


def outbox_backlog() -> dict[str, Any]:
    """What is waiting to reach Stripe, for the admin and the logs."""
    pending_rows = StripeUsageOutbox.objects.filter(status=OutboxStatus.PENDING)
    return {
        "pending_rows": pending_rows.count(),
        "oldest_pending": pending_rows.order_by("id").values_list("created_at", flat=True).first(),
        "pending_events": StripeMeterEvent.objects.filter(status=MeterEventStatus.PENDING).count(),
    }
