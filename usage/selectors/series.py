"""Usage per meter and day, from the daily rollups: the projection's input and the page's chart."""

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.db.models import Sum
from django.utils import timezone

from customers.models import Customer
from customers.selectors import customer_subscription_terms
from plans.display import DisplayUnit
from plans.models import Meter
from usage.models import DailyUsageRollup
from usage.selectors.formatting import format_quantity, unit_label
from usage.selectors.periods import BillingPeriod, PeriodStart, usage_period_resolve
from usage.selectors.units import ZERO

# The chart shows the whole period when it is about a month, else the last CHART_MAX_DAYS days.
CHART_MAX_DAYS = 31


@dataclass(frozen=True)
class DayTotals:
    """One meter's day, from the rollups (see ``usage.batch_writes.rollups_add``)."""

    quantity: Decimal  # every unit recorded, cache hits included
    beyond_included: Decimal  # units past the included allowance: the priced ones
    cost: Decimal  # in the price's unit


NO_USAGE = DayTotals(quantity=ZERO, beyond_included=ZERO, cost=ZERO)


def daily_by_meter(
    *, customer: Customer, period: BillingPeriod, since: date | None = None
) -> dict[int, dict[date, DayTotals]]:
    rollups = DailyUsageRollup.objects.filter(customer=customer, period_start=period.start)
    if since is not None:
        rollups = rollups.filter(day__gte=since)
    rows = rollups.values("meter_id", "day").annotate(
        quantity=Sum("quantity"), beyond=Sum("billable_quantity"), cost=Sum("cost")
    )
    daily: dict[int, dict[date, DayTotals]] = defaultdict(dict)
    for row in rows:
        daily[row["meter_id"]][row["day"]] = DayTotals(
            quantity=row["quantity"] or ZERO, beyond_included=row["beyond"] or ZERO, cost=row["cost"] or ZERO
        )
    return daily


@dataclass(frozen=True)
class DailyPoint:
    day: date
    quantity: Decimal  # units recorded that day, cache hits included
    beyond_included: Decimal  # of quantity, units past the included allowance (the priced ones)
    cost: Decimal  # in the meter's cost unit
    cumulative: Decimal  # units recorded from the period start to the end of the day
    money: Decimal  # ``cost`` in the plan currency (credits at the credit-pack rate)
    cumulative_money: Decimal  # ``money`` from the period start to the end of the day

    @property
    def quantity_display(self) -> str:
        return format_quantity(self.quantity)

    @property
    def beyond_included_display(self) -> str:
        return format_quantity(self.beyond_included)

    @property
    def cumulative_display(self) -> str:
        return format_quantity(self.cumulative)


@dataclass(frozen=True)
class MeterSeries:
    key: str
    name: str
    unit: str
    cost_unit: str
    included: Decimal  # per period; 0 = none
    points: tuple[DailyPoint, ...]
    currency: str  # the plan's, what ``DailyPoint.money`` is in
    display: DisplayUnit  # how customers see the meter: the chart draws it so

    @property
    def unit_plural(self) -> str:
        return unit_label(self.unit)


@dataclass(frozen=True)
class DailySeries:
    period: BillingPeriod
    first_day: date
    last_day: date
    meters: tuple[MeterSeries, ...]


def usage_daily_series(
    *, customer: Customer, period_start: PeriodStart = None, now: datetime | None = None
) -> DailySeries:
    """Billable units per day and meter: the whole period when it is about a month, else the last
    ``CHART_MAX_DAYS`` days; the current period stops at today. Days without usage are zeros.
    """
    now = now or timezone.now()
    period = usage_period_resolve(customer=customer, period_start=period_start)
    last_day = min(period.last_day, now.date()) if period.is_current else period.last_day
    first_day = max(period.start.date(), last_day - timedelta(days=CHART_MAX_DAYS - 1))
    first_day = min(first_day, last_day)

    subscription, terms = customer_subscription_terms(customer)
    daily = daily_by_meter(customer=customer, period=period)
    used_meters = Meter.objects.filter(pk__in=list(daily))
    days = [first_day + timedelta(days=n) for n in range((last_day - first_day).days + 1)]

    series = []
    for meter in terms.meters_with(extra=used_meters):
        by_day = daily.get(meter.pk, {})
        # Cumulative from the period start, so days before a long period's window still count.
        cost_unit = terms.cost_unit(meter.pk)
        before = [totals for day, totals in by_day.items() if day < first_day]
        running = sum((totals.quantity for totals in before), ZERO)
        running_money = terms.to_money(sum((totals.cost for totals in before), ZERO), cost_unit)
        points = []
        for day in days:
            totals = by_day.get(day, NO_USAGE)
            running += totals.quantity
            money = terms.to_money(totals.cost, cost_unit)
            running_money += money
            points.append(
                DailyPoint(
                    day=day,
                    quantity=totals.quantity,
                    beyond_included=totals.beyond_included,
                    cost=totals.cost,
                    cumulative=running,
                    money=money,
                    cumulative_money=running_money,
                )
            )
        series.append(
            MeterSeries(
                key=meter.key,
                name=meter.name,
                unit=meter.unit,
                cost_unit=cost_unit,
                currency=terms.currency,
                display=DisplayUnit.of(meter),
                included=(
                    subscription.period_allowance(
                        meter_id=meter.pk, plan_included=terms.included(meter.pk), period_start=period.start
                    )
                    if subscription is not None
                    else terms.included(meter.pk)
                ),
                points=tuple(points),
            )
        )
    return DailySeries(period=period, first_day=first_day, last_day=last_day, meters=tuple(series))
