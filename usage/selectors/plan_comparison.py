"""Your bill on each plan: this period's usage rated under every published plan in the customer's currency.

Each plan's bill comes from ``plans.pricing.rate_period``, the engine that rates a period's lines, fed with
the period's billable quantities per meter (cache hits are never billed) and, for the projection, the
quantities the page projects. A plan that would have refused part of the usage (a cap below it, a price
with no rate for a model used, a meter used that it does not price) is listed as not covering it and is never the cheapest. Credit-priced lines
count at the plan's credit-pack rate; a plan pricing in credits with no pack to buy them is left out: what
it costs depends on credits bought, not on usage.

The rating from rollups (dimension mixes included) is ``usage.selectors.rating``'s, shared with the
migration backtest.
"""

from dataclasses import dataclass
from decimal import Decimal

from core.money import format_money
from customers.models import Customer, Subscription
from plans.models import OveragePolicy, PlanVersion, VersionStatus
from plans.selectors import version_spec
from usage.selectors.meter_lines import QUOTA_WARN_PERCENT, MeterLine
from usage.selectors.periods import BillingPeriod
from usage.selectors.rating import period_dimension_mix, usage_bill
from usage.selectors.summary import UsageSummary
from usage.selectors.units import ZERO


@dataclass(frozen=True)
class PlanBill:
    code: str
    name: str
    version: PlanVersion
    base_fee: Decimal
    total: Decimal  # this period's usage on this plan: base fee + usage charges, in the currency
    projected_total: Decimal  # the same for the usage projected to the period's end
    difference: Decimal  # projected_total minus the current plan's projected total
    covers: bool  # False when the plan would have refused part of the period's usage
    current: bool
    currency: str
    prepaid: bool = False  # overage blocked: usage past what was bought is refused

    @property
    def base_fee_display(self) -> str:
        return format_money(self.base_fee, self.currency)

    @property
    def total_display(self) -> str:
        return format_money(self.total, self.currency)

    @property
    def projected_total_display(self) -> str:
        return format_money(self.projected_total, self.currency)

    @property
    def difference_display(self) -> str:
        sign = "+" if self.difference > 0 else ""
        return sign + format_money(self.difference, self.currency)


@dataclass(frozen=True)
class PlanComparison:
    period: BillingPeriod
    currency: str
    current_total: Decimal  # the bill so far on the plan in force (from the summary: what is charged)
    current_projected_total: Decimal
    plans: tuple[PlanBill, ...]  # cheapest projected bill first

    @property
    def cheapest(self) -> PlanBill | None:
        """The plan that would have cost least for this period's projected usage, among those covering it.

        A prepaid plan (overage blocked) is never named: what it costs is the packs bought ($250 for 50,000
        credits), not the usage rated, and without them it would refuse the usage."""
        return next((bill for bill in self.plans if bill.covers and not bill.prepaid), None)


def plan_comparison(*, customer: Customer, summary: UsageSummary) -> PlanComparison:
    """Rate ``summary``'s period under each public plan's latest published version in the customer's currency
    and interval (and under the version the customer is on)."""
    period = summary.period
    mix = period_dimension_mix(customer=customer, period_start=period.start)
    used = {line.key: line.quantity for line in summary.meters}
    projected = {line.key: max(line.projected_quantity, line.quantity) for line in summary.meters}
    # A meter stopped at its cap used what the cap allowed, not what the customer wanted: a plan covers it
    # only with a higher cap, or none.
    at_cap = {
        line.key: line.cap for line in summary.meters if line.cap is not None and line.quantity >= line.cap
    }
    current_version_id = (
        Subscription.objects.filter(customer=customer).values_list("plan_version_id", flat=True).first()
    )
    bills = []
    current_total = summary.base_fee + summary.spend.spend
    for version in _candidate_versions(summary.currency, current_version_id):
        spec = version_spec(version)
        credit_rate = version.credit_unit_amount
        total: Decimal | None
        projected_total: Decimal | None
        if version.pk == current_version_id:
            # The plan in force shows what it charges (the page's own figures), not a re-rating of it.
            total, projected_total = current_total, summary.projection.total
        else:
            total = usage_bill(spec, used, mix, credit_rate)
            projected_total = usage_bill(spec, projected, mix, credit_rate)
        if total is None or projected_total is None:
            continue
        priced = {price.meter for price in spec.prices}
        bills.append(
            PlanBill(
                code=version.plan.code,
                name=version.plan.name,
                version=version,
                base_fee=version.base_fee,
                total=total,
                projected_total=projected_total,
                difference=projected_total - summary.projection.total,
                covers=_covers(version, projected, at_cap)
                and all(key in priced for key, quantity in used.items() if quantity > 0),
                current=version.pk == current_version_id,
                currency=summary.currency,
                prepaid=version.overage_policy == OveragePolicy.BLOCKED,
            )
        )
    bills.sort(key=lambda bill: (not bill.covers, bill.projected_total, bill.base_fee, bill.code))
    return PlanComparison(
        period=period,
        currency=summary.currency,
        current_total=current_total,
        current_projected_total=summary.projection.total,
        plans=tuple(bills),
    )


def _candidate_versions(currency: str, current_version_id: int | None) -> list[PlanVersion]:
    latest: dict[int, PlanVersion] = {}
    published = (
        PlanVersion.objects.filter(
            status=VersionStatus.PUBLISHED, plan__is_public=True, currency__iexact=currency
        )
        .select_related("plan")
        .prefetch_related("credit_packs", "entitlements")
        .order_by("plan_id", "-number")
    )
    for version in published:
        latest.setdefault(version.plan_id, version)
    versions = list(latest.values())
    if current_version_id is not None and all(v.pk != current_version_id for v in versions):
        current = (
            PlanVersion.objects.select_related("plan")
            .prefetch_related("credit_packs", "entitlements")
            .filter(pk=current_version_id)
            .first()
        )
        if current is not None:
            versions.append(current)
    return versions


def _covers(version: PlanVersion, quantities: dict[str, Decimal], at_cap: dict[str, Decimal]) -> bool:
    """Whether the version's caps would have let all of this usage through, and more where a cap stopped it."""
    for entitlement in version.entitlements.all():
        limit, feature = entitlement.limit, entitlement.feature
        if limit is None:
            continue
        if quantities.get(feature, ZERO) > limit or (feature in at_cap and limit <= at_cap[feature]):
            return False
    return True


@dataclass(frozen=True)
class UpgradePrompt:
    """A capped meter at 80% of its cap or more, and the cheapest plan that would allow more of it."""

    line: MeterLine
    plan: PlanBill | None  # None when no published plan would
    currency: str

    @property
    def reached(self) -> bool:
        return self.line.cap is not None and self.line.quantity >= self.line.cap

    @property
    def plan_total_display(self) -> str:
        return format_money(self.plan.projected_total, self.currency) if self.plan else ""


def upgrade_prompt(*, summary: UsageSummary, comparison: PlanComparison) -> UpgradePrompt | None:
    """The prompt for the capped meter nearest its cap, when one is at 80% or more of it this period."""
    if not summary.period.is_current:
        return None
    near = [
        line
        for line in summary.meters
        if line.cap is not None and line.cap > 0 and line.quantity * 100 >= line.cap * QUOTA_WARN_PERCENT
    ]
    if not near:
        return None
    line = max(near, key=lambda line: line.quantity / (line.cap or 1))
    cheapest = comparison.cheapest
    return UpgradePrompt(
        line=line, plan=cheapest if cheapest and not cheapest.current else None, currency=summary.currency
    )
