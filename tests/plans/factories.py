"""Catalog rows for tests. Defaults are the simplest valid thing: a published USD monthly version, a
per-unit price of $0.01. Pass what a test is about; for tiers and rates, create the rows you need."""

from decimal import Decimal

import factory
from django.db.models import Max
from django.utils import timezone
from factory.django import DjangoModelFactory

from plans.models import (
    Aggregation,
    BillingInterval,
    CreditPack,
    DimensionRate,
    Entitlement,
    Meter,
    Plan,
    PlanVersion,
    Price,
    PriceModel,
    PriceTier,
    PricingUnit,
    VersionStatus,
)


class MeterFactory(DjangoModelFactory):
    class Meta:
        model = Meter
        django_get_or_create = ("key",)

    key = factory.Sequence(lambda n: f"meter_{n}")
    name = factory.LazyAttribute(lambda meter: meter.key.replace("_", " ").capitalize())
    unit = "unit"
    aggregation = Aggregation.SUM


class PlanFactory(DjangoModelFactory):
    class Meta:
        model = Plan
        django_get_or_create = ("code",)

    code = factory.Sequence(lambda n: f"plan_{n}")
    name = factory.LazyAttribute(lambda plan: plan.code.replace("_", " ").title())


def _next_number(version: PlanVersion) -> int:
    return (version.plan.versions.aggregate(last=Max("number"))["last"] or 0) + 1


class PlanVersionFactory(DjangoModelFactory):
    """A published version. `PlanVersionFactory(draft=True)` for a draft."""

    class Meta:
        model = PlanVersion

    class Params:
        draft = factory.Trait(status=VersionStatus.DRAFT, published_at=None)

    plan = factory.SubFactory(PlanFactory)
    number = factory.LazyAttribute(_next_number)
    currency = "usd"
    interval = BillingInterval.MONTH
    base_fee = Decimal("0")
    status = VersionStatus.PUBLISHED
    published_at = factory.LazyFunction(timezone.now)


class PriceFactory(DjangoModelFactory):
    """A per-unit price: $0.01 per unit, nothing included."""

    class Meta:
        model = Price

    plan_version = factory.SubFactory(PlanVersionFactory)
    meter = factory.SubFactory(MeterFactory)
    model = PriceModel.PER_UNIT
    pricing_unit = PricingUnit.CURRENCY
    included_quantity = Decimal("0")
    unit_amount = Decimal("0.01")


class PriceTierFactory(DjangoModelFactory):
    """A tier of a graduated price; an open-ended one unless `up_to` is given."""

    class Meta:
        model = PriceTier

    price = factory.SubFactory(PriceFactory, model=PriceModel.GRADUATED, unit_amount=None)
    position = factory.LazyAttribute(lambda tier: tier.price.tiers.count() + 1)
    up_to = None
    unit_amount = Decimal("0.01")
    flat_amount = Decimal("0")


class DimensionRateFactory(DjangoModelFactory):
    """A rate of a dimensional price by `model`."""

    class Meta:
        model = DimensionRate

    price = factory.SubFactory(
        PriceFactory, model=PriceModel.DIMENSIONAL, unit_amount=None, dimension="model"
    )
    value = factory.Sequence(lambda n: f"model-{n}")
    unit_amount = Decimal("0.00001")


class CreditPackFactory(DjangoModelFactory):
    """$250 for 50,000 credits."""

    class Meta:
        model = CreditPack

    plan_version = factory.SubFactory(PlanVersionFactory)
    amount = Decimal("250")
    credits = Decimal("50000")


class EntitlementFactory(DjangoModelFactory):
    """A feature switched on; give `feature=<meter key>, limit=...` for a per-period cap."""

    class Meta:
        model = Entitlement

    plan_version = factory.SubFactory(PlanVersionFactory)
    feature = factory.Sequence(lambda n: f"feature_{n}")
    enabled = True
    limit = None
