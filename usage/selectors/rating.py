"""A period's usage rated under any plan version, from the rollups: the plan comparison's and the migration
backtest's one rule.

Quantities per meter are the period's billable units (cache hits are never billed); a dimensional price also
needs the billable units per dimension value. Rollups keep each value's units per day, not their order
within the period, so the allowance is taken from each value in proportion to its share of the period's
units. It is exact when one value is used, or when the allowance is used up or untouched.
"""

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from decimal import ROUND_DOWN, Decimal

from django.db.models import Sum

from core.money import round_money
from customers.models import Customer
from plans.pricing import (
    MeterUsage,
    PriceModel,
    PriceSpec,
    UnknownDimensionValue,
    VersionSpec,
    billable_quantity,
    rate_period,
)
from usage.models import DailyUsageRollup
from usage.selectors.units import QUANTITY_PLACES, ZERO

DimensionMix = dict[str, dict[str, Decimal]]  # meter key -> dimension value -> units


def period_dimension_mix(*, customer: Customer, period_start: datetime) -> DimensionMix:
    """Units per dimension value of each meter in one customer's period, from the daily rollups."""
    mixes = period_dimension_mixes(customer_ids=[customer.pk], period_starts=[period_start])
    return mixes.get((customer.pk, period_start), {})


def period_dimension_mixes(
    *, customer_ids: Iterable[int], period_starts: Iterable[datetime]
) -> dict[tuple[int, datetime], DimensionMix]:
    """The same for many customers and periods in one query, keyed by (customer id, period start)."""
    mixes: dict[tuple[int, datetime], DimensionMix] = defaultdict(lambda: defaultdict(dict))
    rows = (
        DailyUsageRollup.objects.filter(
            customer_id__in=list(customer_ids), period_start__in=list(period_starts)
        )
        .exclude(dimension_value="")
        .values("customer_id", "period_start", "meter__key", "dimension_value")
        .annotate(units=Sum("quantity"))
    )
    for row in rows:
        mixes[row["customer_id"], row["period_start"]][row["meter__key"]][row["dimension_value"]] = row[
            "units"
        ]
    return mixes


def usage_bill(
    spec_of_version: VersionSpec,
    quantities: dict[str, Decimal],
    mix: dict[str, dict[str, Decimal]],
    credit_rate: Decimal | None,
) -> Decimal | None:
    """Base fee plus usage charges in the currency, credits at ``credit_rate``; None when the version cannot
    price this usage (a dimension value with no rate, credits with no pack to buy them)."""
    usage = {}
    for price in spec_of_version.prices:
        quantity = quantities.get(price.meter, ZERO)
        by_value: dict[str, Decimal] = {}
        if price.model == PriceModel.DIMENSIONAL:
            found = _billable_by_value(price, quantity, mix.get(price.meter, {}))
            if found is None:
                return None
            by_value = found
        usage[price.meter] = MeterUsage(quantity=quantity, billable_by_dimension=by_value)
    try:
        rated = rate_period(spec_of_version, usage=usage)
    except UnknownDimensionValue:
        return None
    if rated.credits_total and credit_rate is None:
        return None
    if not rated.credits_total or credit_rate is None:
        return rated.subtotal
    # Credit lines are exact; their money is rounded once, as a line is.
    return rated.subtotal + round_money(rated.credits_total * credit_rate, rated.currency)


def _billable_by_value(
    price: PriceSpec, quantity: Decimal, mix: dict[str, Decimal]
) -> dict[str, Decimal] | None:
    """The billable units of a dimensional price per value, the allowance taken in proportion to use."""
    billable = billable_quantity(included=price.included, total=quantity)
    units = sum(mix.values(), ZERO)
    if billable <= 0:
        return {}
    if units <= 0:
        return None  # billable units of unknown values: nothing to rate them by
    shares = {
        value: (billable * part / units).quantize(QUANTITY_PLACES, rounding=ROUND_DOWN)
        for value, part in sorted(mix.items())
        if part > 0
    }
    largest = max(shares, key=lambda value: (mix[value], value))
    shares[largest] += billable - sum(shares.values(), ZERO)
    return shares
