"""Batch ingest of usage events: validate the whole batch, then write it in one transaction.

A batch is validated whole first (``usage.validation``): any problem rejects it with every
problem listed and nothing written. A valid batch takes the locks of all its customers, in
primary-key order; duplicates are answered from the ledger, each new event is decided by the
customer's ``CustomerLedger`` in batch order, and events, ledger rows, period totals, daily
rollups and the Stripe outbox are written in bulk, one statement per table for the whole batch.

The hot path is a batch of 1,000 events, so it builds no model instance per event and runs a
fixed number of statements whatever the number of customers in the batch (``bench/ingest.py``).
"""

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

from django.db import connection, transaction
from django.db.models import BooleanField, Case, Count, DecimalField, F, Q, QuerySet, Sum, Value, When
from django.db.models.expressions import RawSQL
from django.db.models.functions import Coalesce, Round, TruncDate
from django.utils import timezone

from customers.models import Customer, Member, NotificationKind
from customers.services import notification_record
from plans.models import Meter
from plans.money import CREDITS
from usage.balances import ZERO, Coverage, CustomerLedger, Draw, ledger_amount, ledger_rows_load
from usage.errors import UsageRefused
from usage.locks import customer_balances_for_update
from usage.models import (
    CreditGrant,
    CreditLedgerEntry,
    CustomerBalance,
    DailyUsageRollup,
    LedgerEntryKind,
    PeriodUsage,
    StripeUsageOutbox,
    UsageEvent,
)
from usage.validation import MAX_NAME_LENGTH, EventInput, check_dimensions, events_parse, resolve_names


@dataclass(slots=True)
class RecordedEvent:
    """A new usage event as a batch writes it: the columns of ``UsageEvent``, without a model instance.

    A batch of 1,000 events builds no model objects for its events: building and saving them
    through the ORM was a third of a batch's time. ``id`` is set when the batch is written.
    """

    customer_id: int
    meter_id: int
    member_id: int | None
    idempotency_key: str
    quantity: Decimal
    properties: str  # as JSON
    timestamp: datetime
    received_at: datetime
    period_start: datetime
    action: str
    dimension_value: str
    billable: bool
    reservation_id: Any
    cost_unit: str
    cost: Decimal
    included_quantity: Decimal
    credits_amount: Decimal
    wallet_amount: Decimal
    overage_amount: Decimal
    id: int | None = None

    def written_id(self) -> int:
        if self.id is None:
            raise RuntimeError("The event has no id before the batch is written.")
        return self.id

    def as_model(self) -> UsageEvent:
        fields = {name: getattr(self, name) for name in EVENT_COLUMNS}
        fields["properties"] = json.loads(self.properties)
        return UsageEvent(id=self.id, **fields)


EVENT_COLUMNS = tuple(name for name in RecordedEvent.__dataclass_fields__ if name != "id")


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
        rows = ledger_rows_load(subscriptions=subscriptions, now=now) if fresh else {}
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
    if connection.vendor == "postgresql":
        # Two array parameters instead of a thousand: the statement stays small and quick to send.
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT customer_id, idempotency_key, id FROM {UsageEvent._meta.db_table} "  # noqa: S608
                "WHERE customer_id = ANY(%s) AND idempotency_key = ANY(%s)",
                [list(events_by_customer), keys],
            )
            rows = cursor.fetchall()
    else:
        recorded = UsageEvent.objects.filter(customer_id__in=events_by_customer, idempotency_key__in=keys)
        rows = list(recorded.values_list("customer_id", "idempotency_key", "id"))
    return {(customer_id, key): pk for customer_id, key, pk in rows}


class BatchWrites:
    """The rows a batch writes, gathered customer by customer and written with one statement each.

    Events get their ids when they are written; ledger and outbox rows gathered before then keep
    the event they point at and take its id in ``flush``.
    """

    def __init__(self) -> None:
        self.events: list[RecordedEvent] = []
        self.ledger_entries: list[tuple[CreditLedgerEntry, RecordedEvent]] = []
        self.grants: list[CreditGrant] = []
        self.balances: list[CustomerBalance] = []
        self.period_rows: list[PeriodUsage] = []
        self.outbox: list[tuple[StripeUsageOutbox, RecordedEvent]] = []

    def flush(self) -> None:
        events_insert(self.events)
        for entry, event in self.ledger_entries:
            entry.usage_event_id = event.written_id()
        CreditLedgerEntry.objects.bulk_create([entry for entry, _ in self.ledger_entries])
        CreditGrant.objects.bulk_update(self.grants, ["remaining"])
        CustomerBalance.objects.bulk_update(self.balances, ["wallet_balance", "updated_at"])
        period_totals_save(self.period_rows)
        rollups_add(self.events)
        for row, event in self.outbox:
            row.last_event_id = event.written_id()
        StripeUsageOutbox.objects.bulk_create([row for row, _ in self.outbox])


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


def events_insert(events: list[RecordedEvent]) -> None:
    """Insert the batch's events and set their ids: on PostgreSQL by COPY, with ids taken first."""
    if not events:
        return
    if connection.vendor != "postgresql":
        models = [event.as_model() for event in events]
        UsageEvent.objects.bulk_create(models)
        for event, model in zip(events, models, strict=True):
            event.id = model.pk
        return
    table = UsageEvent._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
            [table, len(events)],
        )
        for event, (pk,) in zip(events, cursor.fetchall(), strict=True):
            event.id = pk
        columns = ("id", *EVENT_COLUMNS)
        with cursor.cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for event in events:
                copy.write_row([getattr(event, name) for name in columns])


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


# --- period totals -------------------------------------------------------------------------------


PERIOD_KEY = ("customer_id", "meter_id", "period_start")
PERIOD_TOTALS = (
    "period_end",
    "unit",
    "quantity",
    "non_billable_quantity",
    "event_count",
    "cost",
    "included_quantity",
    "credits_amount",
    "wallet_amount",
    "overage_amount",
)


def period_totals_save(rows: list[PeriodUsage]) -> None:
    """Write the period totals a batch changed, new or not, in one statement.

    The totals are the ledger's, read under the customer's lock, so they overwrite what is stored.
    """
    if not rows:
        return
    columns = (*PERIOD_KEY, *PERIOD_TOTALS)
    concrete = {field.attname: field for field in PeriodUsage._meta.concrete_fields}
    fields = [concrete[name] for name in columns]
    table = PeriodUsage._meta.db_table
    values = ", ".join(["(" + ", ".join(["%s"] * len(columns)) + ")"] * len(rows))
    # Only constant names are formatted in; every value is a parameter.
    sql = (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES {values} "  # noqa: S608
        f"ON CONFLICT ({', '.join(PERIOD_KEY)}) DO UPDATE SET "
        + ", ".join(f"{name} = EXCLUDED.{name}" for name in PERIOD_TOTALS)
    )
    params = [
        field.get_db_prep_save(getattr(row, field.attname), connection) for row in rows for field in fields
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


# --- daily rollups -------------------------------------------------------------------------------


ROLLUP_KEY = ("customer_id", "meter_id", "member_id", "action", "dimension_value", "day")
ROLLUP_TOTALS = ("quantity", "billable_quantity", "overage_quantity", "event_count", "cost", "overage_amount")


def rollups_add(events: list[RecordedEvent]) -> None:
    """Add the batch's events, once written, to their daily rollups.

    The database sums the rows just written per rollup key: a batch may touch as many rollups as
    it has events, and sending them all as parameters cost more than the sums.
    """
    if not events:
        return
    if connection.vendor == "postgresql":
        _rollups_add_upsert(events)
    else:
        written = UsageEvent.objects.filter(pk__in=[event.written_id() for event in events])
        _rollups_add_read_then_write(list(_rollup_deltas(written)))


def _rollup_deltas(written: QuerySet[UsageEvent]) -> QuerySet[UsageEvent, dict[str, Any]]:
    """The events summed per rollup key; each total of the rollup is named ``add_<total>``."""
    billable = Q(billable=True)
    billable_units = F("quantity") - F("included_quantity")
    # The units overage paid for, in proportion to its share of the cost (``_overage_quantity``).
    overage_units = Case(
        When(Q(overage_amount__lte=0) | Q(cost__lte=0), then=Value(ZERO)),
        When(overage_amount=F("cost"), then=billable_units),
        default=Round(billable_units * F("overage_amount") / F("cost"), 6),
        output_field=DecimalField(),
    )
    return (
        written.annotate(day=TruncDate("timestamp", tzinfo=UTC))  # UTC days, whatever offset was sent
        .values(*ROLLUP_KEY, "period_start")
        .annotate(
            add_quantity=Sum("quantity"),
            add_billable_quantity=Coalesce(Sum(billable_units, filter=billable), ZERO),
            add_overage_quantity=Coalesce(Sum(overage_units, filter=billable), ZERO),
            add_event_count=Count("id"),
            add_cost=Coalesce(Sum("cost", filter=billable), ZERO),
            add_overage_amount=Coalesce(Sum("overage_amount", filter=billable), ZERO),
        )
        .order_by()
    )


def _rollups_add_upsert(events: list[RecordedEvent]) -> None:
    """One statement: insert new days, add to existing ones (the unique key treats no member as one)."""
    sql, params = _rollups_upsert_sql()
    ids = [event.written_id() for event in events]
    with connection.cursor() as cursor:
        cursor.execute(sql, [ids if param is _EVENT_IDS else param for param in params])


# Stands for the array of event ids in the compiled statement, whose other parameters are constants.
_EVENT_IDS = object()


@lru_cache(maxsize=1)
def _rollups_upsert_sql() -> tuple[str, list[Any]]:
    """The upsert, compiled once per process: compiling the aggregate took longer than running it."""
    table = DailyUsageRollup._meta.db_table
    written = UsageEvent.objects.filter(
        RawSQL(f"{UsageEvent._meta.db_table}.id = ANY(%s)", (_EVENT_IDS,), output_field=BooleanField())  # noqa: S611
    )
    select, params = _rollup_deltas(written).query.get_compiler(connection=connection).as_sql()
    columns = (*ROLLUP_KEY, "period_start", *ROLLUP_TOTALS)
    sources = (*ROLLUP_KEY, "period_start", *(f"add_{name}" for name in ROLLUP_TOTALS))
    # Only constant names and the compiled query are formatted in; every value is a parameter.
    sql = (
        f"INSERT INTO {table} ({', '.join(columns)}) "  # noqa: S608
        f"SELECT {', '.join(sources)} FROM ({select}) AS batch "
        f"ON CONFLICT ({', '.join(ROLLUP_KEY)}) DO UPDATE SET "
        + ", ".join(f"{name} = {table}.{name} + EXCLUDED.{name}" for name in ROLLUP_TOTALS)
    )
    return sql, list(params)


def _rollups_add_read_then_write(deltas: list[dict[str, Any]]) -> None:
    """The portable way, for SQLite (the embedded default), which cannot key on an empty member.

    Safe because the caller holds the customers' locks: no one else writes these rows meanwhile.
    """
    by_key = {tuple(delta[name] for name in ROLLUP_KEY): delta for delta in deltas}
    existing = DailyUsageRollup.objects.filter(
        customer_id__in={d["customer_id"] for d in deltas},
        day__in={d["day"] for d in deltas},
        meter_id__in={d["meter_id"] for d in deltas},
    )
    to_update = []
    for rollup in existing:
        delta = by_key.pop(tuple(getattr(rollup, name) for name in ROLLUP_KEY), None)
        if delta is not None:
            for name in ROLLUP_TOTALS:
                setattr(rollup, name, getattr(rollup, name) + delta[f"add_{name}"])
            to_update.append(rollup)
    DailyUsageRollup.objects.bulk_update(to_update, list(ROLLUP_TOTALS))
    DailyUsageRollup.objects.bulk_create(
        [
            DailyUsageRollup(
                **{name: delta[name] for name in (*ROLLUP_KEY, "period_start")},
                **{name: delta[f"add_{name}"] for name in ROLLUP_TOTALS},
            )
            for delta in by_key.values()
        ]
    )


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
