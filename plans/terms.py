"""A plan version's terms: its prices, entitlements, credit rate and how its amounts become money.

Everything that rates, limits, shows or bills usage reads a version through ``PlanTerms``: the consumption
engine (``usage.consumption``), the usage pages and API (``usage.selectors``), and the Stripe outbox and
reconciliation (``billing_app.stripe.meters``). Amounts are in a price's unit, the plan currency or
credits; credits become money at the plan's credit-pack rate, and nowhere else.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from functools import lru_cache

from core.money import CREDITS, LEDGER_PLACES, ledger_amount
from plans.models import Entitlement, Meter, OveragePolicy, PlanVersion, Price, PriceModel, PricingUnit
from plans.pricing import PriceSpec
from plans.selectors import price_spec, prices_with_rates

ZERO = Decimal(0)


@dataclass(frozen=True)
class PlanTerms:
    """One plan version's prices by meter id (with their rating specs), entitlements and credit rate."""

    version: PlanVersion | None  # None: a customer without a subscription, priced at nothing
    currency: str
    base_fee: Decimal = ZERO
    prices: dict[int, Price] = field(default_factory=dict)  # with tiers and dimension rates
    specs: dict[int, PriceSpec] = field(default_factory=dict)
    entitlements: dict[str, Entitlement] = field(default_factory=dict)  # by feature (a meter key for a cap)
    credit_rate: Decimal | None = None  # money per credit, from the cheapest credit pack; None: no packs
    overage_blocked: bool = False  # the plan never bills overage (OveragePolicy.BLOCKED)

    @classmethod
    def of_version(cls, version: PlanVersion) -> "PlanTerms":
        """The version's terms as stored now: four or five queries."""
        prices = {price.meter_id: price for price in prices_with_rates(version)}
        return cls(
            version=version,
            currency=version.currency,
            base_fee=version.base_fee,
            prices=prices,
            specs={meter_id: price_spec(price) for meter_id, price in prices.items()},
            entitlements={e.feature: e for e in Entitlement.objects.filter(plan_version=version)},
            credit_rate=version.credit_unit_amount,
            overage_blocked=version.overage_policy == OveragePolicy.BLOCKED,
        )

    @classmethod
    def without_plan(cls, currency: str) -> "PlanTerms":
        return cls(version=None, currency=currency)

    # --- money ------------------------------------------------------------------------------------------

    def to_money(self, amount: Decimal, unit: str) -> Decimal:
        """``amount`` of ``unit`` in the plan currency; credits at the credit-pack rate (0 with no pack)."""
        if unit != CREDITS:
            return amount
        return ledger_amount(amount * self.credit_rate) if self.credit_rate else ZERO

    def from_money(self, money: Decimal, unit: str) -> Decimal:
        """How much of ``unit`` ``money`` buys (no credits without a pack).

        Rounded down, so what a balance is said to buy never costs more than the balance: converting
        back with ``to_money`` (half-up, and monotone) cannot pass ``money``.
        """
        if unit != CREDITS:
            return money
        return (
            (money / self.credit_rate).quantize(LEDGER_PLACES, rounding=ROUND_DOWN)
            if self.credit_rate
            else ZERO
        )

    def money_of_running_total(self, *, before: Decimal, add: Decimal, unit: str) -> Decimal:
        """The money ``add`` more of ``unit`` costs after ``before`` of it: the conversion of the running total.

        Each conversion rounds, so converting three draws of 1 credit apart (at 7.00 for 3 credits) would
        cost 6.999999999999; converting the running total gives every draw its share of the dust, and any
        number of draws costs exactly what one draw of their sum does.
        """
        if unit != CREDITS:
            return add
        return self.to_money(before + add, unit) - self.to_money(before, unit)

    def money_total(self, amounts: Iterable[tuple[Decimal, str]]) -> Decimal:
        """The sum of (amount, unit) pairs in the plan currency."""
        return sum((self.to_money(amount, unit) for amount, unit in amounts), ZERO)

    @property
    def prices_in_credits(self) -> bool:
        return any(price.pricing_unit == PricingUnit.CREDITS for price in self.prices.values())

    # --- prices and caps --------------------------------------------------------------------------------

    def cost_unit(self, meter_id: int) -> str:
        """What ``meter_id``'s cost is counted in: credits for a credit-priced meter, else the currency."""
        spec = self.specs.get(meter_id)
        return spec.unit if spec else self.currency

    def included(self, meter_id: int) -> Decimal:
        """The allowance per period of ``meter_id``, in meter units."""
        spec = self.specs.get(meter_id)
        return spec.included if spec else ZERO

    def cap(self, feature: str) -> Decimal | None:
        """The per-period cap of a feature (a meter key), or None when uncapped."""
        entitlement = self.entitlements.get(feature)
        return entitlement.limit if entitlement is not None else None

    def dimension_values(self, meter_id: int) -> set[str]:
        """The values a dimensional price of ``meter_id`` has a rate for; empty for other prices."""
        price = self.prices.get(meter_id)
        if price is None or price.model != PriceModel.DIMENSIONAL:
            return set()
        return {rate.value for rate in price.dimension_rates.all()}

    def meters_with(self, *, extra: Iterable[Meter]) -> list[Meter]:
        """The version's metered prices in catalog order, then meters used but not priced, by key."""
        meters = [price.meter for price in self.prices.values()]
        known = {meter.pk for meter in meters}
        meters += sorted({m.pk: m for m in extra if m.pk not in known}.values(), key=lambda m: m.key)
        return meters


@lru_cache(maxsize=512)
def plan_terms_cached(plan_version_id: int) -> PlanTerms:
    """The terms of a version, read once per process, for the hot paths that rate and limit usage.

    Safe to keep: a version that any subscription uses can no longer be edited (a price change is a new
    version), so what was read stays true. Only prices, entitlements and the credit rate are relied on
    from it; meter names and Stripe ids may change, and readers that show or send them load the terms
    afresh with ``PlanTerms.of_version``.
    """
    return PlanTerms.of_version(PlanVersion.objects.get(pk=plan_version_id))
