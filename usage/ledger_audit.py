"""Proof that the ledger agrees with itself: what ``manage.py ledger_check`` runs.

Each proof reads the rows as stored and returns what disagrees; an empty list is the proof. They are
separate functions so a test can ask for one family at a time (``tests/usage/test_simulation.py``):

- ``cached_total_mismatches``: every cached balance and period total equals the rows it summarizes;
- ``event_split_mismatches``: every event's recorded split adds up to its cost, and the draw-down rows a
  write left equal the credits and wallet shares of the events it recorded;
- ``overage_outbox_mismatches``: post-paid overage, give-backs netted, equals what the Stripe outbox holds;
- ``rollup_mismatches``: the daily rollups equal their events, per day and billing period;
- ``balance_mismatches``: no balance is negative and no open hold keeps more than its sources have;
- ``correction_mismatches``: no event is corrected below zero, and a correction corrects an original event of
  its own customer, meter and period;
- ``event_reference_mismatches``: what the database cannot enforce on the partitioned usage ledger: every
  reference to an event finds it, every event has its idempotency key, and a reservation has one event.

Once retention has detached months of the ledger (``usage.partitions``), the totals are proved for the billing
periods that start in the months still attached (``retained_since``): older periods lost some of their events.

Decimals are compared exactly: PostgreSQL sums them exactly, and the engine quantizes each amount once
(``core.money.ledger_amount``), so a total and its rows agree to the last digit or something is wrong.
"""

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet, Sum
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from core.money import CREDITS, ledger_amount
from customers.models import Subscription
from plans.terms import PlanTerms
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
    UsageEventKey,
)
from usage.overage import overage_quantity, overage_quantity_sql
from usage.partitions import retained_since

ZERO = Decimal(0)


def _differs(cached: Decimal, summed: Decimal) -> bool:
    """PostgreSQL sums decimals exactly, so a cached total and its rows agree to the last digit."""
    return Decimal(cached) != Decimal(summed)


@dataclass
class Mismatch:
    """Two numbers that must be equal (or ``cached`` at most ``summed``, for a bound) and are not."""

    what: str
    cached: Decimal
    summed: Decimal
    cached_label: str = "cached"
    summed_label: str = "rows sum to"

    def __str__(self) -> str:
        return f"{self.what}: {self.cached_label} {self.cached}, {self.summed_label} {self.summed}"


def ledger_mismatches(*, now: datetime | None = None) -> list[Mismatch]:
    """Everything any proof finds wrong; empty when the ledger is consistent."""
    now = now or timezone.now()
    return [mismatch for proof in PROOFS.values() for mismatch in proof(now)]


_Rows = TypeVar("_Rows", bound=QuerySet[Any])


def _retained(rows: _Rows, period_start: str = "period_start") -> _Rows:
    """The rows of billing periods whose events are all still in the ledger (all, when nothing was detached)."""
    since = retained_since()
    return rows.filter(**{f"{period_start}__gte": since}) if since else rows


# --- cached balances and totals ------------------------------------------------------------------


def cached_total_mismatches(now: datetime | None = None) -> list[Mismatch]:
    """Every grant, wallet and period total equals the sum of its rows."""
    mismatches: list[Mismatch] = []

    grant_sums = dict(
        CreditLedgerEntry.objects.filter(grant__isnull=False)
        .values_list("grant_id")
        .annotate(total=Sum("amount"))
    )
    for grant_id, remaining in CreditGrant.objects.values_list("id", "remaining"):
        summed = grant_sums.get(grant_id, ZERO)
        if _differs(remaining, summed):
            mismatches.append(Mismatch(f"credit grant {grant_id} remaining", remaining, summed))

    wallet_sums = dict(
        CreditLedgerEntry.objects.filter(grant__isnull=True)
        .values_list("customer_id")
        .annotate(total=Sum("amount"))
    )
    for customer_id, wallet in CustomerBalance.objects.values_list("customer_id", "wallet_balance"):
        summed = wallet_sums.get(customer_id, ZERO)
        if _differs(wallet, summed):
            mismatches.append(Mismatch(f"customer {customer_id} wallet", wallet, summed))

    event_totals = {
        (row["customer_id"], row["meter_id"], row["period_start"]): row
        for row in _retained(UsageEvent.objects.all())
        .values("customer_id", "meter_id", "period_start")
        .annotate(
            billable_total=Sum("quantity", filter=Q(billable=True)),
            non_billable_total=Sum("quantity", filter=Q(billable=False)),
            events=Count("id"),
            cost_total=Sum("cost"),
            included_total=Sum("included_quantity"),
            credits_total=Sum("credits_amount"),
            wallet_total=Sum("wallet_amount"),
            overage_total=Sum("overage_amount"),
            serving_cost_total=Sum("serving_cost"),
        )
    }
    rollup_totals: dict[tuple[int, int, Any], dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for row in (
        _retained(DailyUsageRollup.objects.all())
        .values("customer_id", "meter_id", "period_start")
        .annotate(
            quantity_total=Sum("quantity"),
            events=Sum("event_count"),
            cost_total=Sum("cost"),
            serving_cost_total=Sum("serving_cost"),
        )
    ):
        rollup_totals[(row["customer_id"], row["meter_id"], row["period_start"])].update(row)

    for period in _retained(PeriodUsage.objects.all()):
        key = (period.customer_id, period.meter_id, period.period_start)
        events = event_totals.pop(key, {})
        rollups = rollup_totals.pop(key, {})
        label = f"customer {period.customer_id} meter {period.meter_id} period {period.period_start:%Y-%m-%d %H:%M}"
        checks = [
            ("billable quantity", period.quantity, events.get("billable_total") or ZERO),
            ("non-billable quantity", period.non_billable_quantity, events.get("non_billable_total") or ZERO),
            ("event count", Decimal(period.event_count), Decimal(events.get("events") or 0)),
            ("cost", period.cost, events.get("cost_total") or ZERO),
            ("included quantity", period.included_quantity, events.get("included_total") or ZERO),
            ("credits", period.credits_amount, events.get("credits_total") or ZERO),
            ("wallet", period.wallet_amount, events.get("wallet_total") or ZERO),
            ("overage", period.overage_amount, events.get("overage_total") or ZERO),
            (
                "rollup quantity",
                period.quantity + period.non_billable_quantity,
                rollups.get("quantity_total") or ZERO,
            ),
            ("rollup event count", Decimal(period.event_count), Decimal(rollups.get("events") or 0)),
            ("rollup cost", period.cost, rollups.get("cost_total") or ZERO),
            ("serving cost", period.serving_cost, events.get("serving_cost_total") or ZERO),
            ("rollup serving cost", period.serving_cost, rollups.get("serving_cost_total") or ZERO),
        ]
        mismatches.extend(
            Mismatch(f"{label} {name}", cached, summed)
            for name, cached, summed in checks
            if _differs(cached, summed)
        )
    for key in event_totals:
        mismatches.append(
            Mismatch(f"events of customer {key[0]} meter {key[1]} without period totals", ZERO, ZERO)
        )
    for key in rollup_totals:
        mismatches.append(
            Mismatch(f"rollups of customer {key[0]} meter {key[1]} without period totals", ZERO, ZERO)
        )
    return mismatches


# --- each event's split and the draw-downs it left ---------------------------------------------------


class _TermsByCustomer:
    """The terms of each customer's current plan version, read once per proof."""

    def __init__(self) -> None:
        self._terms: dict[int, PlanTerms | None] = {}

    def of(self, customer_id: int) -> PlanTerms | None:
        if customer_id not in self._terms:
            subscription = (
                Subscription.objects.filter(customer_id=customer_id).select_related("plan_version").first()
            )
            self._terms[customer_id] = (
                PlanTerms.of_version(subscription.plan_version) if subscription else None
            )
        return self._terms[customer_id]

    def credit_rate(self, customer_id: int) -> Decimal | None:
        terms = self.of(customer_id)
        return terms.credit_rate if terms else None


def event_split_mismatches(now: datetime | None = None) -> list[Mismatch]:
    """Every event's split adds up, and each write's draw-down rows equal its events' shares.

    A write (one batch, or one reservation's commit) records its events with one ``received_at`` and
    leaves one draw-down (or refund) row per grant and one for the wallet, pointing at one of its events.
    So per customer and ``received_at``: the credits the events say grants paid equal what the grant rows
    took, per unit, and the wallet shares, in money, equal what the wallet rows took. Two writes in the same
    instant fall in one group, and the sums still have to agree.

    A credit-priced event's grant share may be partly paid by monetary grants at the pack rate: the event
    records those credits and the money taken (``money_grant_credits``, ``money_grant_amount``), proved
    against the grant rows of the currency. A wallet share priced in credits is money converted on the period's running total, which the event
    records (``wallet_money``); for events recorded before it was kept, the share is proved at the
    customer's current plan's rate, and left out when the current plan has none.
    """
    mismatches: list[Mismatch] = []
    split = F("credits_amount") + F("wallet_amount") + F("overage_amount")
    for event_id, cost, covered in (
        _retained(UsageEvent.objects.filter(billable=True))
        .annotate(covered=split)
        .exclude(cost=F("covered"))
        .values_list("id", "cost", "covered")
    ):
        mismatches.append(
            Mismatch(f"event {event_id} split", cost, covered, "costs", "credits + wallet + overage make")
        )
    for event_id, quantity, included in (
        UsageEvent.objects.filter(billable=True, quantity__gte=0)
        .filter(Q(included_quantity__lt=0) | Q(included_quantity__gt=F("quantity")))
        .values_list("id", "quantity", "included_quantity")
    ):
        mismatches.append(
            Mismatch(f"event {event_id} included quantity", included, quantity, "is", "out of 0 to")
        )
    for event_id, cost in (
        UsageEvent.objects.filter(billable=False)
        .exclude(cost=0, included_quantity=0, credits_amount=0, wallet_amount=0, overage_amount=0)
        .values_list("id", "cost")
    ):
        mismatches.append(Mismatch(f"cache hit {event_id} was charged", cost, ZERO, "costs", "must cost"))
    for entry_id, entry_customer, event_customer in (
        CreditLedgerEntry.objects.filter(usage_event__isnull=False)
        .exclude(customer_id=F("usage_event__customer_id"))
        .values_list("id", "customer_id", "usage_event__customer_id")
    ):
        mismatches.append(
            Mismatch(
                f"ledger row {entry_id} of customer {entry_customer} points at an event of customer",
                Decimal(entry_customer),
                Decimal(event_customer),
                "customer",
                "event's customer",
            )
        )

    # What the events of each write say grants and the wallet paid ...
    terms = _TermsByCustomer()
    said_credits: dict[tuple[int, datetime, str], Decimal] = defaultdict(Decimal)
    said_wallet: dict[tuple[int, datetime], Decimal] = defaultdict(Decimal)
    unprovable: set[tuple[int, datetime]] = set()
    events = (
        _retained(UsageEvent.objects.filter(billable=True))
        .filter(~Q(credits_amount=0) | ~Q(wallet_amount=0))
        .values_list(
            "customer_id",
            "received_at",
            "cost_unit",
            "credits_amount",
            "wallet_amount",
            "wallet_money",
            "money_grant_credits",
            "money_grant_amount",
            "customer__currency",
        )
    )
    for (
        customer_id,
        received_at,
        unit,
        credits,
        wallet,
        wallet_money,
        mg_credits,
        mg_amount,
        currency,
    ) in events:
        if credits:
            # Credits monetary grants paid for were taken from those grants, in money.
            said_credits[customer_id, received_at, unit] += credits - mg_credits
            if mg_amount:
                said_credits[customer_id, received_at, currency] += mg_amount
        if not wallet:
            continue
        if unit != CREDITS:
            said_wallet[customer_id, received_at] += wallet
            continue
        if wallet_money is not None:  # credits' money on the period's running total, as the engine drew it
            said_wallet[customer_id, received_at] += wallet_money
            continue
        customer_terms = terms.of(customer_id)
        if customer_terms is None or customer_terms.credit_rate is None:
            unprovable.add((customer_id, received_at))
        else:
            said_wallet[customer_id, received_at] += customer_terms.to_money(wallet, unit)

    # ... and what the draw-down and refund rows pointing at them took.
    took_credits: dict[tuple[int, datetime, str], Decimal] = defaultdict(Decimal)
    took_wallet: dict[tuple[int, datetime], Decimal] = defaultdict(Decimal)
    rows = (
        _retained(
            CreditLedgerEntry.objects.filter(
                usage_event__isnull=False, kind__in=[LedgerEntryKind.DRAWDOWN, LedgerEntryKind.REFUND]
            ),
            "usage_event__period_start",
        )
        .values("usage_event__customer_id", "usage_event__received_at", "grant__unit")
        .annotate(total=Sum("amount"))
        .order_by()
    )
    for row in rows:
        customer_id, received_at = row["usage_event__customer_id"], row["usage_event__received_at"]
        if row["grant__unit"] is None:
            took_wallet[customer_id, received_at] -= row["total"]
        else:
            took_credits[customer_id, received_at, row["grant__unit"]] -= row["total"]

    for key in sorted(set(said_credits) | set(took_credits)):
        said, took = said_credits.get(key, ZERO), took_credits.get(key, ZERO)
        if _differs(said, took):
            customer_id, received_at, unit = key
            mismatches.append(
                Mismatch(
                    f"customer {customer_id} write at {received_at.isoformat()} credits ({unit})",
                    said,
                    took,
                    "events say grants paid",
                    "grant rows took",
                )
            )
    for wallet_key in sorted((set(said_wallet) | set(took_wallet)) - unprovable):
        said, took = said_wallet.get(wallet_key, ZERO), took_wallet.get(wallet_key, ZERO)
        if _differs(said, took):
            customer_id, received_at = wallet_key
            mismatches.append(
                Mismatch(
                    f"customer {customer_id} write at {received_at.isoformat()} wallet",
                    said,
                    took,
                    "events say the wallet paid",
                    "wallet rows took",
                )
            )
    return mismatches


# --- post-paid overage and the Stripe outbox ----------------------------------------------------------


def overage_outbox_mismatches(now: datetime | None = None) -> list[Mismatch]:
    """Per customer, meter, dimension value and period: the overage events record, give-backs netted, equals
    what the outbox holds for Stripe, in overage units and in money.

    Every outbox row counts, whatever its status: the outbox is the record of what Stripe was (or will be)
    told. Overage priced in credits is money at the customer's current plan's credit rate (the event does not
    record the rate it was rated at); when that plan has no rate, only the units are compared.
    """
    terms = _TermsByCustomer()
    Key = tuple[int, int, str, datetime]
    event_units: dict[Key, Decimal] = defaultdict(Decimal)
    event_money: dict[Key, Decimal] = defaultdict(Decimal)
    unpriced: set[Key] = set()  # credits overage whose rate the current plan does not know
    events = (
        _retained(UsageEvent.objects.filter(billable=True))
        .exclude(overage_amount=0)
        .values_list(
            "customer_id",
            "meter_id",
            "dimension_value",
            "period_start",
            "cost_unit",
            "quantity",
            "included_quantity",
            "cost",
            "overage_amount",
        )
    )
    for (
        customer_id,
        meter_id,
        dimension_value,
        period_start,
        unit,
        quantity,
        included,
        cost,
        overage,
    ) in events:
        key = (customer_id, meter_id, dimension_value, period_start)
        event_units[key] += overage_quantity(
            quantity=quantity, included_quantity=included, cost=cost, overage_amount=overage
        )
        rate = terms.credit_rate(customer_id)
        if unit != CREDITS:
            event_money[key] += overage
        elif rate is None:
            unpriced.add(key)
        else:
            event_money[key] += ledger_amount(overage * rate)
    outbox = {
        (row["customer_id"], row["meter_id"], row["dimension_value"], row["period_start"]): row
        for row in _retained(StripeUsageOutbox.objects.all())
        .values("customer_id", "meter_id", "dimension_value", "period_start")
        .annotate(units=Sum("quantity"), money=Sum("amount"))
        .order_by()
    }
    mismatches: list[Mismatch] = []
    for key in sorted(set(event_units) | set(event_money) | set(outbox)):
        customer_id, meter_id, dimension_value, period_start = key
        label = (
            f"customer {customer_id} meter {meter_id}"
            + (f" ({dimension_value})" if dimension_value else "")
            + f" period {period_start:%Y-%m-%d %H:%M} overage"
        )
        sent = outbox.get(key, {})
        compared = [("units", event_units.get(key, ZERO), sent.get("units") or ZERO)]
        if key not in unpriced:
            compared.append(("money", event_money.get(key, ZERO), sent.get("money") or ZERO))
        for name, recorded, queued in compared:
            if _differs(recorded, queued):
                mismatches.append(
                    Mismatch(f"{label} {name}", recorded, queued, "events record", "the Stripe outbox holds")
                )
    return mismatches


# --- daily rollups --------------------------------------------------------------------------------------


ROLLUP_KEY = ("customer_id", "meter_id", "member_id", "action", "dimension_value", "day", "period_start")
ROLLUP_TOTALS = (
    "quantity",
    "billable_quantity",
    "overage_quantity",
    "event_count",
    "cost",
    "overage_amount",
    "serving_cost",
)


def rollup_mismatches(now: datetime | None = None) -> list[Mismatch]:
    """Each daily rollup equals its events, per key and billing period: a day that two periods share (a
    period end, a plan change) is two rollups, one per period, or the period's pages count the wrong days."""
    billable = Q(billable=True)
    event_rows = (
        _retained(UsageEvent.objects.all())
        .annotate(day=TruncDate("timestamp", tzinfo=UTC))
        .values(*ROLLUP_KEY)
        .annotate(
            quantity_total=Sum("quantity"),
            billable_quantity_total=Coalesce(
                Sum(F("quantity") - F("included_quantity"), filter=billable), ZERO
            ),
            overage_quantity_total=Coalesce(Sum(overage_quantity_sql(), filter=billable), ZERO),
            event_count_total=Count("id"),
            cost_total=Coalesce(Sum("cost", filter=billable), ZERO),
            overage_amount_total=Coalesce(Sum("overage_amount", filter=billable), ZERO),
            serving_cost_total=Coalesce(Sum("serving_cost"), ZERO),
        )
        .order_by()
    )
    rollup_rows = (
        _retained(DailyUsageRollup.objects.all())
        .values(*ROLLUP_KEY)
        .annotate(**{f"{name}_total": Sum(name) for name in ROLLUP_TOTALS})
        .order_by()
    )
    from_events = {tuple(row[name] for name in ROLLUP_KEY): row for row in event_rows}
    from_rollups = {tuple(row[name] for name in ROLLUP_KEY): row for row in rollup_rows}
    mismatches: list[Mismatch] = []
    for key in sorted(set(from_events) | set(from_rollups), key=str):
        customer_id, meter_id, member_id, action, dimension_value, day, period_start = key
        label = (
            f"customer {customer_id} meter {meter_id} member {member_id} action {action!r}"
            f" dimension {dimension_value!r} day {day} period {period_start:%Y-%m-%d %H:%M} rollup"
        )
        events, rollups = from_events.get(key, {}), from_rollups.get(key, {})
        for name in ROLLUP_TOTALS:
            stored = Decimal(rollups.get(f"{name}_total") or 0)
            summed = Decimal(events.get(f"{name}_total") or 0)
            if _differs(stored, summed):
                mismatches.append(Mismatch(f"{label} {name}", stored, summed, "rollup has", "events sum to"))
    return mismatches


# --- balances and holds -----------------------------------------------------------------------------


def balance_mismatches(now: datetime | None = None) -> list[Mismatch]:
    """No wallet or grant is negative, and at ``now`` no customer's open holds keep more credits (per unit)
    than their usable grants have, or more money than their wallet has."""
    now = now or timezone.now()
    mismatches = [
        Mismatch(f"customer {customer_id} wallet", wallet, ZERO, "is", "must be at least")
        for customer_id, wallet in CustomerBalance.objects.filter(wallet_balance__lt=0).values_list(
            "customer_id", "wallet_balance"
        )
    ]
    mismatches += [
        Mismatch(f"credit grant {grant_id} remaining", remaining, ZERO, "is", "must be at least")
        for grant_id, remaining in CreditGrant.objects.filter(remaining__lt=0).values_list("id", "remaining")
    ]

    holds = list(
        Reservation.objects.active(now)
        .values("customer_id", "unit")
        .annotate(credits=Sum("held_credits"), wallet=Sum("held_wallet"))
        .order_by()
    )
    if not holds:
        return mismatches
    customer_ids = {hold["customer_id"] for hold in holds}
    grants: dict[tuple[int, str], Decimal] = defaultdict(Decimal)
    # Grants past their expiry but not yet voided count: a grant's expiry waits while holds pin credits.
    for customer_id, unit, remaining in CreditGrant.objects.filter(
        customer_id__in=customer_ids, expired_at__isnull=True, effective_at__lte=now, remaining__gt=0
    ).values_list("customer_id", "unit", "remaining"):
        grants[customer_id, unit] += remaining
    wallets = dict(
        CustomerBalance.objects.filter(customer_id__in=customer_ids).values_list(
            "customer_id", "wallet_balance"
        )
    )
    terms = _TermsByCustomer()
    held_wallet: dict[int, Decimal] = defaultdict(Decimal)
    for hold in holds:
        customer_id, unit = hold["customer_id"], hold["unit"]
        customer_terms = terms.of(customer_id)
        available = grants.get((customer_id, unit), ZERO)
        if unit == CREDITS and customer_terms is not None and customer_terms.credit_rate is not None:
            # Monetary grants pay for credits at the pack rate.
            available += customer_terms.from_money(
                grants.get((customer_id, customer_terms.currency), ZERO), unit
            )
        if hold["credits"] > available:
            mismatches.append(
                Mismatch(
                    f"customer {customer_id} open holds on credit grants ({unit})",
                    hold["credits"],
                    available,
                    "keep",
                    "usable grants have",
                )
            )
        to_money: Callable[[Decimal, str], Decimal] = (
            customer_terms.to_money if customer_terms else lambda amount, _: amount
        )
        held_wallet[customer_id] += to_money(hold["wallet"], unit)
    for customer_id, held in sorted(held_wallet.items()):
        if held > wallets.get(customer_id, ZERO):
            mismatches.append(
                Mismatch(
                    f"customer {customer_id} open holds on the wallet",
                    held,
                    wallets.get(customer_id, ZERO),
                    "keep",
                    "the wallet has",
                )
            )
    return mismatches


# --- corrections ---------------------------------------------------------------------------------------


def correction_mismatches(now: datetime | None = None) -> list[Mismatch]:
    """Every corrected event's quantity with its corrections is at least zero, and every correction corrects
    an event of its own customer, meter and period that is not itself a correction."""
    mismatches: list[Mismatch] = []
    for event_id, corrected in (
        UsageEvent.objects.filter(corrections__isnull=False)
        .annotate(corrected=F("quantity") + Sum("corrections__quantity"))
        .filter(corrected__lt=0)
        .values_list("id", "corrected")
    ):
        mismatches.append(
            Mismatch(
                f"event {event_id} with its corrections", corrected, ZERO, "counts", "must count at least"
            )
        )
    strays = UsageEvent.objects.filter(corrects__isnull=False).exclude(
        corrects__customer_id=F("customer_id"),
        corrects__meter_id=F("meter_id"),
        corrects__period_start=F("period_start"),
        corrects__corrects__isnull=True,
    )
    for correction_id, corrects_id in strays.values_list("id", "corrects_id"):
        mismatches.append(
            Mismatch(
                f"correction {correction_id} of event {corrects_id}: not an original event of its customer, "
                "meter and period",
                Decimal(corrects_id),
                Decimal(correction_id),
                "corrects",
                "correction",
            )
        )
    return mismatches


# --- references into the partitioned usage ledger -------------------------------------------------


def event_reference_mismatches(now: datetime | None = None) -> list[Mismatch]:
    """Every reference to a usage event finds it; every event has its key; a reservation has one event.

    The ledger is partitioned by month, so nothing in the database can reference an event by id alone, and
    (customer, idempotency key) is unique in ``UsageEventKey``, not on the events. A reference to an event of
    a detached month is kept (the event is archived, not lost): its key, which outlives it, proves it existed.
    """
    since = retained_since()
    recorded = UsageEvent.objects.filter(pk=OuterRef("event_id"))
    archived = (
        UsageEventKey.objects.filter(event_id=OuterRef("event_id"), timestamp__lt=since)
        if since
        else UsageEventKey.objects.none()
    )
    references: list[tuple[str, QuerySet[Any], str]] = [
        ("ledger row", CreditLedgerEntry.objects.filter(usage_event_id__isnull=False), "usage_event_id"),
        ("Stripe outbox row", StripeUsageOutbox.objects.all(), "last_event_id"),
        ("correction", UsageEvent.objects.filter(corrects_id__isnull=False), "corrects_id"),
    ]
    mismatches: list[Mismatch] = []
    for label, rows, column in references:
        missing = (
            rows.alias(event_id=F(column))
            .exclude(Exists(recorded))
            .exclude(Exists(archived))
            .values_list("id", column)
        )
        mismatches += [
            Mismatch(f"{label} {row_id} points at a missing event", Decimal(event_id), ZERO, "event", "found")
            for row_id, event_id in missing
        ]
    keyed = UsageEventKey.objects.filter(
        event_id=OuterRef("id"),
        customer_id=OuterRef("customer_id"),
        idempotency_key=OuterRef("idempotency_key"),
        timestamp=OuterRef("timestamp"),
    )
    for event_id in UsageEvent.objects.exclude(Exists(keyed)).values_list("id", flat=True):
        mismatches.append(
            Mismatch(
                f"event {event_id} has no idempotency key recorded", Decimal(event_id), ZERO, "event", "keys"
            )
        )
    keys = _retained(UsageEventKey.objects.all(), "timestamp")
    for event_id in keys.exclude(Exists(UsageEvent.objects.filter(pk=OuterRef("event_id")))).values_list(
        "event_id", flat=True
    ):
        mismatches.append(
            Mismatch(f"key of event {event_id} without its event", Decimal(event_id), ZERO, "event", "found")
        )
    for reservation_id, count in (
        UsageEvent.objects.filter(reservation_id__isnull=False)
        .values_list("reservation_id")
        .annotate(events=Count("id"))
        .filter(events__gt=1)
        .order_by()
    ):
        mismatches.append(
            Mismatch(f"reservation {reservation_id} events", Decimal(count), Decimal(1), "has", "must have")
        )
    return mismatches


# The proofs by family, in the order ``ledger_check`` reports them.
PROOFS: dict[str, Callable[[datetime], list[Mismatch]]] = {
    "cached_totals": cached_total_mismatches,
    "event_split": event_split_mismatches,
    "overage_outbox": overage_outbox_mismatches,
    "rollups": rollup_mismatches,
    "balances": balance_mismatches,
    "corrections": correction_mismatches,
    "event_references": event_reference_mismatches,
}
