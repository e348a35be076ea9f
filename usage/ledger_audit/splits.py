"""Every event's recorded split adds up to its cost, and the draw-down rows a write left equal the credits
and wallet shares of the events it recorded."""

from collections import defaultdict
from datetime import datetime
from decimal import Decimal

from django.db.models import F, Q, Sum

from core.money import CREDITS
from usage.ledger_audit.common import ZERO, Mismatch, TermsByCustomer, differs, retained
from usage.models import (
    CreditLedgerEntry,
    LedgerEntryKind,
    UsageEvent,
)


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
        retained(UsageEvent.objects.filter(billable=True))
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
    terms = TermsByCustomer()
    said_credits: dict[tuple[int, datetime, str], Decimal] = defaultdict(Decimal)
    said_wallet: dict[tuple[int, datetime], Decimal] = defaultdict(Decimal)
    unprovable: set[tuple[int, datetime]] = set()
    events = (
        retained(UsageEvent.objects.filter(billable=True))
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
        retained(
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
        if differs(said, took):
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
        if differs(said, took):
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
