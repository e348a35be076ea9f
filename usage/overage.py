"""The units that post-paid overage pays for, the one rule the Stripe outbox and the daily rollups count by.

An event's billable units (past the included allowance) are paid for by credits, the wallet and overage in
proportion to their shares of its cost: overage pays for ``billable × overage / cost`` units, to the
ledger's quantity precision. The outbox adds it up in Python as a batch is recorded; the rollups are
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
    """The units of one event that overage pays for."""
    if overage_amount <= 0 or cost <= 0:
        return ZERO
    billable = quantity - included_quantity
    if overage_amount == cost:
        return billable
    # Half up, as PostgreSQL rounds a numeric: the quantities are never negative here.
    return (billable * overage_amount / cost).quantize(QUANTITY_PLACES, rounding=ROUND_HALF_UP)


def overage_quantity_sql() -> Case:
    """``overage_quantity`` of a ``UsageEvent`` row, as the database computes it."""
    billable = F("quantity") - F("included_quantity")
    return Case(
        When(Q(overage_amount__lte=0) | Q(cost__lte=0), then=Value(ZERO)),
        When(overage_amount=F("cost"), then=billable),
        default=Round(billable * F("overage_amount") / F("cost"), 6),  # QUANTITY_PLACES
        output_field=DecimalField(),
    )
