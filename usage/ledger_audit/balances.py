"""No balance is negative and no open hold keeps more than its sources have."""

from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal

from django.db.models import Sum
from django.utils import timezone

from core.money import CREDITS
from usage.ledger_audit.common import ZERO, Mismatch, TermsByCustomer
from usage.models import (
    CreditGrant,
    CustomerBalance,
    Reservation,
)


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
    terms = TermsByCustomer()
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
