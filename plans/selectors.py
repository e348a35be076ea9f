"""Reads of the catalog, including its translation into the rating engine's pure specs."""

from django.db.models import Prefetch, QuerySet

from core.money import CREDITS
from plans.models import Plan, PlanVersion, Price, PricingUnit, VersionStatus
from plans.pricing import PriceModel, PriceSpec, Tier, VersionSpec


def price_spec(price: Price) -> PriceSpec:
    """The rating engine's view of a price (tiers and dimension rates should be prefetched)."""
    currency = price.plan_version.currency
    return PriceSpec(
        meter=price.meter.key,
        model=PriceModel(price.model),
        unit=CREDITS if price.pricing_unit == PricingUnit.CREDITS else currency,
        included=price.included_quantity,
        unit_amount=price.unit_amount,
        tiers=tuple(
            Tier(up_to=tier.up_to, unit_amount=tier.unit_amount, flat_amount=tier.flat_amount)
            for tier in price.tiers.all()
        ),
        package_size=price.package_size,
        package_amount=price.package_amount,
        dimension=price.dimension or None,
        rates=tuple((rate.value, rate.unit_amount) for rate in price.dimension_rates.all()),
        default_rate=price.default_rate,
    )


def version_spec(plan_version: PlanVersion) -> VersionSpec:
    return VersionSpec(
        currency=plan_version.currency,
        base_fee=plan_version.base_fee,
        prices=tuple(price_spec(price) for price in prices_with_rates(plan_version)),
    )


def prices_with_rates(plan_version: PlanVersion) -> QuerySet[Price]:
    return (
        Price.objects.filter(plan_version=plan_version)
        .select_related("meter", "plan_version")
        .prefetch_related("tiers", "dimension_rates")
    )


def plan_latest_published_version(plan: Plan) -> PlanVersion | None:
    return plan.versions.filter(status=VersionStatus.PUBLISHED).order_by("-number").first()


def published_plans() -> QuerySet[Plan]:
    """Public plans with their latest published version's prices, for the pricing page."""
    published = PlanVersion.objects.filter(status=VersionStatus.PUBLISHED).order_by("-number")
    return (
        Plan.objects.filter(is_public=True, versions__status=VersionStatus.PUBLISHED)
        .distinct()
        .prefetch_related(Prefetch("versions", queryset=published, to_attr="published_versions"))
    )
