"""The subscribed plan version's prices, as the usage reads need them."""

from collections.abc import Iterable
from decimal import Decimal
from functools import cached_property

from core.money import CREDITS
from customers.models import Customer, Subscription
from plans.models import Entitlement, Meter, PlanVersion, Price, PricingUnit
from plans.pricing import PriceSpec
from plans.selectors import price_spec, prices_with_rates
from usage.selectors.units import LEDGER_PLACES, ZERO


class SubscribedCatalog:
    """The subscribed version's prices, as a read needs them.

    ``for_rating`` loads tiers, dimension rates and caps too (the summary rates projections);
    other reads only need each meter's unit, cost unit and allowance: one query.
    """

    def __init__(self, version: PlanVersion | None, *, currency: str, for_rating: bool) -> None:
        self.version = version
        self.currency = version.currency if version else currency
        self.base_fee = version.base_fee if version else ZERO
        self.prices: dict[int, Price] = {}
        self.specs: dict[int, PriceSpec] = {}
        self.caps: dict[str, Decimal] = {}
        if version is None:
            return
        if for_rating:
            for price in prices_with_rates(version):
                self.prices[price.meter_id] = price
                self.specs[price.meter_id] = price_spec(price)
            for entitlement in Entitlement.objects.filter(plan_version=version, limit__isnull=False):
                if entitlement.limit is not None:
                    self.caps[entitlement.feature] = entitlement.limit
        else:
            for price in Price.objects.filter(plan_version=version).select_related("meter"):
                self.prices[price.meter_id] = price

    @classmethod
    def of(cls, customer: Customer, *, for_rating: bool = False) -> "SubscribedCatalog":
        subscription = (
            Subscription.objects.filter(customer=customer).select_related("plan_version__plan").first()
        )
        return cls(
            subscription.plan_version if subscription else None,
            currency=customer.currency,
            for_rating=for_rating,
        )

    @cached_property
    def credit_rate(self) -> Decimal | None:
        """Money per credit (the cheapest pack); looked up only for plans that price in credits."""
        if self.version is None or not any(
            price.pricing_unit == PricingUnit.CREDITS for price in self.prices.values()
        ):
            return None
        return self.version.credit_unit_amount

    def meters_with(self, *, extra: Iterable[Meter]) -> list[Meter]:
        """The version's metered prices in catalog order, then meters used this period but not priced."""
        meters = [price.meter for price in self.prices.values()]
        known = {meter.pk for meter in meters}
        meters += sorted({m.pk: m for m in extra if m.pk not in known}.values(), key=lambda m: m.key)
        return meters

    def spec(self, meter_id: int) -> PriceSpec | None:
        return self.specs.get(meter_id)

    def included(self, meter_id: int) -> Decimal:
        price = self.prices.get(meter_id)
        return price.included_quantity if price else ZERO

    def cost_unit(self, meter_id: int) -> str:
        price = self.prices.get(meter_id)
        if price is not None and price.pricing_unit == PricingUnit.CREDITS:
            return CREDITS
        return self.currency

    def to_money(self, amount: Decimal, unit: str) -> Decimal:
        """As ``usage.balances``: credits at the credit-pack rate, 0 when the plan sells no packs."""
        if unit != CREDITS:
            return amount
        return (amount * self.credit_rate).quantize(LEDGER_PLACES) if self.credit_rate else ZERO

    def money_total(self, amounts: Iterable[tuple[Decimal, str]]) -> Decimal:
        return sum((self.to_money(amount, unit) for amount, unit in amounts), ZERO)
