"""Batch ingest of usage events: validate the whole batch, then write it in one transaction.

A batch is validated whole first (``usage.validation``): any problem rejects it with every
problem listed and nothing written. A valid batch is written per customer, in primary-key order, under the customer's lock: duplicates are answered
from the ledger, each new event is decided by ``CustomerLedger`` in batch order, and events,
ledger rows, period totals, daily rollups and the Stripe outbox are written in bulk.
"""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from customers.models import Customer, Member, NotificationKind, Subscription
from customers.services import notification_record
from plans.models import Meter
from plans.money import CREDITS
from usage.balances import Coverage, CustomerLedger, Draw, ledger_amount
from usage.errors import UsageRefused
from usage.locks import customer_balance_for_update
from usage.models import (
    CreditGrant,
    CreditLedgerEntry,
    CustomerBalance,
    DailyUsageRollup,
    LedgerEntryKind,
    PeriodUsage,
    Reservation,
    StripeUsageOutbox,
    UsageEvent,
)
from usage.validation import MAX_NAME_LENGTH, EventInput, check_dimensions, events_parse, resolve_names


@dataclass
class EventResult:
    idempotency_key: str
    status: str  # accepted | duplicate | refused
    id: int | None = None
    code: str | None = None
    message: str | None = None
    recorded_event: UsageEvent | None = None  # this batch's event, whose id exists once written

    def resolve_id(self) -> None:
        if self.id is None and self.recorded_event is not None:
            self.id = self.recorded_event.pk

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"idempotency_key": self.idempotency_key, "status": self.status, "id": self.id}
        if self.code:
            body.update(code=self.code, message=self.message)
        return body


@dataclass
class IngestResult:
    results: list[EventResult]
    events: list[UsageEvent] = field(default_factory=list)


# --- writing -------------------------------------------------------------------------------------


def usage_events_ingest(*, raw_events: list[Any], now: datetime | None = None) -> IngestResult:
    """Validate and record a batch. Raises ``InvalidBatch`` (nothing written) on any bad event."""
    now = now or timezone.now()
    events = events_parse(raw_events, now=now)
    named = resolve_names(events)
    by_customer: dict[str, list[EventInput]] = defaultdict(list)
    for event in events:
        by_customer[event.customer_id].append(event)
    results: dict[int, EventResult] = {}
    writes = BatchWrites()
    with transaction.atomic():
        # Each customer is decided under its lock, taken in primary-key order; the locks are held
        # until the batch commits, so writing every customer's rows together at the end is safe.
        for external_id in sorted(by_customer, key=lambda key: named.customers[key].pk):
            customer = named.customers[external_id]
            results.update(
                events_record_for_customer(
                    customer=customer,
                    subscription=named.subscriptions[customer.pk],
                    events=by_customer[external_id],
                    meters=named.meters,
                    now=now,
                    writes=writes,
                )
            )
        writes.flush()
    for result in results.values():
        result.resolve_id()
    return IngestResult(results=[results[event.index] for event in events], events=writes.events)


class BatchWrites:
    """The rows a batch writes, gathered customer by customer and written with one statement each.

    Rows may point at events not yet inserted: ``flush`` inserts the events first, and Django then
    takes each foreign key from the saved event.
    """

    def __init__(self) -> None:
        self.events: list[UsageEvent] = []
        self.ledger_entries: list[CreditLedgerEntry] = []
        self.grants: list[CreditGrant] = []
        self.balances: list[CustomerBalance] = []
        self.period_rows: list[PeriodUsage] = []
        self.rollups: dict[tuple[int, RollupKey], DailyUsageRollup] = {}
        self.outbox: list[StripeUsageOutbox] = []

    def flush(self) -> None:
        UsageEvent.objects.bulk_create(self.events)
        CreditLedgerEntry.objects.bulk_create(self.ledger_entries)
        CreditGrant.objects.bulk_update(self.grants, ["remaining"])
        CustomerBalance.objects.bulk_update(self.balances, ["wallet_balance", "updated_at"])
        PeriodUsage.objects.bulk_create([row for row in self.period_rows if row.pk is None])
        PeriodUsage.objects.bulk_update(
            [row for row in self.period_rows if row.pk is not None], PERIOD_TOTALS
        )
        _rollups_add(list(self.rollups.values()))
        StripeUsageOutbox.objects.bulk_create(self.outbox)


PERIOD_TOTALS = [
    "unit",
    "quantity",
    "non_billable_quantity",
    "event_count",
    "cost",
    "included_quantity",
    "credits_amount",
    "wallet_amount",
    "overage_amount",
]


def events_record_for_customer(
    *,
    customer: Customer,
    subscription: Subscription,
    events: list[EventInput],
    meters: dict[str, Meter],
    now: datetime,
    writes: BatchWrites,
    exclude_reservation: Reservation | None = None,
) -> dict[int, EventResult]:
    """Lock the customer, decide each new event in order, and add what must be written to ``writes``.

    The caller flushes ``writes`` in the same transaction.
    """
    balance = customer_balance_for_update(customer)
    # Read after the lock: a concurrent request recording the same keys has committed by now.
    existing = dict(
        UsageEvent.objects.filter(
            customer=customer, idempotency_key__in=[e.idempotency_key for e in events]
        ).values_list("idempotency_key", "id")
    )
    if all(event.idempotency_key in existing for event in events):
        # A replayed batch: answer from the ledger without loading balances or writing anything.
        return {
            e.index: EventResult(e.idempotency_key, "duplicate", existing[e.idempotency_key]) for e in events
        }
    ledger = CustomerLedger(
        customer=customer,
        balance=balance,
        subscription=subscription,
        now=now,
        exclude_reservation=exclude_reservation,
    )
    check_dimensions(ledger, events, meters)
    members = members_get_or_create(customer, {e.user for e in events if e.user})
    spend_before = ledger.period_spend(subscription.current_period_start)

    results: dict[int, EventResult] = {}
    recorded: dict[str, UsageEvent] = {}
    new_events: list[UsageEvent] = []
    draws_by_event: list[list[Draw]] = []
    for event in events:
        key = event.idempotency_key
        if key in existing:
            results[event.index] = EventResult(key, "duplicate", existing[key])
            continue
        if key in recorded:  # a duplicate within the batch points at the event recorded first
            results[event.index] = EventResult(key, "duplicate", recorded_event=recorded[key])
            continue
        meter = meters[event.meter_key]
        try:
            coverage = ledger.quote(
                meter=meter,
                quantity=event.quantity,
                properties=event.properties,
                timestamp=event.timestamp,
                authorized=event.reservation is not None,
            )
        except UsageRefused as refusal:
            results[event.index] = EventResult(key, "refused", code=refusal.code, message=refusal.message)
            continue
        draws_by_event.append(ledger.apply(coverage, meter=meter, timestamp=event.timestamp))
        usage_event = _event_row(event, coverage, customer, meter, members, ledger, now)
        recorded[key] = usage_event
        new_events.append(usage_event)
        results[event.index] = EventResult(key, "accepted", recorded_event=usage_event)

    writes.events.extend(new_events)
    _collect_ledger(writes, customer, ledger, new_events, draws_by_event)
    writes.period_rows.extend(ledger.changed_period_usage())
    _collect_rollups(writes, customer, new_events)
    _collect_outbox(writes, customer, ledger, new_events)
    _record_limit_notifications(customer, ledger, spend_before)
    return results


def members_get_or_create(customer: Customer, external_ids: set[str]) -> dict[str, Member]:
    """Members by external id, creating those seen for the first time."""
    if not external_ids:
        return {}
    members = {
        m.external_id: m for m in Member.objects.filter(customer=customer, external_id__in=external_ids)
    }
    missing = external_ids - set(members)
    if missing:
        Member.objects.bulk_create(
            [Member(customer=customer, external_id=external_id) for external_id in sorted(missing)],
            ignore_conflicts=True,
        )
        members = {
            m.external_id: m for m in Member.objects.filter(customer=customer, external_id__in=external_ids)
        }
    return members


def _event_row(
    event: EventInput,
    coverage: Coverage,
    customer: Customer,
    meter: Meter,
    members: dict[str, Member],
    ledger: CustomerLedger,
    now: datetime,
) -> UsageEvent:
    action = event.properties.get("action")
    return UsageEvent(
        customer=customer,
        meter=meter,
        member=members.get(event.user) if event.user else None,
        idempotency_key=event.idempotency_key,
        quantity=event.quantity,
        properties=event.properties,
        timestamp=event.timestamp,
        received_at=now,
        period_start=ledger.period_for(event.timestamp)[0],
        action=str(action)[:MAX_NAME_LENGTH] if action is not None else "",
        dimension_value=coverage.dimension_value[:MAX_NAME_LENGTH],
        billable=coverage.billable,
        reservation=event.reservation,
        cost_unit=coverage.unit,
        cost=coverage.cost,
        included_quantity=coverage.included_quantity,
        credits_amount=coverage.credits,
        wallet_amount=coverage.wallet,
        overage_amount=coverage.overage,
    )


def _collect_ledger(
    writes: BatchWrites,
    customer: Customer,
    ledger: CustomerLedger,
    events: list[UsageEvent],
    draws_by_event: list[list[Draw]],
) -> None:
    """One draw-down row per grant and one for the wallet per batch, pointing at the last event drawn.

    Each event records its own split (credits, wallet, overage); the ledger rows carry the
    balance changes, summed per source so that a batch of 1,000 events writes a handful of rows.
    """
    totals: dict[int | None, Decimal] = defaultdict(Decimal)
    counts: dict[int | None, int] = defaultdict(int)
    last_event: dict[int | None, UsageEvent] = {}
    grants: dict[int | None, CreditGrant] = {}
    for usage_event, draws in zip(events, draws_by_event, strict=True):
        for draw in draws:
            key = draw.grant.pk if draw.grant else None
            totals[key] += draw.amount
            counts[key] += 1
            last_event[key] = usage_event
            if draw.grant:
                grants[key] = draw.grant
    rows = [
        CreditLedgerEntry(
            customer=customer,
            grant=grants.get(key),
            kind=LedgerEntryKind.DRAWDOWN if amount < 0 else LedgerEntryKind.REFUND,
            amount=ledger_amount(amount),
            unit=grants[key].unit if key is not None else ledger.currency,
            usage_event=last_event[key],
            reservation=last_event[key].reservation,
            note=f"usage: {counts[key]} event{'s' if counts[key] > 1 else ''}",
        )
        for key, amount in totals.items()
        if amount
    ]
    writes.ledger_entries.extend(rows)
    writes.grants.extend(grants.values())
    if None in totals:
        ledger.balance.updated_at = ledger.now
        writes.balances.append(ledger.balance)


def _overage_quantity(event: UsageEvent) -> Decimal:
    """The units that overage pays for: the billable units in proportion to the overage's share of the cost."""
    if event.overage_amount <= 0 or event.cost <= 0:
        return Decimal(0)
    billable = event.quantity - event.included_quantity
    if event.overage_amount == event.cost:
        return billable
    return (billable * event.overage_amount / event.cost).quantize(Decimal("0.000001"))


RollupKey = tuple[int, int | None, str, str, Any]


ROLLUP_TOTALS = ("quantity", "billable_quantity", "overage_quantity", "event_count", "cost", "overage_amount")
ROLLUP_KEY = ("customer_id", "meter_id", "member_id", "action", "dimension_value", "day")


def _collect_rollups(writes: BatchWrites, customer: Customer, events: list[UsageEvent]) -> None:
    """Sum the customer's new events per daily rollup key, to be added to the rollups."""
    deltas = writes.rollups
    for event in events:
        # UTC days, whatever offset the client sent, so every page counts the same day.
        day = event.timestamp.astimezone(UTC).date()
        key = (customer.pk, (event.meter_id, event.member_id, event.action, event.dimension_value, day))
        delta = deltas.get(key)
        if delta is None:
            delta = deltas[key] = DailyUsageRollup(
                customer=customer,
                meter_id=event.meter_id,
                member_id=event.member_id,
                action=event.action,
                dimension_value=event.dimension_value,
                day=day,
                period_start=event.period_start,
            )
        delta.quantity += event.quantity
        delta.event_count += 1
        if event.billable:
            delta.billable_quantity += event.quantity - event.included_quantity
            delta.overage_quantity += _overage_quantity(event)
            delta.cost += event.cost
            delta.overage_amount += event.overage_amount


def _rollups_add(deltas: list[DailyUsageRollup]) -> None:
    if not deltas:
        return
    if connection.vendor == "postgresql":
        _rollups_add_upsert(deltas)
        return
    by_customer: dict[int, dict[RollupKey, DailyUsageRollup]] = defaultdict(dict)
    for delta in deltas:
        key = (delta.meter_id, delta.member_id, delta.action, delta.dimension_value, delta.day)
        by_customer[delta.customer_id][key] = delta
    for customer_id, customer_deltas in by_customer.items():
        _rollups_add_read_then_write(customer_id, customer_deltas)


def _rollups_add_upsert(deltas: list[DailyUsageRollup]) -> None:
    """One statement: insert new days, add to existing ones (the unique key treats no member as one)."""
    table = DailyUsageRollup._meta.db_table
    columns = (*ROLLUP_KEY, "period_start", *ROLLUP_TOTALS)
    row = "(" + ", ".join(["%s"] * len(columns)) + ")"
    # Only constant names are formatted in; every value is a parameter.
    sql = (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([row] * len(deltas))} "  # noqa: S608
        f"ON CONFLICT ({', '.join(ROLLUP_KEY)}) DO UPDATE SET "
        + ", ".join(f"{name} = {table}.{name} + EXCLUDED.{name}" for name in ROLLUP_TOTALS)
    )
    params = [getattr(delta, column) for delta in deltas for column in columns]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _rollups_add_read_then_write(customer_id: int, deltas: dict[RollupKey, DailyUsageRollup]) -> None:
    """The portable way, for SQLite (the embedded default), which cannot key on an empty member.

    Safe because the caller holds the customer's lock: no one else writes these rows meanwhile.
    """
    existing = DailyUsageRollup.objects.filter(
        customer_id=customer_id, day__in={key[4] for key in deltas}, meter_id__in={key[0] for key in deltas}
    )
    to_update = []
    for rollup in existing:
        key = (rollup.meter_id, rollup.member_id, rollup.action, rollup.dimension_value, rollup.day)
        delta = deltas.pop(key, None)
        if delta is not None:
            for name in ROLLUP_TOTALS:
                setattr(rollup, name, getattr(rollup, name) + getattr(delta, name))
            to_update.append(rollup)
    DailyUsageRollup.objects.bulk_update(to_update, list(ROLLUP_TOTALS))
    DailyUsageRollup.objects.bulk_create(list(deltas.values()))


def _collect_outbox(
    writes: BatchWrites, customer: Customer, ledger: CustomerLedger, events: list[UsageEvent]
) -> None:
    """Queue what Stripe must bill: post-paid overage only, in the same transaction as the usage.

    Summed per (meter, dimension value, period, hour), which is as fine as Stripe needs it.
    """
    rows: dict[tuple[int, str, datetime, datetime], StripeUsageOutbox] = {}
    for event in events:
        if event.overage_amount <= 0 or (event.cost_unit == CREDITS and not ledger.credit_rate):
            continue
        window = event.timestamp.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        key = (event.meter_id, event.dimension_value, event.period_start, window)
        row = rows.get(key)
        if row is None:
            row = rows[key] = StripeUsageOutbox(
                customer=customer,
                meter_id=event.meter_id,
                dimension_value=event.dimension_value,
                period_start=event.period_start,
                window_start=window,
                last_event=event,
                event_count=0,
                quantity=Decimal(0),
                amount=Decimal(0),
                currency=ledger.currency,
            )
        row.last_event = event
        row.event_count += 1
        row.quantity += _overage_quantity(event)
        row.amount += ledger.to_money(event.overage_amount, event.cost_unit)
    writes.outbox.extend(rows.values())


def _record_limit_notifications(customer: Customer, ledger: CustomerLedger, spend_before: Decimal) -> None:
    """A soft or hard limit crossed by this batch is recorded once per period for the alerting jobs."""
    period_start = ledger.subscription.current_period_start
    spend_after = ledger.period_spend(period_start)
    currency = ledger.currency.upper()
    for kind, limit in (
        (NotificationKind.SOFT_LIMIT_CROSSED, ledger.controls.soft_limit),
        (NotificationKind.HARD_LIMIT_REACHED, ledger.controls.hard_limit),
    ):
        if limit is not None and spend_before < limit <= spend_after:
            notification_record(
                customer=customer,
                kind=kind,
                period_start=period_start,
                threshold=f"{limit:f}",
                message=f"Usage charges reached {spend_after:.2f} {currency} in the billing period "
                f"that began {period_start:%b} {period_start.day} "
                f"({'soft' if kind == NotificationKind.SOFT_LIMIT_CROSSED else 'hard'} limit {limit:.2f} {currency}).",
            )
