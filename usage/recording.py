"""Recording usage: one customer's work decided by their consumption engine, and the rows it writes.

Batch ingest (``usage.ingest``) records each new event through ``UsageRecorder.record``, and so does a
reservation's commit (``usage.services.reservation_commit``) for the work it settles: the same decision, the same event
row, credit-ledger rows, period totals, Stripe outbox rows and spend-limit notifications. The caller holds
the customer's lock, built the engine after taking it, and flushes the ``BatchWrites`` in the same
transaction.
"""

import json
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.conf import settings

from core.money import CREDITS, ledger_amount
from customers.events import CustomerEventType, customer_event_announce, exact, instant
from customers.spend_limits import limit_crossing_record, spend_limit_crossings
from plans.models import Aggregation, Meter
from plans.serving_costs import COST_PROPERTY, ServingCostRates, serving_cost_of, serving_cost_rates_read
from usage.batch_writes import BatchWrites, NewUsageEvent
from usage.consumption import ZERO, ConsumptionEngine, Coverage, Draw
from usage.default_soft_limit import default_soft_limits_refresh
from usage.models import (
    CreditGrant,
    CreditLedgerEntry,
    LedgerEntryKind,
    PropertiesEncoder,
    Reservation,
    StripeUsageOutbox,
)
from usage.overage import overage_quantity
from usage.validation import MAX_NAME_LENGTH

ONE = Decimal(1)


class UsageRecorder:
    """Records one customer's usage in order, then gathers what it changed into ``writes``."""

    def __init__(
        self, *, engine: ConsumptionEngine, writes: BatchWrites, serving_costs: ServingCostRates | None = None
    ) -> None:
        """``serving_costs`` is the cost schedule of the batch's meters, read once for the whole batch;
        without it the recorder reads a meter's schedule the first time it records one of its events."""
        self.engine = engine
        self.writes = writes
        self.serving_costs = serving_costs or ServingCostRates()
        self._costs_read: set[int] = set() if serving_costs is None else set(serving_costs.dimensions)
        self.period_start = engine.subscription.current_period_start
        self.spend_before = engine.period_spend(self.period_start)
        self.wallet_before = engine.balance.wallet_balance
        # Meters with a plan cap this usage records, with the cap and the period's use before it.
        self.capped_before: dict[int, tuple[Meter, Decimal, Decimal]] = {}
        self.events: list[NewUsageEvent] = []
        self.draws: list[list[Draw]] = []

    def record(
        self,
        *,
        meter: Meter,
        quantity: Decimal,
        properties: dict[str, Any],
        timestamp: datetime,
        idempotency_key: str,
        member_id: int | None = None,
        hold: Reservation | None = None,
        properties_json: str | None = None,
    ) -> NewUsageEvent:
        """Decide and take what pays for the work; raises a ``UsageRefused`` and changes nothing if refused.

        Work settling a reservation (``hold``) was allowed when the hold was taken: it pays from what the
        hold pinned (``ConsumptionEngine.hold_settled``), and no limit is checked again.
        ``properties_json`` is ``properties`` as stored, when the caller has already encoded them.
        """
        engine = self.engine
        if meter.aggregation == Aggregation.COUNT and hold is None:
            # A count meter counts events: each is one unit, whatever quantity it reports.
            quantity = ONE
        self._note_cap(meter=meter, timestamp=timestamp)
        if hold is not None:
            coverage = engine.hold_settled(hold, quantity=quantity)
        else:
            coverage = engine.quote(
                meter=meter, quantity=quantity, properties=properties, timestamp=timestamp
            )
        serving_cost = serving_cost_of(
            rates=self._serving_costs_of(meter),
            meter_id=meter.pk,
            quantity=quantity,
            properties=properties,
            at=timestamp,
        )
        return self.record_decided(
            coverage=coverage,
            meter=meter,
            properties=properties,
            timestamp=timestamp,
            idempotency_key=idempotency_key,
            member_id=member_id,
            reservation_id=hold.pk if hold is not None else None,
            properties_json=properties_json,
            serving_cost=serving_cost,
        )

    def correction_serving_cost(
        self, *, meter: Meter, difference: Decimal, properties: dict[str, Any], timestamp: datetime
    ) -> Decimal:
        """What a correction of ``difference`` units changes in what serving the event cost us: the difference
        at the rate in force at the event's time. An event that reported its own cost (``properties.cost``)
        keeps it: that was what serving it really cost, whatever units were counted."""
        if COST_PROPERTY in properties:
            return ZERO
        return serving_cost_of(
            rates=self._serving_costs_of(meter),
            meter_id=meter.pk,
            quantity=difference,
            properties=properties,
            at=timestamp,
        )

    def record_decided(
        self,
        *,
        coverage: Coverage,
        meter: Meter,
        properties: dict[str, Any],
        timestamp: datetime,
        idempotency_key: str,
        member_id: int | None = None,
        reservation_id: Any = None,
        properties_json: str | None = None,
        serving_cost: Decimal = ZERO,
    ) -> NewUsageEvent:
        """Take what pays for usage the engine has decided (``record``, or a correction's
        ``ConsumptionEngine.correction_quoted``) and add its event to the batch."""
        engine = self.engine
        quantity = coverage.quantity
        draws = engine.apply(coverage, meter=meter, timestamp=timestamp, serving_cost=serving_cost)
        self.draws.append(draws)
        action = properties.get("action")
        event = NewUsageEvent(
            customer_id=engine.customer.pk,
            meter_id=meter.pk,
            member_id=member_id,
            idempotency_key=idempotency_key,
            quantity=quantity,
            properties=properties_json or json.dumps(properties, cls=PropertiesEncoder),
            timestamp=timestamp,
            received_at=engine.now,
            period_start=engine.period_for(timestamp)[0],
            action=str(action)[:MAX_NAME_LENGTH] if action is not None else "",
            dimension_value=coverage.dimension_value[:MAX_NAME_LENGTH],
            billable=coverage.billable,
            reservation_id=reservation_id,
            cost_unit=coverage.unit,
            cost=coverage.cost,
            included_quantity=coverage.included_quantity,
            credits_amount=coverage.credits,
            wallet_amount=coverage.wallet,
            overage_amount=coverage.overage,
            wallet_money=-sum((draw.amount for draw in draws if draw.grant is None), ZERO),
            money_grant_credits=sum((draw.credits_covered for draw in draws), ZERO),
            money_grant_amount=-sum((draw.amount for draw in draws if draw.credits_covered), ZERO),
            serving_cost=serving_cost,
        )
        self.events.append(event)
        return event

    def _serving_costs_of(self, meter: Meter) -> ServingCostRates:
        if meter.pk not in self._costs_read:
            self.serving_costs.merge(serving_cost_rates_read(meters=[meter]))
            self._costs_read.add(meter.pk)
        return self.serving_costs

    def finish(self) -> None:
        """Add the recorded events and what they changed to the writes; tell the limits they crossed."""
        self.writes.events.extend(self.events)
        self._collect_ledger()
        self.writes.period_rows.extend(self.engine.changed_period_usage())
        self._collect_outbox()
        self._record_limit_crossings()
        self._announce_cap_reached()
        self._announce_wallet_low()

    def _collect_ledger(self) -> None:
        """One draw-down row per grant and one for the wallet, pointing at the last event drawn.

        Each event records its own split (credits, wallet, overage); the ledger rows carry the
        balance changes, summed per source so that a batch of 1,000 events writes a handful of rows.
        """
        engine = self.engine
        totals: dict[int | None, Decimal] = defaultdict(Decimal)
        counts: dict[int | None, int] = defaultdict(int)
        last_event: dict[int | None, NewUsageEvent] = {}
        grants: dict[int | None, CreditGrant] = {}
        for usage_event, draws in zip(self.events, self.draws, strict=True):
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
                customer=engine.customer,
                grant=grants.get(key),
                kind=LedgerEntryKind.DRAWDOWN if amount < 0 else LedgerEntryKind.REFUND,
                amount=ledger_amount(amount),
                unit=grants[key].unit if key is not None else engine.currency,
                reservation_id=last_event[key].reservation_id,
                note=f"usage: {counts[key]} event{'s' if counts[key] > 1 else ''}",
            )
            self.writes.ledger_entries.append((entry, last_event[key]))
        self.writes.grants.extend(grants.values())
        if None in totals:
            engine.balance.updated_at = engine.now
            self.writes.balances.append(engine.balance)

    def _collect_outbox(self) -> None:
        """Queue what Stripe must bill: post-paid overage only, in the same transaction as the usage.

        Summed per (meter, dimension value, period, hour), which is as fine as Stripe needs it; each
        row points at the last event it counts. A give-back (negative overage, e.g. a volume tier that
        lowers the rate of units already billed) is queued too, so that Stripe's total equals ours.
        """
        engine = self.engine
        terms = engine.terms
        rows: dict[tuple[int, str, datetime, datetime], tuple[StripeUsageOutbox, NewUsageEvent]] = {}
        for event in self.events:
            if not event.overage_amount or (event.cost_unit == CREDITS and not terms.credit_rate):
                continue
            window = event.timestamp.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
            key = (event.meter_id, event.dimension_value, event.period_start, window)
            row = (
                rows[key][0]
                if key in rows
                else StripeUsageOutbox(
                    customer=engine.customer,
                    meter_id=event.meter_id,
                    dimension_value=event.dimension_value,
                    period_start=event.period_start,
                    window_start=window,
                    event_count=0,
                    quantity=ZERO,
                    amount=ZERO,
                    currency=engine.currency,
                )
            )
            rows[key] = (row, event)
            row.event_count += 1
            row.quantity += overage_quantity(
                quantity=event.quantity,
                included_quantity=event.included_quantity,
                cost=event.cost,
                overage_amount=event.overage_amount,
            )
            row.amount += terms.to_money(event.overage_amount, event.cost_unit)
        self.writes.outbox.extend(rows.values())

    def _record_limit_crossings(self) -> None:
        """A soft or hard limit this usage crossed is recorded once per period for the alerting jobs."""
        engine = self.engine
        spend_after = engine.period_spend(self.period_start)
        controls = engine.controls
        if (
            spend_after > self.spend_before
            and controls.soft_limit is None
            and not controls.default_soft_limit_off
        ):
            # The default is read at most once a period (then stored), and only when usage could cross it.
            default_soft_limits_refresh(
                controls_and_subscriptions=[(controls, engine.subscription)],
                terms={engine.customer.pk: engine.terms},
            )
        for crossing in spend_limit_crossings(
            before=self.spend_before, after=spend_after, controls=engine.controls
        ):
            limit_crossing_record(
                customer=engine.customer,
                crossing=crossing,
                period_start=self.period_start,
                spend=spend_after,
                currency=engine.currency,
            )

    def _note_cap(self, *, meter: Meter, timestamp: datetime) -> None:
        """Remember the period's use of a capped meter before this usage adds to it (current period only)."""
        engine = self.engine
        if meter.pk in self.capped_before:
            return
        entitlement = engine.entitlements.get(meter.key)
        if entitlement is None or entitlement.limit is None:
            return
        period = engine.period_for(timestamp)
        if period[0] != self.period_start:
            return
        used = engine.usage_row(meter_id=meter.pk, period=period).quantity
        self.capped_before[meter.pk] = (meter, entitlement.limit, used)

    def _announce_cap_reached(self) -> None:
        """A plan cap this usage reached (the next unit will be refused) is announced once: when the period's
        use goes from under the cap to at or over it."""
        engine = self.engine
        period = (engine.subscription.current_period_start, engine.subscription.current_period_end)
        for meter, cap, before in self.capped_before.values():
            after = engine.usage_row(meter_id=meter.pk, period=period).quantity
            if before < cap <= after:
                customer_event_announce(
                    event_type=CustomerEventType.ENTITLEMENT_LIMIT_REACHED,
                    customer=engine.customer,
                    data={
                        "meter": meter.key,
                        "limit": exact(cap),
                        "used": exact(after),
                        "period_start": instant(period[0]),
                    },
                )

    def _announce_wallet_low(self) -> None:
        """A draw that took the wallet from at least ``WALLET_LOW_BALANCE`` to below it is announced."""
        engine = self.engine
        threshold = Decimal(str(settings.WALLET_LOW_BALANCE))
        after = engine.balance.wallet_balance
        if self.wallet_before >= threshold > after:
            customer_event_announce(
                event_type=CustomerEventType.WALLET_LOW_BALANCE,
                customer=engine.customer,
                data={
                    "balance": exact(after),
                    "threshold": exact(threshold),
                    "currency": engine.balance.currency,
                },
            )
