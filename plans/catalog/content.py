"""A catalog's content (meters, plans, each version's pricing), and that content read from the database."""

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from plans.models import Aggregation, DisplayMode, Meter, MeterServingCost, Plan, PlanVersion, RateLimitScope
from plans.pricing import PriceSpec
from plans.selectors import plan_latest_published_version, version_spec


@dataclass(frozen=True)
class ServingCostEntry:
    """A meter's ``"cost"``: what one unit costs us to serve, in the operator's currency, from a date.

    ``unit_amount`` is the default rate; ``rates`` the rate of each value of the event property ``dimension``.
    ``effective_from`` None: from the start for a rate the meter never had, from the import for a change.
    """

    unit_amount: Decimal | None = None
    dimension: str = ""
    rates: tuple[tuple[str, Decimal], ...] = ()
    effective_from: datetime | None = None

    def by_value(self) -> dict[str, Decimal]:
        """Each rate by dimension value, the default under ""."""
        default = {"": self.unit_amount} if self.unit_amount is not None else {}
        return default | dict(self.rates)


@dataclass(frozen=True)
class MeterEntry:
    key: str
    name: str
    unit: str
    aggregation: str = Aggregation.SUM
    unique_property: str = ""
    cost: ServingCostEntry | None = None  # None: the file says nothing of the meter's cost
    display_mode: str = DisplayMode.UNITS  # how customers see it (``plans.display``)
    display_unit: str = ""  # with a product unit: its plural name
    display_divisor: Decimal = Decimal(1)  # with a product unit: recorded units per product unit


@dataclass(frozen=True)
class EntitlementEntry:
    """A feature switch, or with `limit` a per-period cap on the meter whose key is `feature`."""

    feature: str
    enabled: bool = True
    limit: Decimal | None = None  # meter units per period; None = no cap
    rate_limit_per_minute: int | None = None  # requests of the meter a minute; None = no rate limit
    rate_limit_per: str = RateLimitScope.CUSTOMER  # counted per customer, or per member ("user")


@dataclass(frozen=True)
class CreditPackEntry:
    price: Decimal  # in major units of the plan currency
    credits: Decimal


@dataclass(frozen=True)
class VersionContent:
    """A plan version's pricing content: what `content_hash` covers and what makes a new version.

    Collections are sorted (prices by meter, entitlements by feature, packs by price) so that equal content
    compares and hashes equal whatever order a file lists it in. Tiers keep their order: it is their meaning.
    """

    currency: str  # lower case
    interval: str  # a BillingInterval value
    base_fee: Decimal  # per period, major units of `currency`
    prices: tuple[PriceSpec, ...]
    entitlements: tuple[EntitlementEntry, ...] = ()
    credit_packs: tuple[CreditPackEntry, ...] = ()
    overage: str = "allowed"  # an OveragePolicy value


@dataclass(frozen=True)
class MigrationEntry:
    """What a new version does to the subscribers of older ones: a `ChangeEffect` value, and for
    `migrated_at_renewal` the day (UTC midnight) from which they move at renewal."""

    effect: str
    migrate_at: datetime | None = None


@dataclass(frozen=True)
class PlanEntry:
    code: str
    name: str
    version: VersionContent
    # None means "not in the file": a new plan gets the model default, an existing one keeps its value.
    description: str | None = None
    display_order: int | None = None
    is_public: bool | None = None
    changelog: str | None = None  # the changelog summary if this import publishes a new version
    migration: MigrationEntry | None = None  # the effect if this import publishes a new version


@dataclass(frozen=True)
class Catalog:
    meters: tuple[MeterEntry, ...]
    plans: tuple[PlanEntry, ...]


# --- The database side ---


def version_content(plan_version: PlanVersion) -> VersionContent:
    """The pricing content of a stored version, in the file's terms."""
    spec = version_spec(plan_version)
    return VersionContent(
        currency=plan_version.currency.lower(),
        interval=plan_version.interval,
        base_fee=plan_version.base_fee,
        overage=plan_version.overage_policy,
        prices=tuple(sorted(spec.prices, key=lambda p: p.meter)),
        entitlements=tuple(
            EntitlementEntry(
                feature=e.feature,
                enabled=e.enabled,
                limit=e.limit,
                rate_limit_per_minute=e.rate_limit_per_minute,
                rate_limit_per=e.rate_limit_per,
            )
            for e in plan_version.entitlements.order_by("feature")
        ),
        credit_packs=tuple(
            sorted(
                (CreditPackEntry(price=p.amount, credits=p.credits) for p in plan_version.credit_packs.all()),
                key=lambda p: (p.price, p.credits),
            )
        ),
    )


def catalog_current() -> Catalog:
    """Every meter, and every plan at its latest published version (plans never published are left out)."""
    plans = []
    for plan in Plan.objects.order_by("display_order", "code"):
        latest = plan_latest_published_version(plan)
        if latest is None:
            continue
        plans.append(
            PlanEntry(
                code=plan.code,
                name=plan.name,
                version=version_content(latest),
                description=plan.description,
                display_order=plan.display_order,
                is_public=plan.is_public,
            )
        )
    meters = tuple(
        MeterEntry(
            key=m.key,
            name=m.name,
            unit=m.unit,
            aggregation=m.aggregation,
            unique_property=m.unique_property,
            cost=serving_cost_entry(m),
            display_mode=m.display_mode,
            display_unit=m.display_unit,
            display_divisor=m.display_divisor.normalize(),
        )
        for m in Meter.objects.order_by("key")
    )
    return Catalog(meters=meters, plans=tuple(plans))


# When a rate given without a date starts, for a meter (or value) that had none
# (``plans.services.meter_serving_cost_import``): usage already recorded kept the cost it was recorded with, so
# this only prices late events, which should cost what the rate says.
SERVING_COST_SINCE_ALWAYS = datetime(1970, 1, 1, tzinfo=UTC)


def serving_cost_entry(meter: Meter) -> ServingCostEntry | None:
    """The meter's latest rate of each value, dated from the latest of them: importing it changes nothing."""
    latest: dict[str, MeterServingCost] = {}
    for row in MeterServingCost.objects.filter(meter=meter).order_by("effective_from"):
        latest[row.dimension_value] = row
    if not latest:
        return None
    starts = max(row.effective_from for row in latest.values())
    default = latest.pop("", None)
    return ServingCostEntry(
        unit_amount=default.unit_amount if default is not None else None,
        dimension=meter.serving_cost_dimension,
        rates=tuple(sorted((value, row.unit_amount) for value, row in latest.items())),
        effective_from=None if starts == SERVING_COST_SINCE_ALWAYS else starts,
    )
