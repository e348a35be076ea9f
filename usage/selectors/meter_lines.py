"""One meter's line of the period summary, and how close something is to its limit."""

from dataclasses import dataclass
from decimal import Decimal

from django.db import models

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

    @property
    def unit_plural(self) -> str:
        return unit_label(self.unit, self.quantity)

    @property
    def percent_of_included(self) -> int | None:
        if self.included <= 0:
            return None
        return int(self.quantity * 100 / self.included)

    @property
    def bar_percent(self) -> int:
        percent = self.percent_of_included
        return 0 if percent is None else min(percent, 100)

    @property
    def quantity_display(self) -> str:
        return format_quantity(self.quantity)

    @property
    def quantity_short(self) -> str:
        return format_quantity_short(self.quantity)

    @property
    def included_display(self) -> str:
        return format_quantity(self.included)

    @property
    def projected_quantity_display(self) -> str:
        return format_quantity_short(self.projected_quantity)

    @property
    def cost_display(self) -> str:
        return format_amount(self.cost, self.cost_unit)

    @property
    def projected_cost_display(self) -> str:
        return format_amount(self.projected_cost, self.cost_unit)

    @property
    def non_billable_display(self) -> str:
        return format_quantity(self.non_billable_quantity)

    @property
    def cap_display(self) -> str:
        return format_quantity(self.cap) if self.cap is not None else ""
