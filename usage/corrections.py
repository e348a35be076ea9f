"""Corrections of recorded usage: a new event for the difference, never an edit.

A usage event is permanent. When it was wrong, ``usage_event_correct`` records an adjusting event: the
signed difference between the quantity the event should have had and what it (with its earlier corrections)
says now, pointing at it (``UsageEvent.corrects``), with the reason and who made it. The adjusting event
counts where the event counted (its timestamp, period, member, action and dimension value) and is rated and
paid for by the consumption engine under the customer's lock, like any usage
(``ConsumptionEngine.correction_quoted``): the period totals, daily rollups, credit ledger and Stripe outbox
change in the same transaction, so ``ledger_check`` holds after it and Stripe is told the difference.

Only the current billing period can be corrected: an ended period has been invoiced, and a mistake there is
made good with a credit grant (``409 period_closed`` says so).
"""

import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import models, transaction
from django.db.models import Sum
from django.utils import timezone

from core.errors import IdempotencyKeyReused, InvalidInput, NotFound
from core.fingerprints import fingerprint
from customers.models import Notification, NotificationKind, Subscription
from plans.display import DisplayUnit
from plans.models import Aggregation
from usage.batch_writes import BatchWrites, NewUsageEvent
from usage.consumption import ZERO, ConsumptionEngine, EventShares
from usage.errors import NoSubscription, PeriodClosed
from usage.locks import customer_consumption_for_update
from usage.models import PropertiesEncoder, UsageEvent
from usage.recording import UsageRecorder
from usage.selectors.formatting import format_amount, format_quantity
from usage.selectors.summary import Charges, usage_period_summary
from usage.validation import MAX_KEY_LENGTH, MAX_QUANTITY, QUANTITY_PLACES

# A correction's own key on the ledger, so that it never collides with a usage event's key.
KEY_PREFIX = "correction:"
MAX_REASON_LENGTH = 500


class CorrectionStatus(models.TextChoices):
    RECORDED = "recorded", "Recorded"
    UNCHANGED = "unchanged", "Nothing to change"
    PREVIEW = "preview", "Preview (dry run)"


@dataclass(frozen=True)
class CorrectionResult:
    """What a correction did (or, in a preview, would do).

    ``correction`` is the adjusting event: None when the event already has the quantity asked for. In a
    preview it is not written (no id) and ``before``/``after`` are the period's charges around it.
    """

    event: UsageEvent  # the event corrected
    corrected_quantity: Decimal  # the event's quantity with every correction of it, after this one
    correction: UsageEvent | None
    created: bool  # False for a replay of the same correction, or nothing to change
    flags: tuple[str, ...]
    before: Charges | None = None
    after: Charges | None = None

    @property
    def dry_run(self) -> bool:
        return self.before is not None

    @property
    def status(self) -> CorrectionStatus:
        if self.dry_run:
            return CorrectionStatus.PREVIEW
        return CorrectionStatus.UNCHANGED if self.correction is None else CorrectionStatus.RECORDED


class _Preview(Exception):
    """Not an error: carries a preview out of the savepoint it rolls back."""

    def __init__(self, result: CorrectionResult) -> None:
        self.result = result


def usage_event_correct(
    *,
    event_id: int,
    quantity: Decimal,
    reason: str,
    idempotency_key: str,
    by: str,
    dry_run: bool = False,
    now: datetime | None = None,
) -> CorrectionResult:
    """Correct event ``event_id`` to ``quantity`` units in all, for ``reason``, made by ``by``.

    Refused with nothing written: a negative or malformed quantity, no reason, a correction of a correction
    (correct the original), an event of an ended period (``PeriodClosed``), a key already used for another
    correction (``IdempotencyKeyReused``). The same correction sent again answers what it recorded the first
    time. ``dry_run`` runs the same correction in a savepoint that is rolled back, and answers the period's
    charges before and after it.
    """
    reason = reason.strip()
    _check_input(quantity=quantity, reason=reason, idempotency_key=idempotency_key)
    now = now or timezone.now()
    with transaction.atomic():
        if not dry_run:
            return _correct(
                event_id=event_id, quantity=quantity, reason=reason, key=idempotency_key, by=by, now=now
            )
        try:
            with transaction.atomic():
                result = _correct(
                    event_id=event_id,
                    quantity=quantity,
                    reason=reason,
                    key=idempotency_key,
                    by=by,
                    now=now,
                    preview=True,
                )
                raise _Preview(result)
        except _Preview as preview:
            return preview.result


def _check_input(*, quantity: Decimal, reason: str, idempotency_key: str) -> None:
    if not quantity.is_finite() or quantity < 0:
        raise InvalidInput("quantity is the event's corrected quantity: a number >= 0.", param="quantity")
    if quantity > MAX_QUANTITY:
        raise InvalidInput(f"quantity must be at most {MAX_QUANTITY}.", param="quantity")
    if quantity.as_tuple().exponent < -QUANTITY_PLACES:  # type: ignore[operator]
        raise InvalidInput(f"quantity has more than {QUANTITY_PLACES} decimal places.", param="quantity")
    if not reason:
        raise InvalidInput("A correction needs a reason, for the audit trail.", param="reason")
    if len(reason) > MAX_REASON_LENGTH:
        raise InvalidInput(f"reason is longer than {MAX_REASON_LENGTH} characters.", param="reason")
    if not idempotency_key.strip() or len(KEY_PREFIX + idempotency_key) > MAX_KEY_LENGTH:
        raise InvalidInput(
            f"idempotency_key must be 1 to {MAX_KEY_LENGTH - len(KEY_PREFIX)} characters.",
            param="idempotency_key",
        )


def _correct(
    *,
    event_id: int,
    quantity: Decimal,
    reason: str,
    key: str,
    by: str,
    now: datetime,
    preview: bool = False,
) -> CorrectionResult:
    event = UsageEvent.objects.select_related("customer", "meter", "member").filter(pk=event_id).first()
    if event is None:
        raise NotFound(f"No usage event {event_id}.", param="id")
    if event.corrects_id is not None:
        raise InvalidInput(
            f"Event {event.pk} is itself a correction of event {event.corrects_id}: correct that event.",
            param="id",
        )
    customer = event.customer
    subscription = Subscription.objects.filter(customer=customer).select_related("plan_version").first()
    if subscription is None:
        raise NoSubscription(f"Customer {customer.external_id!r} has no subscription.")
    # The customer's lock first, as every writer of usage takes it: a second correction of this event, or new
    # usage, waits here, and everything read below includes what it wrote.
    locked = customer_consumption_for_update(customer=customer, subscription=subscription, now=now)
    fingerprint_ = fingerprint([event.pk, quantity, reason])
    # Found through the keys' table: its unique index is the one on (customer, idempotency key) of the
    # partitioned ledger.
    replay = UsageEvent.objects.filter(key__customer=customer, key__idempotency_key=KEY_PREFIX + key).first()
    if replay is not None:
        if replay.fingerprint != fingerprint_:
            raise IdempotencyKeyReused(
                "This idempotency_key was used for a different correction; nothing was done. Use a new key "
                "for a new correction."
            )
        return _result(event=event, correction=replay, created=False, flags=_flags_of(replay))
    if event.period_start != subscription.current_period_start:
        raise PeriodClosed(
            f"Event {event.pk} counts in the billing period that began {event.period_start:%Y-%m-%d}, which "
            "has ended and been invoiced: usage there can no longer be corrected. Grant the customer a "
            "credit for the difference instead (POST /api/v1/customers/{id}/credits).",
            period_start=event.period_start.isoformat(),
        )
    if event.meter.aggregation == Aggregation.COUNT and quantity not in (ZERO, Decimal(1)):
        raise InvalidInput(
            f"{event.meter.name} counts events: an event counts 1, corrected to 0 or 1.", param="quantity"
        )
    shares = _shares(event)
    difference = quantity - shares.quantity
    before = usage_period_summary(customer=customer, now=now).charges if preview else None
    if not difference:
        return _result(event=event, correction=None, created=False, flags=(), before=before, after=before)
    engine = ConsumptionEngine(
        customer=customer, balance=locked.balance, subscription=subscription, now=now, rows=locked.rows
    )
    coverage, flags = engine.correction_quoted(meter=event.meter, corrected=shares, difference=difference)
    writes = BatchWrites()
    recorder = UsageRecorder(engine=engine, writes=writes)
    new_event = recorder.record_decided(
        coverage=coverage,
        meter=event.meter,
        properties=event.properties,
        properties_json=json.dumps(event.properties, cls=PropertiesEncoder),
        timestamp=event.timestamp,
        idempotency_key=KEY_PREFIX + key,
        member_id=event.member_id,
        serving_cost=recorder.correction_serving_cost(
            meter=event.meter, difference=difference, properties=event.properties, timestamp=event.timestamp
        ),
    )
    _mark_correction(new_event, event=event, reason=reason, by=by, flags=flags, fingerprint_=fingerprint_)
    recorder.finish()
    writes.flush()
    # The customer is told, in their words; their usage page lists these (pages never read raw events).
    Notification.objects.create(
        customer=customer,
        kind=NotificationKind.USAGE_CORRECTED,
        period_start=event.period_start,
        message=_correction_notice(event=event, correction=new_event, reason=reason),
    )
    after = usage_period_summary(customer=customer, now=now).charges if preview else None
    result = _result(
        event=event,
        correction=new_event.as_model(),
        created=True,
        flags=tuple(flags),
        before=before,
        after=after,
    )
    if preview and result.correction is not None:
        result.correction.id = None  # rolled back with the savepoint: it never existed
    return result


def _shares(event: UsageEvent) -> EventShares:
    """The event as its corrections so far leave it, read under the customer's lock."""
    corrections = event.corrections.aggregate(
        quantity=Sum("quantity"),
        included=Sum("included_quantity"),
        cost=Sum("cost"),
        credits=Sum("credits_amount"),
        wallet=Sum("wallet_amount"),
        overage=Sum("overage_amount"),
    )

    def total(own: Decimal, name: str) -> Decimal:
        return own + (corrections[name] or ZERO)

    return EventShares(
        timestamp=event.timestamp,
        properties=event.properties,
        dimension_value=event.dimension_value,
        billable=event.billable,
        quantity=total(event.quantity, "quantity"),
        included=total(event.included_quantity, "included"),
        cost=total(event.cost, "cost"),
        credits=total(event.credits_amount, "credits"),
        wallet=total(event.wallet_amount, "wallet"),
        overage=total(event.overage_amount, "overage"),
    )


def _mark_correction(
    new_event: NewUsageEvent, *, event: UsageEvent, reason: str, by: str, flags: list[str], fingerprint_: str
) -> None:
    new_event.corrects_id = event.pk
    new_event.correction_reason = reason
    new_event.corrected_by = by[:200]
    new_event.correction_flags = ",".join(flags)
    new_event.fingerprint = fingerprint_


def _correction_notice(*, event: UsageEvent, correction: NewUsageEvent, reason: str) -> str:
    display = DisplayUnit.of(event.meter)
    direction = "removed" if correction.quantity < 0 else "added"
    if display.in_money:  # the customer sees this meter as money: the charge below says it all
        change = f"usage {direction}"
    else:
        shown = display.quantity(abs(correction.quantity))
        change = f"{format_quantity(shown)} {display.label(shown)} {direction}"
    cost = correction.cost if correction.billable else ZERO
    charge = (
        ("−" if cost < 0 else "+") + format_amount(abs(cost), correction.cost_unit)
        if cost and correction.cost_unit
        else "no change to the charge"
    )
    # "AI actions usage", but "LLM usage" as it is: a meter may already be named as usage.
    usage = event.meter.name if event.meter.name.lower().endswith("usage") else f"{event.meter.name} usage"
    return f"{usage} of {event.timestamp:%b} {event.timestamp.day} corrected: {change}, {charge}. Reason: {reason}"


def _flags_of(correction: UsageEvent) -> tuple[str, ...]:
    return tuple(flag for flag in correction.correction_flags.split(",") if flag)


def _result(
    *,
    event: UsageEvent,
    correction: UsageEvent | None,
    created: bool,
    flags: tuple[str, ...],
    before: Charges | None = None,
    after: Charges | None = None,
) -> CorrectionResult:
    corrected = event.quantity + (
        UsageEvent.objects.filter(corrects=event).aggregate(total=Sum("quantity"))["total"] or ZERO
    )
    if correction is not None:
        correction.customer, correction.meter, correction.member = event.customer, event.meter, event.member
    return CorrectionResult(
        event=event,
        corrected_quantity=corrected,
        correction=correction,
        created=created,
        flags=flags,
        before=before,
        after=after,
    )
