"""Batch ingest of usage events: validate the whole batch, then write it in one transaction.

A batch is validated whole first (``usage.validation``): any problem rejects it with every
problem listed and nothing written. A valid batch takes the locks of all its customers, in
primary-key order; duplicates are answered from the ledger, each new event is decided by the
customer's ``CustomerLedger`` in batch order, and events, ledger rows, period totals, daily
rollups and the Stripe outbox are gathered in a ``usage.batch_writes.BatchWrites`` and written
with one statement per table for the whole batch.

The hot path is a batch of 1,000 events, so it reads with a fixed number of statements whatever
the number of customers in the batch (``bench/ingest.py``).
"""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from core.money import CREDITS
from customers.models import Customer, Member, NotificationKind
from customers.services import notification_record
from plans.models import Meter
from usage.balances import ZERO, Coverage, CustomerLedger, Draw, ledger_amount
from usage.batch_writes import BatchWrites, RecordedEvent
from usage.errors import UsageRefused
from usage.ledger_reads import ledger_rows_read
from usage.locks import customer_balances_for_update
from usage.models import (
    CreditGrant,
    CreditLedgerEntry,
    LedgerEntryKind,
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
    recorded_event: RecordedEvent | None = None  # this batch's event, whose id exists once written

    def resolve_id(self) -> None:
        if self.id is None and self.recorded_event is not None:
            self.id = self.recorded_event.id

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"idempotency_key": self.idempotency_key, "status": self.status, "id": self.id}
        if self.code:
            body.update(code=self.code, message=self.message)
        return body


@dataclass
class IngestResult:
    results: list[EventResult]
    events: list[RecordedEvent] = field(default_factory=list)


# --- writing -------------------------------------------------------------------------------------


def usage_events_ingest(*, raw_events: list[Any], now: datetime | None = None) -> IngestResult:
    """Validate and record a batch. Raises ``InvalidBatch`` (nothing written) on any bad event.

    Whatever the number of customers in the batch, it reads with a fixed number of statements:
    one locks every customer (in primary-key order), one finds the keys already recorded, three
    load the ledgers of the customers with new events, and one or two find their members.
    """
    now = now or timezone.now()
    events = events_parse(raw_events, now=now)
    named = resolve_names(events)
    by_customer: dict[int, list[EventInput]] = defaultdict(list)
    for event in events:
        by_customer[named.customers[event.customer_id].pk].append(event)
    customers = sorted((named.customers[e[0].customer_id] for e in by_customer.values()), key=lambda c: c.pk)
    results: dict[int, EventResult] = {}
    writes = BatchWrites()
    with transaction.atomic():
        # The locks are held until the batch commits, so writing every customer's rows together at
        # the end is safe. Everything below is read after the locks.
        balances = customer_balances_for_update(customers)
        existing = events_recorded(by_customer)
        fresh = [
            c for c in customers if any((c.pk, e.idempotency_key) not in existing for e in by_customer[c.pk])
        ]
        subscriptions = [named.subscriptions[c.pk] for c in fresh]
        rows = ledger_rows_read(subscriptions=subscriptions, now=now)
        members = members_get_or_create({(c.pk, e.user) for c in fresh for e in by_customer[c.pk] if e.user})
        for customer in customers:
            if customer.pk not in rows:
                # A replay: answered from the ledger without loading balances or writing anything.
                for event in by_customer[customer.pk]:
                    key = event.idempotency_key
                    results[event.index] = EventResult(key, "duplicate", existing[customer.pk, key])
                continue
            ledger = CustomerLedger(
                customer=customer,
                balance=balances[customer.pk],
                subscription=named.subscriptions[customer.pk],
                now=now,
                rows=rows[customer.pk],
            )
            results.update(
                events_record_for_customer(
                    ledger=ledger,
                    events=by_customer[customer.pk],
                    meters=named.meters,
                    existing=existing,
                    members=members,
                    writes=writes,
                )
            )
        writes.flush()
    for result in results.values():
        result.resolve_id()
    return IngestResult(results=[results[event.index] for event in events], events=writes.events)


def events_recorded(events_by_customer: dict[int, list[EventInput]]) -> dict[tuple[int, str], int]:
    """The ids of events already recorded under these keys, by (customer id, idempotency key).

    Read after the customers' locks: a concurrent request recording the same keys has committed by then.
    """
    keys = list({event.idempotency_key for events in events_by_customer.values() for event in events})
    # Two array parameters instead of a thousand: the statement stays small and quick to send.
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT customer_id, idempotency_key, id FROM {UsageEvent._meta.db_table} "  # noqa: S608
            "WHERE customer_id = ANY(%s) AND idempotency_key = ANY(%s)",
            [list(events_by_customer), keys],
        )
        rows = cursor.fetchall()
    return {(customer_id, key): pk for customer_id, key, pk in rows}


def events_record_for_customer(
    *,
    ledger: CustomerLedger,
    events: list[EventInput],
    meters: dict[str, Meter],
    existing: dict[tuple[int, str], int],
    members: dict[tuple[int, str], int],
    writes: BatchWrites,
) -> dict[int, EventResult]:
    """Decide one customer's events in order and add what must be written to ``writes``.

    The caller holds the customer's lock, built ``ledger`` after taking it, and flushes ``writes``
    in the same transaction.
    """
    customer = ledger.customer
    check_dimensions(ledger, events, meters)
    spend_before = ledger.period_spend(ledger.subscription.current_period_start)
    results: dict[int, EventResult] = {}
    recorded: dict[str, RecordedEvent] = {}
    new_events: list[RecordedEvent] = []
    draws_by_event: list[list[Draw]] = []
    for event in events:
        key = event.idempotency_key
        if (customer.pk, key) in existing:
            results[event.index] = EventResult(key, "duplicate", existing[customer.pk, key])
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
        member_id = members[customer.pk, event.user] if event.user else None
        usage_event = _recorded_event(event, coverage, customer.pk, meter.pk, member_id, ledger)
        recorded[key] = usage_event
        new_events.append(usage_event)
        results[event.index] = EventResult(key, "accepted", recorded_event=usage_event)

    writes.events.extend(new_events)
    _collect_ledger(writes, customer, ledger, new_events, draws_by_event)
    writes.period_rows.extend(ledger.changed_period_usage())
    _collect_outbox(writes, customer, ledger, new_events)
    _record_limit_notifications(customer, ledger, spend_before)
    return results


def members_get_or_create(wanted: set[tuple[int, str]]) -> dict[tuple[int, str], int]:
    """Member ids by (customer id, external id), creating the members seen for the first time."""
    if not wanted:
        return {}

    def read() -> dict[tuple[int, str], int]:
        found = Member.objects.filter(
            customer_id__in={customer_id for customer_id, _ in wanted},
            external_id__in={external_id for _, external_id in wanted},
        ).values_list("customer_id", "external_id", "id")
        return {(customer_id, external_id): pk for customer_id, external_id, pk in found}

    members = read()
    missing = wanted - set(members)
    if missing:
        Member.objects.bulk_create(
            [
                Member(customer_id=customer_id, external_id=external_id)
                for customer_id, external_id in sorted(missing)
            ],
            ignore_conflicts=True,
        )
        members = read()
    return members


def _recorded_event(
    event: EventInput,
    coverage: Coverage,
    customer_id: int,
    meter_id: int,
    member_id: int | None,
    ledger: CustomerLedger,
) -> RecordedEvent:
    action = event.properties.get("action")
    return RecordedEvent(
        customer_id=customer_id,
        meter_id=meter_id,
        member_id=member_id,
        idempotency_key=event.idempotency_key,
        quantity=event.quantity,
        properties=event.properties_json,
        timestamp=event.timestamp,
        received_at=ledger.now,
        period_start=ledger.period_for(event.timestamp)[0],
        action=str(action)[:MAX_NAME_LENGTH] if action is not None else "",
        dimension_value=coverage.dimension_value[:MAX_NAME_LENGTH],
        billable=coverage.billable,
        reservation_id=event.reservation.pk if event.reservation is not None else None,
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
    events: list[RecordedEvent],
    draws_by_event: list[list[Draw]],
) -> None:
    """One draw-down row per grant and one for the wallet per batch, pointing at the last event drawn.

    Each event records its own split (credits, wallet, overage); the ledger rows carry the
    balance changes, summed per source so that a batch of 1,000 events writes a handful of rows.
    """
    totals: dict[int | None, Decimal] = defaultdict(Decimal)
    counts: dict[int | None, int] = defaultdict(int)
    last_event: dict[int | None, RecordedEvent] = {}
    grants: dict[int | None, CreditGrant] = {}
    for usage_event, draws in zip(events, draws_by_event, strict=True):
        for draw in draws:
            key = draw.grant.pk if draw.grant else None
            totals[key] += draw.amount
            counts[key] += 1
            last_event[key] = usage_event
            if draw.grant:
                grants[key] = draw.grant
    for key, amount in totals.items():
        if not amount:
            continue
        entry = CreditLedgerEntry(
            customer=customer,
            grant=grants.get(key),
            kind=LedgerEntryKind.DRAWDOWN if amount < 0 else LedgerEntryKind.REFUND,
            amount=ledger_amount(amount),
            unit=grants[key].unit if key is not None else ledger.currency,
            reservation_id=last_event[key].reservation_id,
            note=f"usage: {counts[key]} event{'s' if counts[key] > 1 else ''}",
        )
        writes.ledger_entries.append((entry, last_event[key]))
    writes.grants.extend(grants.values())
    if None in totals:
        ledger.balance.updated_at = ledger.now
        writes.balances.append(ledger.balance)


def _overage_quantity(event: RecordedEvent) -> Decimal:
    """The units that overage pays for: the billable units in proportion to the overage's share of the cost."""
    if event.overage_amount <= 0 or event.cost <= 0:
        return ZERO
    billable = event.quantity - event.included_quantity
    if event.overage_amount == event.cost:
        return billable
    return (billable * event.overage_amount / event.cost).quantize(Decimal("0.000001"))


# --- Stripe outbox -------------------------------------------------------------------------------


def _collect_outbox(
    writes: BatchWrites, customer: Customer, ledger: CustomerLedger, events: list[RecordedEvent]
) -> None:
    """Queue what Stripe must bill: post-paid overage only, in the same transaction as the usage.

    Summed per (meter, dimension value, period, hour), which is as fine as Stripe needs it; each
    row points at the last event it counts.
    """
    rows: dict[tuple[int, str, datetime, datetime], tuple[StripeUsageOutbox, RecordedEvent]] = {}
    for event in events:
        if event.overage_amount <= 0 or (event.cost_unit == CREDITS and not ledger.credit_rate):
            continue
        window = event.timestamp.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        key = (event.meter_id, event.dimension_value, event.period_start, window)
        row = (
            rows[key][0]
            if key in rows
            else StripeUsageOutbox(
                customer=customer,
                meter_id=event.meter_id,
                dimension_value=event.dimension_value,
                period_start=event.period_start,
                window_start=window,
                event_count=0,
                quantity=ZERO,
                amount=ZERO,
                currency=ledger.currency,
            )
        )
        rows[key] = (row, event)
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
