"""How customers see a meter: the one home of display units, read by every surface that shows usage.

A meter records raw units (tokens); customers may understand something else. ``DisplayUnit`` says which:

- ``units``: the raw quantity in the meter's own unit ("9.4M tokens"), as recorded;
- ``money``: what the usage costs, never the quantity ("$3.20 of LLM tokens");
- ``unit``: a product unit, the quantity divided by a divisor ("2.4K messages" for 2,400,000 tokens at 1,000
  tokens a message).

The usage page, the pricing page, the notifications and the API's ``display_quantity``/``display_unit`` all
go through it. Pure: no database, no formatting of money (the callers have the currency).
"""

from dataclasses import dataclass
from decimal import Decimal

from plans.models import DisplayMode, Meter
from plans.pricing import PriceModel, PriceSpec, billable_cost


def plural(unit: str, quantity: Decimal | None = None) -> str:
    """A unit's name, plural unless exactly one: "token" -> "tokens"; "GB-hours" and "credits" stay."""
    if quantity is not None and quantity == 1:
        return unit
    if not unit or unit.endswith("s") or not unit[-1].isalpha():
        return unit
    return f"{unit}s"


@dataclass(frozen=True)
class DisplayUnit:
    mode: str  # a DisplayMode value
    meter_unit: str  # the meter's own unit, singular ("token")
    product_unit: str = ""  # with DisplayMode.UNIT: the product unit, plural ("messages")
    divisor: Decimal = Decimal(1)  # with DisplayMode.UNIT: meter units per product unit

    @classmethod
    def of(cls, meter: Meter) -> "DisplayUnit":
        return cls(
            mode=meter.display_mode,
            meter_unit=meter.unit,
            product_unit=meter.display_unit,
            divisor=meter.display_divisor
            if meter.display_divisor and meter.display_divisor > 0
            else Decimal(1),
        )

    @property
    def in_money(self) -> bool:
        return self.mode == DisplayMode.MONEY

    def quantity(self, quantity: Decimal) -> Decimal:
        """The quantity in the unit customers see (for a money meter, its raw units: show its cost instead)."""
        if self.mode == DisplayMode.UNIT:
            return quantity / self.divisor
        return quantity

    def label(self, quantity: Decimal | None = None) -> str:
        """The unit customers see a quantity in: "messages", or the meter's own unit made plural."""
        if self.mode == DisplayMode.UNIT:
            return self.product_unit
        return plural(self.meter_unit, quantity)

    def rate_basis(self) -> tuple[Decimal, str]:
        """What a unit price is quoted per: (meter units per displayed unit, the displayed unit singular-ish).
        A product unit's price is per product unit; otherwise per meter unit."""
        if self.mode == DisplayMode.UNIT:
            return self.divisor, self.product_unit.removesuffix("s") or self.product_unit
        return Decimal(1), self.meter_unit


def allowance_value(spec: PriceSpec, included: Decimal) -> tuple[Decimal, Decimal]:
    """What an allowance of ``included`` units is worth at the price's rates past it, in the price's unit:
    (lowest, highest). The same twice but for a dimensional price, whose worth depends on the dimension
    (the model): then the cheapest and dearest rates. (0, 0) when nothing is included or it is free."""
    zero = Decimal(0)
    if included <= 0:
        return zero, zero
    if spec.model == PriceModel.DIMENSIONAL:
        rates = [rate for _, rate in spec.rates] + (
            [spec.default_rate] if spec.default_rate is not None else []
        )
        if not rates:
            return zero, zero
        return min(rates) * included, max(rates) * included
    value = billable_cost(spec, billable_before=zero, billable_add=included)
    return value, value
