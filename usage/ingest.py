"""Batch ingest of usage events: validate the whole batch, then write it in one transaction.

A batch is validated whole first (``usage.validation``): any problem rejects it with every
problem listed and nothing written. A valid batch takes the locks of all its customers, in
primary-key order; duplicates are answered from the ledger, each new event is recorded in batch
order through the customer's ``usage.recording.UsageRecorder``, and events, ledger rows, period
totals, daily rollups and the Stripe outbox are gathered in a ``usage.batch_writes.BatchWrites``
and written with one statement per table for the whole batch.

The hot path is a batch of 1,000 events, so it reads with a fixed number of statements whatever
the number of customers in the batch (``bench/ingest.py``).
"""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from customers.models import Customer
from customers.services import members_get_or_create
from plans.models import Meter
from plans.serving_costs import ServingCostRates, serving_cost_rates_read
from usage.batch_writes import BatchWrites, NewUsageEvent
from usage.consumption import ConsumptionEngine
from usage.errors import UsageRefused
from usage.locks import customer_balances_for_update
from usage.models import UsageEvent, UsageEventKey
from usage.rate_limits import RateLimitedEvent, rate_limit_events
from usage.recording import UsageRecorder
from usage.sql_reads import consumption_rows_read
from usage.validation import EventInput, check_dimensions, check_reused_keys, events_parse, resolve_names


@dataclass
class EventResult:
    idempotency_key: str
    status: str  # accepted | duplicate | refused
    id: int | None = None
    code: str | None = None
    message: str | None = None
    new_event: NewUsageEvent | None = None  # this batch's event, whose id exists once written

    def resolve_id(self) -> None:
        if self.id is None and self.new_event is not None:
            self.id = self.new_event.id

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"idempotency_key": self.idempotency_key, "status": self.status, "id": self.id}
        if self.code:
            body.update(code=self.code, message=self.message)
        return body


@dataclass
class IngestResult:
    results: list[EventResult]
    events: list[NewUsageEvent] = field(default_factory=list)


# --- writing -------------------------------------------------------------------------------------


def usage_events_ingest(*, raw_events: list[Any], now: datetime | None = None) -> IngestResult:
    """Validate and record a batch. Raises ``InvalidBatch`` (nothing written) on any bad event.

    Whatever the number of customers in the batch, it reads with a fixed number of statements:
    one reads the serving-cost schedule of its meters, one locks every customer (in primary-key
    order), one finds the keys already recorded, three
    load what the consumption engines of the customers with new events need, and one or two find
    their members.
    """
    now = now or timezone.now()
    events = events_parse(raw_events, now=now)
    named = resolve_names(events)
    by_customer: dict[int, list[EventInput]] = defaultdict(list)
    for event in events:
        by_customer[named.customers[event.customer_id].pk].append(event)
    customers = sorted((named.customers[e[0].customer_id] for e in by_customer.values()), key=lambda c: c.pk)
    # The catalog's cost schedule needs no lock: read once for the batch, before the customers' locks.
    serving_costs = serving_cost_rates_read(meters=named.meters.values())
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
        rows = consumption_rows_read(subscriptions=subscriptions, now=now)
        members = members_get_or_create({(c.pk, e.user) for c in fresh for e in by_customer[c.pk] if e.user})
        for customer in customers:
            if customer.pk not in rows:
                # A replay: answered from the ledger without loading balances or writing anything.
                for event in by_customer[customer.pk]:
                    key = event.idempotency_key
                    results[event.index] = EventResult(key, "duplicate", existing[customer.pk, key])
                continue
            engine = ConsumptionEngine(
                customer=customer,
                balance=balances[customer.pk],
                subscription=named.subscriptions[customer.pk],
                now=now,
                rows=rows[customer.pk],
            )
            results.update(
                events_record_for_customer(
                    engine=engine,
                    events=by_customer[customer.pk],
                    meters=named.meters,
                    existing=existing,
                    members=members,
                    writes=writes,
                    serving_costs=serving_costs,
                )
            )
        writes.flush()
    for result in results.values():
        result.resolve_id()
    return IngestResult(results=[results[event.index] for event in events], events=writes.events)


def events_recorded(events_by_customer: dict[int, list[EventInput]]) -> dict[tuple[int, str], int]:
    """The ids of events already recorded under these keys, by (customer id, idempotency key).

    Read after the customers' locks: a concurrent request recording the same keys has committed by then.
    Raises ``IdempotencyKeyReused`` when a key was recorded, or is sent twice in the batch, for different
    events (``usage.validation.check_reused_keys``).
    """
    keys = list({event.idempotency_key for events in events_by_customer.values() for event in events})
    # Two array parameters instead of a thousand: the statement stays small and quick to send. The keys are
    # found in the one unpartitioned table of keys, and each event's fingerprint in the month its timestamp
    # names. An event whose month was detached (retention) has no fingerprint here: its key is still taken.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT k.customer_id, k.idempotency_key, k.event_id, e.fingerprint "  # noqa: S608
            f"FROM {UsageEventKey._meta.db_table} k LEFT JOIN {UsageEvent._meta.db_table} e "
            "ON e.id = k.event_id AND e.timestamp = k.timestamp "
            "WHERE k.customer_id = ANY(%s) AND k.idempotency_key = ANY(%s)",
            [list(events_by_customer), keys],
        )
        rows = cursor.fetchall()
    check_reused_keys(events_by_customer, {(customer_id, key): fp for customer_id, key, _, fp in rows})
    return {(customer_id, key): pk for customer_id, key, pk, _ in rows}


def events_record_for_customer(
    *,
    engine: ConsumptionEngine,
    events: list[EventInput],
    meters: dict[str, Meter],
    existing: dict[tuple[int, str], int],
    members: dict[tuple[int, str], int],
    writes: BatchWrites,
    serving_costs: ServingCostRates | None = None,
) -> dict[int, EventResult]:
    """Record one customer's new events in batch order and add what must be written to ``writes``.

    The caller holds the customer's lock, built ``engine`` after taking it, and flushes ``writes``
    in the same transaction.
    """
    customer = engine.customer
    check_dimensions(engine, events, meters)
    recorder = UsageRecorder(engine=engine, writes=writes, serving_costs=serving_costs)
    results: dict[int, EventResult] = {}
    recorded: dict[str, NewUsageEvent] = {}
    rate_limited = rate_limit_events(
        terms=engine.terms,
        customer=customer,
        events=_new_events(events, customer=customer, meters=meters, existing=existing),
        now=engine.now,
    )
    for event in events:
        key = event.idempotency_key
        if (customer.pk, key) in existing:
            results[event.index] = EventResult(key, "duplicate", existing[customer.pk, key])
            continue
        if key in recorded:  # a duplicate within the batch points at the event recorded first
            results[event.index] = EventResult(key, "duplicate", new_event=recorded[key])
            continue
        if event.index in rate_limited:
            refusal = rate_limited[event.index]
            results[event.index] = EventResult(key, "refused", code=refusal.code, message=refusal.message)
            continue
        try:
            new_event = recorder.record(
                meter=meters[event.meter_key],
                quantity=event.quantity,
                properties=event.properties,
                timestamp=event.timestamp,
                idempotency_key=key,
                member_id=members[customer.pk, event.user] if event.user else None,
                properties_json=event.properties_json,
            )
        except UsageRefused as refusal:
            results[event.index] = EventResult(key, "refused", code=refusal.code, message=refusal.message)
            continue
        new_event.fingerprint = event.fingerprint
        recorded[key] = new_event
        results[event.index] = EventResult(key, "accepted", new_event=new_event)
    recorder.finish()
    return results


def _new_events(
    events: list[EventInput],
    *,
    customer: Customer,
    meters: dict[str, Meter],
    existing: dict[tuple[int, str], int],
) -> list[RateLimitedEvent]:
    """The events of the batch a plan's rate limit counts: not replays, each key once."""
    seen: set[str] = set()
    new = []
    for event in events:
        key = event.idempotency_key
        if (customer.pk, key) in existing or key in seen:
            continue
        seen.add(key)
        new.append(
            RateLimitedEvent(
                index=event.index, meter=meters[event.meter_key], user=event.user, timestamp=event.timestamp
            )
        )
    return new
