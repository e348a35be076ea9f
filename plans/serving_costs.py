"""What serving usage costs us: the dated cost catalog, read once per batch, and the one rule for an event's cost.

An event's serving cost, in the operator's currency (``OPERATOR_CURRENCY``), is its ``properties.cost`` when
the backend sent what the work really cost, else its quantity × the rate in force at its timestamp for the
meter and the value of the meter's cost dimension (``Meter.serving_cost_dimension``, e.g. the model), falling
back to the meter's default rate; no rate, no cost. Ingest and a reservation's commit record it with the event
(``usage.recording``); a correction can call ``serving_cost_of`` the same way.
"""

from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from core.money import LEDGER_PLACES, ledger_amount
from plans.models import RATE, Meter, MeterServingCost

ZERO = Decimal(0)
# The property a backend sends the actual cost of an event in.
COST_PROPERTY = "cost"
MAX_SERVING_COST = Decimal(10) ** (RATE["max_digits"] - RATE["decimal_places"]) - LEDGER_PLACES


@dataclass
class ServingCostRates:
    """The cost schedule of some meters, in memory: rates by (meter id, dimension value), oldest first."""

    dimensions: dict[int, str] = field(default_factory=dict)  # meter id -> the property that picks a rate
    _starts: dict[tuple[int, str], list[datetime]] = field(default_factory=lambda: defaultdict(list))
    _amounts: dict[tuple[int, str], list[Decimal]] = field(default_factory=lambda: defaultdict(list))

    def add(
        self, *, meter_id: int, dimension_value: str, effective_from: datetime, unit_amount: Decimal
    ) -> None:
        """Add one dated rate; rates must be added in ``effective_from`` order per key."""
        self._starts[meter_id, dimension_value].append(effective_from)
        self._amounts[meter_id, dimension_value].append(unit_amount)

    def merge(self, other: "ServingCostRates") -> None:
        """Take in the schedules of ``other``'s meters (read separately)."""
        self.dimensions.update(other.dimensions)
        self._starts.update(other._starts)
        self._amounts.update(other._amounts)

    def rate(self, *, meter_id: int, dimension_value: str, at: datetime) -> Decimal | None:
        """The rate of (meter, value) in force at ``at``: the latest that started at or before it."""
        starts = self._starts.get((meter_id, dimension_value))
        if not starts:
            return None
        position = bisect_right(starts, at)
        return self._amounts[meter_id, dimension_value][position - 1] if position else None


def serving_cost_rates_read(*, meters: Iterable[Meter]) -> ServingCostRates:
    """The whole cost schedule of ``meters`` in one query: what a batch prices its events' costs from."""
    meters = list(meters)
    rates = ServingCostRates(dimensions={meter.pk: meter.serving_cost_dimension for meter in meters})
    rows = MeterServingCost.objects.filter(meter__in=[meter.pk for meter in meters]).order_by(
        "meter_id", "dimension_value", "effective_from"
    )
    for meter_id, value, effective_from, unit_amount in rows.values_list(
        "meter_id", "dimension_value", "effective_from", "unit_amount"
    ):
        rates.add(
            meter_id=meter_id, dimension_value=value, effective_from=effective_from, unit_amount=unit_amount
        )
    return rates


def event_cost_parse(raw: Any) -> Decimal:
    """An event's ``properties.cost``: a non-negative decimal (a JSON number or a decimal string) that fits the
    ledger's precision. Raises ValueError naming the problem; a bad cost is refused, never guessed at."""
    if isinstance(raw, bool) or not isinstance(raw, int | str | Decimal | float):
        raise ValueError("properties.cost must be a number or a decimal string, in the operator's currency")
    try:
        cost = Decimal(str(raw))
    except InvalidOperation as error:
        raise ValueError(f"properties.cost {str(raw)[:40]!r} is not a decimal number") from error
    if not cost.is_finite() or cost < 0:
        raise ValueError("properties.cost must be a finite number >= 0")
    if cost > MAX_SERVING_COST:
        raise ValueError(f"properties.cost must be at most {MAX_SERVING_COST:f}")
    if cost != ledger_amount(cost):
        raise ValueError(f"properties.cost has more than {RATE['decimal_places']} decimal places")
    return cost


def serving_cost_of(
    *, rates: ServingCostRates, meter_id: int, quantity: Decimal, properties: Mapping[str, Any], at: datetime
) -> Decimal:
    """What serving one event cost us, in the operator's currency (see the module docstring).

    ``properties`` were validated when the event came in (``event_cost_parse``). A negative quantity (a
    correction) gives a negative cost at the same rate.
    """
    if COST_PROPERTY in properties:
        return event_cost_parse(properties[COST_PROPERTY])
    rate = None
    dimension = rates.dimensions.get(meter_id)
    if dimension and properties.get(dimension) is not None:
        rate = rates.rate(meter_id=meter_id, dimension_value=str(properties[dimension]), at=at)
    if rate is None:
        rate = rates.rate(meter_id=meter_id, dimension_value="", at=at)
    return ledger_amount(quantity * rate) if rate else ZERO
