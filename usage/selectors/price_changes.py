"""Reads that help an operator change prices: an included quota from real usage, and each subscriber's bill
re-rated under a new version before it is published.

Both read ``PeriodUsage`` (and the daily rollups for dimension mixes), never events, so a plan with a thousand
subscribers is previewed in a handful of queries.
"""

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from django.db.models import Max
from django.utils import timezone

from core.money import format_money
from customers.models import Customer, Subscription, SubscriptionStatus
from plans.models import Meter, PlanVersion
from plans.selectors import version_spec
from usage.models import MigrationChoice, PeriodUsage, PlanMigrationNotice
from usage.selectors.rating import period_dimension_mixes, usage_bill
from usage.selectors.units import ZERO

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class UsagePercentiles:
    """Per-customer period usage of a meter: each customer counts once, by its largest period in the window."""

    meter: str
    days: int
    customers: int
    values: dict[int, Decimal]  # percentile -> units (nearest rank: a period some customer really had)
    covered: dict[int, int]  # percentile -> customers whose largest period it covers


def usage_percentiles(*, meter: Meter, days: int = 90, now: datetime | None = None) -> UsagePercentiles:
    """p50/p90/p95/p99 of the customers' period usage over the last ``days`` (periods that overlap them)."""
    now = now or timezone.now()
    largest = sorted(
        row["largest"]
        for row in PeriodUsage.objects.filter(meter=meter, period_end__gt=now - timedelta(days=days))
        .values("customer_id")
        .annotate(largest=Max("quantity"))
    )
    count = len(largest)
    values: dict[int, Decimal] = {}
    covered: dict[int, int] = {}
    for percentile in PERCENTILES:
        if not count:
            values[percentile], covered[percentile] = ZERO, 0
            continue
        value = largest[max(math.ceil(percentile * count / 100) - 1, 0)]
        values[percentile] = value
        covered[percentile] = sum(1 for units in largest if units <= value)
    return UsagePercentiles(meter=meter.key, days=days, customers=count, values=values, covered=covered)


@dataclass(frozen=True)
class CustomerBacktest:
    customer: str  # external id
    name: str
    periods: int  # closed periods re-rated (at most the preview's)
    old_total: Decimal
    new_total: Decimal
    usage: dict[str, Decimal] = field(default_factory=dict)  # units per meter key over those periods

    @property
    def difference(self) -> Decimal:
        return self.new_total - self.old_total


@dataclass(frozen=True)
class MigrationPreview:
    version: PlanVersion
    periods: int
    customers: tuple[CustomerBacktest, ...]  # largest increase first
    unpriced: tuple[str, ...]  # customers whose usage the new version cannot price (a model with no rate)

    @property
    def paying_more(self) -> int:
        return sum(1 for c in self.customers if c.difference > 0)

    @property
    def paying_less(self) -> int:
        return sum(1 for c in self.customers if c.difference < 0)

    @property
    def revenue_difference(self) -> Decimal:
        return sum((c.difference for c in self.customers), ZERO)

    @property
    def largest_increases(self) -> tuple[CustomerBacktest, ...]:
        return tuple(c for c in self.customers if c.difference > 0)[:5]


def migration_preview(
    *, version: PlanVersion, periods: int = 3, now: datetime | None = None
) -> MigrationPreview:
    """Each subscriber of ``version``'s plan on another version: its last ``periods`` closed periods re-rated
    under the version it is on and under ``version``, base fees included, by the same rating engine."""
    now = now or timezone.now()
    subscriptions = list(
        Subscription.objects.filter(plan_version__plan_id=version.plan_id)
        .exclude(plan_version=version)
        .exclude(status=SubscriptionStatus.CANCELED)
        .select_related("customer", "plan_version")
    )
    customer_ids = [s.customer_id for s in subscriptions]
    usage: dict[int, dict[datetime, dict[str, Decimal]]] = defaultdict(lambda: defaultdict(dict))
    for row in PeriodUsage.objects.filter(customer_id__in=customer_ids, period_end__lte=now).values(
        "customer_id", "period_start", "meter__key", "quantity"
    ):
        usage[row["customer_id"]][row["period_start"]][row["meter__key"]] = row["quantity"]
    latest = {
        customer_id: sorted(by_period, reverse=True)[:periods] for customer_id, by_period in usage.items()
    }
    mixes = period_dimension_mixes(
        customer_ids=customer_ids, period_starts={start for starts in latest.values() for start in starts}
    )
    specs = {v.pk: (version_spec(v), v.credit_unit_amount) for v in {s.plan_version for s in subscriptions}}
    new_spec, new_rate = version_spec(version), version.credit_unit_amount
    results, unpriced = [], []
    for subscription in subscriptions:
        old_spec, old_rate = specs[subscription.plan_version_id]
        old_total = new_total = ZERO
        starts = latest.get(subscription.customer_id, [])
        priced = True
        used: dict[str, Decimal] = defaultdict(Decimal)
        for start in starts:
            quantities = usage[subscription.customer_id][start]
            for meter_key, units in quantities.items():
                used[meter_key] += units
            mix = mixes.get((subscription.customer_id, start), {})
            old = usage_bill(old_spec, quantities, mix, old_rate)
            new = usage_bill(new_spec, quantities, mix, new_rate)
            if old is None or new is None:
                priced = False
                break
            old_total, new_total = old_total + old, new_total + new
        if not priced:
            unpriced.append(subscription.customer.external_id)
            continue
        results.append(
            CustomerBacktest(
                customer=subscription.customer.external_id,
                name=subscription.customer.name,
                periods=len(starts),
                old_total=old_total,
                new_total=new_total,
                usage=dict(sorted(used.items())),
            )
        )
    results.sort(key=lambda c: (-c.difference, c.customer))
    return MigrationPreview(
        version=version, periods=periods, customers=tuple(results), unpriced=tuple(unpriced)
    )


@dataclass(frozen=True)
class PriceChangeNotice:
    """A price change as a customer's admins see it: the change, their usage, their bill on both versions."""

    notice: PlanMigrationNotice
    plan: str
    from_number: int
    to_number: int
    changes: tuple[str, ...]  # the changelog entry's lines
    usage: tuple[tuple[str, str], ...]  # (meter key, units written out) over the periods re-rated
    old_total: str  # formatted in the plan currency; "" when there were no closed periods
    new_total: str
    open: bool  # the customer may still choose

    @property
    def choice(self) -> str:
        return str(self.notice.choice)


def price_change_notices(*, customer: Customer, now: datetime | None = None) -> list[PriceChangeNotice]:
    """The customer's price changes still ahead (not yet moved), newest first: those to choose, and those
    chosen, so the plan page can say what was chosen until the change has passed."""
    now = now or timezone.now()
    notices = (
        PlanMigrationNotice.objects.filter(customer=customer, skipped_reason="", migrated_at__isnull=True)
        .exclude(choice=MigrationChoice.KEEP, choose_by__lte=now)  # kept for good: nothing more to say
        .select_related("migration__plan_version__plan", "migration__plan_version__changelog_entry")
        .select_related("from_version")
        .order_by("-created_at")
    )
    found = []
    for notice in notices:
        target = notice.migration.plan_version
        entry = getattr(target, "changelog_entry", None)
        old_total = new_total = ""
        if notice.periods and notice.old_total is not None and notice.new_total is not None:
            old_total = format_money(notice.old_total, target.currency)
            new_total = format_money(notice.new_total, target.currency)
        found.append(
            PriceChangeNotice(
                notice=notice,
                plan=target.plan.name,
                from_number=notice.from_version.number,
                to_number=target.number,
                changes=tuple(line for line in (entry.summary.splitlines() if entry else []) if line.strip()),
                usage=tuple(
                    (meter, f"{Decimal(units).normalize():,f}") for meter, units in notice.usage.items()
                ),
                old_total=old_total,
                new_total=new_total,
                open=notice.choice == MigrationChoice.PENDING and now < notice.choose_by,
            )
        )
    return found
