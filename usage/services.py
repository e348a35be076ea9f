"""Writes that move usage or money besides batch ingest: reservations, grants, top-ups, expiry.

Each is one transaction that first takes the customer's lock (``usage.locks``), then reads,
decides and writes; no network call happens inside.
"""

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core.errors import Conflict, InvalidInput, NotFound, OutOfRange
from core.money import CREDITS, format_money
from core.sql_rows import rows_insert, rows_update, rows_update_statements
from customers.events import CustomerEventType, customer_event_announce, exact, instant
from customers.models import Customer, Notification, NotificationKind, Subscription
from customers.services import members_get_or_create, subscription_start
from plans.models import RATE, CreditPack, Meter, PlanVersion, PricingUnit
from plans.serving_costs import COST_PROPERTY, event_cost_parse
from usage.batch_writes import BatchWrites
from usage.consumption import ConsumptionEngine
from usage.errors import InvalidCost, NoSubscription, ReservationNotHeld
from usage.locks import LockedCustomer, customer_balance_for_update, customer_consumption_for_update
from usage.models import (
    CreditGrant,
    CreditLedgerEntry,
    GrantKind,
    LedgerEntryKind,
    PeriodUsage,
    Reservation,
    ReservationStatus,
    UsageEvent,
)
from usage.rate_limits import rate_limit_take
from usage.recording import UsageRecorder
from usage.sql_reads import reservation_for_settling
from usage.validation import decimal_column_max


def _subscription_of(customer: Customer) -> Subscription:
    """The customer's subscription: joined in by ``customer_for_decision``, else read here."""
    try:
        return customer.subscription
    except Subscription.DoesNotExist:
        raise NoSubscription(f"Customer {customer.external_id!r} has no subscription.") from None


# --- plan changes ----------------------------------------------------------------------------------


@transaction.atomic
def subscription_change(
    *, customer: Customer, plan_version: PlanVersion, at: datetime | None = None
) -> Subscription:
    """Move the customer to ``plan_version`` at once, keeping the billing period (``subscription_start``).

    Under the customer's lock, so no usage lands between reading what the period has used and the change:
    that reading is where the new plan's prorated allowance and its tiers start.
    """
    customer_balance_for_update(customer)
    subscription = Subscription.objects.filter(customer=customer).first()
    usage_so_far: dict[int, tuple[Decimal, Decimal]] = {}
    if subscription is not None:
        for row in PeriodUsage.objects.filter(
            customer=customer, period_start=subscription.current_period_start
        ):
            usage_so_far[row.meter_id] = (row.included_quantity, row.quantity - row.included_quantity)
    return subscription_start(customer=customer, plan_version=plan_version, at=at, usage_so_far=usage_so_far)


@dataclass(frozen=True)
class PlanChoice:
    subscription: Subscription
    starts: str  # "now", "renewal", or "unchanged"


@transaction.atomic
def subscription_plan_choose(*, customer: Customer, plan_version: PlanVersion, by: str = "") -> PlanChoice:
    """A customer's own change of plan, from the plan page.

    A plan that costs as much per period or more starts now, its allowance and base fee prorated for the
    time left (``subscription_change``). One that costs less starts at the renewal
    (``pending_plan_version``, which the period roll applies and the Stripe sync puts in Stripe at once):
    a base fee already charged for this period is not handed back part-way through it. Choosing the plan in
    force cancels a change scheduled for the renewal. Each change is told as a notification.
    """
    # The customer's lock first, as every writer takes it (subscription_change takes it again: re-entrant).
    customer_balance_for_update(customer)
    subscription = Subscription.objects.select_for_update().filter(customer=customer).first()
    if subscription is None:
        raise NoSubscription("The customer has no subscription to change.")
    current = subscription.plan_version
    who = f" by {by}" if by else ""
    if plan_version.pk == current.pk:
        if subscription.pending_plan_version_id is None:
            return PlanChoice(subscription, "unchanged")
        subscription.pending_plan_version = None
        subscription.save(update_fields=["pending_plan_version"])
        _plan_notification(
            subscription, NotificationKind.PLAN_CHANGE_SCHEDULED, f"The change at renewal was cancelled{who}."
        )
        return PlanChoice(subscription, "unchanged")
    name = plan_version.plan.name
    if plan_change_starts(current=current, chosen=plan_version) == "now":
        subscription = subscription_change(customer=customer, plan_version=plan_version)
        _plan_notification(subscription, NotificationKind.PLAN_CHANGED, f"Your plan is now {name}{who}.")
        return PlanChoice(subscription, "now")
    subscription.pending_plan_version = plan_version
    subscription.save(update_fields=["pending_plan_version"])
    _plan_notification(
        subscription,
        NotificationKind.PLAN_CHANGE_SCHEDULED,
        f"Your plan changes to {name} on {subscription.current_period_end:%b %-d, %Y}{who}.",
    )
    return PlanChoice(subscription, "renewal")


def plan_change_starts(*, current: PlanVersion, chosen: PlanVersion) -> str:
    """When a customer's own change from ``current`` to ``chosen`` takes effect: "now" for a plan costing as
    much per period or more (or billed over another interval), "renewal" for a cheaper one."""
    if chosen.base_fee >= current.base_fee or chosen.interval != current.interval:
        return "now"
    return "renewal"


def _plan_notification(subscription: Subscription, kind: NotificationKind, message: str) -> None:
    Notification.objects.create(
        customer_id=subscription.customer_id,
        kind=kind,
        period_start=subscription.current_period_start,
        message=message,
    )


# --- reservations ----------------------------------------------------------------------------------


@transaction.atomic
def reservation_create(
    *,
    customer: Customer,
    meter: Meter,
    quantity: Decimal,
    idempotency_key: str,
    user: str | None = None,
    properties: dict[str, Any] | None = None,
    ttl_seconds: int | None = None,
    now: datetime | None = None,
) -> tuple[Reservation, bool]:
    """Hold what ``quantity`` of ``meter`` would use. Returns (reservation, created).

    Raises a ``UsageRefused`` (402) when the customer may not use it, ``RateLimited`` (429) past the
    plan's rate limit on the meter. A repeated idempotency key returns the first reservation unchanged.
    """
    now = now or timezone.now()
    if properties and COST_PROPERTY in properties:
        # The cost its commit records (``plans.serving_costs``): refused now, not when the work is done.
        try:
            event_cost_parse(properties[COST_PROPERTY])
        except ValueError as error:
            raise InvalidCost(str(error), param="properties.cost") from None
    subscription = _subscription_of(customer)
    locked = customer_consumption_for_update(
        customer=customer, subscription=subscription, now=now, reservation_key=idempotency_key
    )
    if locked.reservation is not None:
        locked.reservation.customer = customer
        return locked.reservation, False
    if quantity <= 0:
        raise InvalidInput("A reservation holds a quantity greater than zero.", param="quantity")
    properties = properties or {}
    engine = ConsumptionEngine(
        customer=customer, balance=locked.balance, subscription=subscription, now=now, rows=locked.rows
    )
    # Counted after the replay check, so that a client retrying a reservation does not use up its rate.
    rate_limit_take(terms=engine.terms, customer=customer, meter=meter, user=user, now=now)
    coverage = engine.quote(meter=meter, quantity=quantity, properties=properties, timestamp=now)
    member_id = members_get_or_create({(customer.pk, user)})[customer.pk, user] if user else None
    ttl = ttl_seconds if ttl_seconds is not None else settings.RESERVATION_DEFAULT_TTL_SECONDS
    reservation = Reservation(
        id=uuid.uuid4(),
        customer=customer,
        meter=meter,
        member_id=member_id,
        idempotency_key=idempotency_key,
        properties=properties,
        quantity=quantity,
        unit=coverage.unit,
        held_included=coverage.included_quantity,
        held_cost=coverage.cost,
        held_credits=coverage.credits,
        held_wallet=coverage.wallet,
        held_overage=coverage.overage,
        expires_at=now + timedelta(seconds=ttl),
        created_at=now,
    )
    rows_insert([reservation])
    return reservation, True


def _reservation_locked(
    reservation_id: uuid.UUID | str, now: datetime, *, for_recording: bool
) -> tuple[Reservation, LockedCustomer]:
    """The reservation with its customer's plan and limits, its status read again under the lock.

    The joined read happens before the lock, so the lock is held only for the work that needs it.
    ``for_recording`` also reads what the consumption engine needs, without this reservation's own hold.
    The credits a hold pinned stay its own even if their grant expired since: its commit draws from the
    grants in force when it was taken (``credit_grants_expire`` leaves pinned credits alone), read in the
    lock's round trip.
    """
    reservation = reservation_for_settling(reservation_id)
    customer = reservation.customer
    locked = customer_consumption_for_update(
        customer=customer,
        subscription=_subscription_of(customer) if for_recording else None,
        now=now,
        reservation_id=reservation.pk,
        grants_at=reservation.created_at if reservation.held_credits > 0 else None,
    )
    current = locked.reservation
    if current is None:  # deleted between the two reads
        raise NotFound(f"No reservation {reservation_id}.")
    reservation.status = current.status
    reservation.settled_at = current.settled_at
    reservation.committed_quantity = current.committed_quantity
    if reservation.status == ReservationStatus.HELD and reservation.expires_at <= now:
        reservation.status = ReservationStatus.EXPIRED
        reservation.settled_at = now
        rows_update([reservation], ["status", "settled_at"])
    return reservation, locked


@transaction.atomic
def reservation_commit(
    *, reservation_id: uuid.UUID | str, quantity: Decimal, now: datetime | None = None
) -> tuple[Reservation, UsageEvent]:
    """Record the actual usage of a held reservation and release the rest of the hold.

    The hold is replaced by a usage event for ``quantity`` (at most what was held): what the
    work really cost is drawn, and the remainder of the hold is available again at once.
    Committing again returns the same event.
    """
    now = now or timezone.now()
    reservation, locked = _reservation_locked(reservation_id, now, for_recording=True)
    if reservation.status == ReservationStatus.COMMITTED:
        return reservation, reservation.usage_event
    if reservation.status != ReservationStatus.HELD:
        raise ReservationNotHeld(
            f"The reservation is {reservation.status}; nothing to commit.", status=reservation.status
        )
    if quantity < 0 or quantity > reservation.quantity:
        raise InvalidInput(
            f"Commit between 0 and the {reservation.quantity.normalize():f} held.", param="quantity"
        )
    customer = reservation.customer
    engine = ConsumptionEngine(
        customer=customer,
        balance=locked.balance,
        subscription=_subscription_of(customer),
        now=now,
        rows=locked.rows,
    )
    writes = BatchWrites()
    recorder = UsageRecorder(engine=engine, writes=writes)
    new_event = recorder.record(
        meter=reservation.meter,
        quantity=quantity,
        properties=reservation.properties,
        timestamp=now,
        idempotency_key=f"reservation:{reservation.pk}",
        member_id=reservation.member_id,
        hold=reservation,
    )
    recorder.finish()
    reservation.status = ReservationStatus.COMMITTED
    reservation.committed_quantity = quantity
    reservation.settled_at = now
    # In the batch's round trip: every trip here is one more wait for whoever queues for the lock.
    writes.flush(also=rows_update_statements([reservation], ["status", "committed_quantity", "settled_at"]))
    usage_event = new_event.as_model()
    usage_event.customer, usage_event.meter, usage_event.member = (
        customer,
        reservation.meter,
        reservation.member,
    )
    return reservation, usage_event


@transaction.atomic
def reservation_release(*, reservation_id: uuid.UUID | str, now: datetime | None = None) -> Reservation:
    """Cancel a hold. Releasing again, or a hold that already expired, changes nothing."""
    now = now or timezone.now()
    reservation, _ = _reservation_locked(reservation_id, now, for_recording=False)
    if reservation.status == ReservationStatus.COMMITTED:
        raise ReservationNotHeld(
            "The reservation was committed; it can no longer be released.", status="committed"
        )
    if reservation.status == ReservationStatus.HELD:
        reservation.status = ReservationStatus.RELEASED
        reservation.settled_at = now
        rows_update([reservation], ["status", "settled_at"])
    return reservation


def reservations_expire(*, now: datetime | None = None) -> int:
    """Mark holds past their TTL expired. They already stopped counting; this tidies their status."""
    now = now or timezone.now()
    return Reservation.objects.filter(status=ReservationStatus.HELD, expires_at__lte=now).update(
        status=ReservationStatus.EXPIRED, settled_at=now
    )


# --- credits and wallet ----------------------------------------------------------------------------


@transaction.atomic
def credit_grant_create(
    *,
    customer: Customer,
    amount: Decimal,
    kind: str = GrantKind.PURCHASED,
    unit: str | None = None,
    expires_at: datetime | None = None,
    priority: int = 50,
    description: str = "",
    idempotency_key: str | None = None,
    reference: str | None = None,
    now: datetime | None = None,
) -> tuple[CreditGrant, bool]:
    """Grant credits. ``unit`` defaults to credits when the plan sells credit packs, else money.

    Returns (grant, created); a repeated idempotency key returns the first grant. ``reference`` names the
    payment the grant was bought with on its ledger row (``CreditLedgerEntry.reference``); a payment already
    credited returns its grant.
    """
    now = now or timezone.now()
    customer_balance_for_update(customer)
    if reference:
        paid = CreditLedgerEntry.objects.filter(customer=customer, reference=reference).first()
        if paid is not None and paid.grant is not None:
            return paid.grant, False
        if paid is not None:
            raise Conflict(f"The payment {reference} already credited the wallet.")
    if idempotency_key:
        existing = CreditGrant.objects.filter(customer=customer, idempotency_key=idempotency_key).first()
        if existing is not None:
            return existing, False
    if amount <= 0:
        raise InvalidInput("A grant's amount must be greater than zero.", param="amount")
    if kind not in GrantKind.values:
        raise InvalidInput(f"kind must be one of {', '.join(GrantKind.values)}.", param="kind")
    if expires_at is not None and expires_at <= now:
        raise InvalidInput("expires_at must be in the future.", param="expires_at")
    if not 0 <= priority <= 100:
        raise InvalidInput("priority must be between 0 and 100 (lower is used first).", param="priority")
    unit = (unit or _default_grant_unit(customer)).lower()
    if unit not in (CREDITS, customer.currency):
        # Any other unit could never be drawn: nothing is priced in it, and no rate turns it into either.
        raise InvalidInput(
            f"A grant is in credits or in the customer's currency ({customer.currency}), not {unit!r}.",
            param="unit",
        )
    grant = CreditGrant.objects.create(
        customer=customer,
        kind=kind,
        unit=unit,
        amount=amount,
        remaining=amount,
        priority=priority,
        effective_at=now,
        expires_at=expires_at,
        description=description,
        idempotency_key=idempotency_key or None,
    )
    CreditLedgerEntry.objects.create(
        customer=customer,
        grant=grant,
        kind=LedgerEntryKind.GRANT,
        amount=amount,
        unit=grant.unit,
        note=description,
        reference=reference or None,
    )
    return grant, True


def _default_grant_unit(customer: Customer) -> str:
    """Credits on a plan that sells or prices in credits; otherwise a monetary credit."""
    subscription = Subscription.objects.filter(customer=customer).select_related("plan_version").first()
    if subscription is None:
        return customer.currency
    version = subscription.plan_version
    if version.credit_packs.exists() or version.prices.filter(pricing_unit=PricingUnit.CREDITS).exists():
        return CREDITS
    return customer.currency


def credit_pack_purchase(
    *,
    customer: Customer,
    pack: CreditPack,
    idempotency_key: str | None = None,
    reference: str | None = None,
    credits: Decimal | None = None,
    amount: Decimal | None = None,
) -> CreditGrant:
    """Grant a credit pack's credits. ``credits`` and ``amount`` override the pack's when the purchase was
    priced earlier (a Checkout Session keeps what it sold, even if the pack changed since); ``reference``
    names the payment (see ``credit_grant_create``)."""
    credits = pack.credits if credits is None else credits
    amount = pack.amount if amount is None else amount
    grant, _ = credit_grant_create(
        customer=customer,
        amount=credits,
        kind=GrantKind.PURCHASED,
        unit=CREDITS,
        description=f"Credit pack: {credits.normalize():f} credits for {format_money(amount, customer.currency)}",
        idempotency_key=idempotency_key,
        reference=reference,
    )
    return grant


@transaction.atomic
def wallet_top_up(
    *, customer: Customer, amount: Decimal, note: str = "", reference: str | None = None
) -> CreditLedgerEntry:
    """Add prepaid money to the wallet, in the customer's currency.

    ``reference`` names the payment the money came from (``checkout:cs_…``, ``payment_intent:pi_…``). It is
    looked for under the customer's lock, and unique per customer in the database, so a payment told to us
    twice credits once: the second call returns the first row.
    """
    if amount <= 0:
        raise InvalidInput("A top-up must be greater than zero.", param="amount")
    balance = customer_balance_for_update(customer)
    if reference:
        paid = CreditLedgerEntry.objects.filter(customer=customer, reference=reference).first()
        if paid is not None:
            if paid.grant_id is not None or paid.amount != amount:
                raise Conflict(f"The payment {reference} already credited {paid.amount} {paid.unit}.")
            return paid
    room = decimal_column_max(**RATE) - balance.wallet_balance
    if amount > room:
        raise OutOfRange(
            f"The wallet holds at most {decimal_column_max(**RATE):f} {balance.currency}; "
            f"this top-up may be at most {room:f}.",
            param="amount",
            max=f"{room:f}",
        )
    balance.wallet_balance += amount
    balance.save(update_fields=["wallet_balance", "updated_at"])
    return CreditLedgerEntry.objects.create(
        customer=customer,
        kind=LedgerEntryKind.TOPUP,
        amount=amount,
        unit=balance.currency,
        note=note or "Top-up",
        reference=reference or None,
    )


def credit_grants_expiring_announce(*, now: datetime | None = None) -> int:
    """Announce (``credits.expiring``) each grant with credits left that expires within
    ``CREDITS_EXPIRING_DAYS``, once per grant. Returns how many were announced.

    Each grant is claimed by a conditional update of ``expiry_announced_at``, so two runs at once announce it
    once; the claim and the announcement commit together.
    """
    now = now or timezone.now()
    horizon = now + timedelta(days=settings.CREDITS_EXPIRING_DAYS)
    expiring = (
        CreditGrant.objects.filter(
            expires_at__gt=now,
            expires_at__lte=horizon,
            expired_at__isnull=True,
            expiry_announced_at__isnull=True,
            remaining__gt=0,
        )
        .select_related("customer")
        .order_by("expires_at", "pk")
    )
    announced = 0
    for grant in expiring:
        with transaction.atomic():
            claimed = CreditGrant.objects.filter(pk=grant.pk, expiry_announced_at__isnull=True).update(
                expiry_announced_at=now
            )
            if not claimed:
                continue
            expires_at = grant.expires_at or horizon  # filtered above: never None here
            customer_event_announce(
                event_type=CustomerEventType.CREDITS_EXPIRING,
                customer=grant.customer,
                data={
                    "grant": grant.pk,
                    "remaining": exact(grant.remaining),
                    "unit": grant.unit,
                    "expires_at": instant(expires_at),
                },
            )
            announced += 1
    return announced


def credit_grants_expire(*, now: datetime | None = None) -> int:
    """Void the unused remainder of grants past their expiry, one customer transaction at a time."""
    now = now or timezone.now()
    customer_ids = (
        CreditGrant.objects.filter(expires_at__lte=now, expired_at__isnull=True)
        .values_list("customer_id", flat=True)
        .distinct()
        .order_by("customer_id")
    )
    expired = 0
    for customer in Customer.objects.filter(pk__in=list(customer_ids)).order_by("pk"):
        with transaction.atomic():
            customer_balance_for_update(customer)
            if Reservation.objects.active(now).filter(customer=customer, held_credits__gt=0).exists():
                # Open holds pinned credits, perhaps these: a grant's expiry never takes what a hold
                # pinned. Holds last minutes; the next run expires the grants once they settle.
                continue
            for grant in CreditGrant.objects.filter(
                customer=customer, expires_at__lte=now, expired_at__isnull=True
            ):
                if grant.remaining > 0:
                    CreditLedgerEntry.objects.create(
                        customer=customer,
                        grant=grant,
                        kind=LedgerEntryKind.EXPIRY,
                        amount=-grant.remaining,
                        unit=grant.unit,
                        note="Expired unused",
                    )
                grant.remaining = Decimal(0)
                grant.expired_at = now
                grant.save(update_fields=["remaining", "expired_at"])
                expired += 1
    return expired
