"""One meter's line of the period summary, and how close something is to its limit."""

from dataclasses import dataclass, field
from decimal import Decimal

from django.db import models

from core.money import format_money
from plans.display import DisplayUnit
from plans.models import DisplayMode
from usage.selectors.formatting import format_amount, format_quantity, format_quantity_short, unit_label

# The included-quota bar turns amber here (percent of the allowance), red at 100.
QUOTA_WARN_PERCENT = 80


class UsageLevel(models.TextChoices):
    """How close something is to its limit; the page colours bars by it."""

    OK = "ok", "Within limits"
    WARN = "warn", "Near the limit"
    OVER = "over", "At or over the limit"


@dataclass(frozen=True)
class MeterLine:
    """One meter's usage this period, and where it is heading."""

    key: str
    name: str
    unit: str  # the meter's unit, singular ("token")
    quantity: Decimal  # billable units used (cache hits are in non_billable_quantity)
    non_billable_quantity: Decimal
    included: Decimal  # allowance per period, meter units; 0 = none
    included_used: Decimal
    # Of the allowance, units neither used nor pinned by an open reservation: what the engine still offers.
    included_remaining: Decimal
    # Units past the allowance (billed, whatever paid for them): the recorded units the allowance did not cover.
    overage_quantity: Decimal
    cap: Decimal | None  # the plan's per-period cap (an entitlement), meter units
    cost_unit: str  # the plan currency or "credits"
    cost: Decimal  # unrounded, in cost_unit, whatever pays for it
    credits_amount: Decimal  # of cost, paid by credit grants
    wallet_amount: Decimal  # of cost, paid from the wallet
    overage_amount: Decimal  # of cost, billed after the period
    projected_quantity: Decimal
    projected_cost: Decimal
    level: UsageLevel  # of the included allowance
    # How the customer sees the meter (``plans.display``): the quantities below turn into its unit, or for a
    # money meter the page shows costs instead of quantities.
    display: DisplayUnit = field(default_factory=lambda: DisplayUnit(mode=DisplayMode.UNITS, meter_unit=""))
    currency: str = "usd"
    money_cost: Decimal = Decimal(0)  # ``cost`` in money (credits at the plan's pack rate)
    projected_money_cost: Decimal = Decimal(0)
    included_value: Decimal = Decimal(0)  # what the allowance is worth in money at the plan's prices

    @property
    def in_money(self) -> bool:
        return self.display.in_money

    @property
    def unit_plural(self) -> str:
        """The unit the page shows quantities in: the product unit, or the meter's own made plural."""
        return self.display.label(self.display.quantity(self.quantity))

    @property
    def raw_unit_plural(self) -> str:
        """The meter's own unit, which limits in units are set in: "tokens"."""
        return unit_label(self.unit)

    @property
    def display_quantity(self) -> Decimal:
        """What the API's ``display_quantity`` says: the cost in money for a money meter, else the quantity in
        the displayed unit."""
        return self.money_cost if self.in_money else self.display.quantity(self.quantity)

    @property
    def display_unit(self) -> str:
        """What the API's ``display_unit`` says: the currency code for a money meter, else the unit."""
        return self.currency.upper() if self.in_money else self.unit_plural

    @property
    def money_cost_display(self) -> str:
        return format_money(self.money_cost, self.currency)

    @property
    def projected_money_cost_display(self) -> str:
        return format_money(self.projected_money_cost, self.currency)

    @property
    def included_value_display(self) -> str:
        """The allowance as money for a money meter; "" when it is worth nothing (then it is not shown)."""
        return format_money(self.included_value, self.currency) if self.included_value > 0 else ""

    @property
    def percent_of_included(self) -> int | None:
        if self.included <= 0:
            return None
        return int(self.quantity * 100 / self.included)

    @property
    def bar_percent(self) -> int:
        percent = self.percent_of_included
        return 0 if percent is None else min(percent, 100)

    def _shown(self, quantity: Decimal) -> Decimal:
        return self.display.quantity(quantity)

    @property
    def quantity_display(self) -> str:
        return format_quantity(self._shown(self.quantity))

    @property
    def quantity_short(self) -> str:
        return format_quantity_short(self._shown(self.quantity))

    @property
    def included_display(self) -> str:
        return format_quantity(self._shown(self.included))

    @property
    def projected_quantity_display(self) -> str:
        return format_quantity_short(self._shown(self.projected_quantity))

    @property
    def cost_display(self) -> str:
        return format_amount(self.cost, self.cost_unit)

    @property
    def projected_cost_display(self) -> str:
        return format_amount(self.projected_cost, self.cost_unit)

    @property
    def non_billable_display(self) -> str:
        return format_quantity(self._shown(self.non_billable_quantity))

    @property
    def cap_display(self) -> str:
        return format_quantity(self._shown(self.cap)) if self.cap is not None else ""
