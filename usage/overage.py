"""The units that post-paid overage pays for, the one rule the Stripe outbox and the daily rollups count by.

An event's billable units (past the included allowance) are paid for by credits, the wallet and overage in
proportion to their shares of its cost: overage pays for ``billable × overage / cost`` units, to the
ledger's quantity precision. A correction that takes units back has negative billable units, cost and
overage, and so negative overage units; a give-back of a cheaper volume tier (units added, cost negative)
pays for no units. The outbox adds it up in Python as a batch is recorded; the rollups are
summed by the database from the rows just written. The two forms below are the same rule, side by side,
and a test holds them equal.
"""

from decimal import ROUND_HALF_UP, Decimal

from django.db.models import Case, DecimalField, F, Q, Value, When
from django.db.models.functions import Round

from core.money import QUANTITY_PLACES

ZERO = Decimal(0)


def overage_quantity(
    *, quantity: Decimal, included_quantity: Decimal, cost: Decimal, overage_amount: Decimal
) -> Decimal:
    """The units of one event that overage pays for (negative for a correction taking units back)."""
    billable = quantity - included_quantity
    added = overage_amount > 0 and cost > 0 and billable > 0
    taken_back = overage_amount < 0 and cost < 0 and billable < 0
    if not (added or taken_back):
        return ZERO
    if overage_amount == cost:
        return billable
    # Half away from zero, as PostgreSQL rounds a numeric.
    return (billable * overage_amount / cost).quantize(QUANTITY_PLACES, rounding=ROUND_HALF_UP)


def overage_quantity_sql() -> Case:
    """``overage_quantity`` of a ``UsageEvent`` row, as the database computes it."""
    billable = F("quantity") - F("included_quantity")
    added = Q(overage_amount__gt=0, cost__gt=0, quantity__gt=F("included_quantity"))
    taken_back = Q(overage_amount__lt=0, cost__lt=0, quantity__lt=F("included_quantity"))
    return Case(
        When(~(added | taken_back), then=Value(ZERO)),
        When(overage_amount=F("cost"), then=billable),
        default=Round(billable * F("overage_amount") / F("cost"), 6),  # QUANTITY_PLACES
        output_field=DecimalField(),
    )
