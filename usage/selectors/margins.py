"""The margin report: revenue (rated usage charges), serving cost and margin of a period, from the daily rollups.

Only ``DailyUsageRollup`` is read, never the events: a rollup holds the day's rated charges (``cost``, in the
price's unit) and what serving its events cost us (``serving_cost``, in ``OPERATOR_CURRENCY``).

- Revenue is the usage charges rated, whatever paid for them (allowance aside: included usage is rated at 0),
  in the customer's plan currency; credits become money at the current plan's credit-pack rate
  (``PlanTerms.to_money``), as the usage page shows them. For the current billing period it also holds each
  customer's base fee for the period (``Subscription.period_base_fee``): the fee pays for the included
  allowance, whose serving cost is in the cost, so leaving it out would show a customer using their allowance
  as unprofitable. Grouped by meter or model, the base fees are a row of their own (``base_fee``): they belong
  to no meter. A calendar month holds usage charges only: the base fee of a past period is not kept locally.
  Top-ups are money paid in, not revenue earned.
- Cost is the serving cost of every event, cache hits included.
- Margin is revenue − cost, and only where the plan currency is the operator's: amounts in two currencies are
  never subtracted. Rows are per (group, plan currency), so a euro customer's revenue stays in euros with
  ``margin`` null beside it. ``margin_percent`` is margin ÷ revenue × 100 (null without revenue).

Amounts are exact (the ledger's 12 places); they are rounded to the currency's minor unit only to be shown.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import F, Sum

from core.errors import InvalidInput
from customers.models import Customer, Subscription, SubscriptionStatus
from plans.models import Meter
from plans.terms import PlanTerms, plan_terms_cached
from usage.models import DailyUsageRollup

ZERO = Decimal(0)
PERCENT_PLACES = Decimal("0.01")
CURRENT = "current"
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


class MarginGroup(models.TextChoices):
    CUSTOMER = "customer", "Customer"
    METER = "meter", "Meter"
    DIMENSION = "dimension", "Dimension value (model)"


class MarginSort(models.TextChoices):
    LABEL = "label", "Name"
    REVENUE = "revenue", "Revenue"
    COST = "cost", "Cost"
    MARGIN = "margin", "Margin"
    MARGIN_PERCENT = "margin_percent", "Margin %"


class InvalidPeriod(InvalidInput):
    code = "invalid_period"


class InvalidGroup(InvalidInput):
    code = "invalid_group_by"


@dataclass(frozen=True)
class ReportPeriod:
    """A calendar month (UTC days), or each customer's current billing period (``start``/``end`` None)."""

    label: str  # "2025-03" or "current"
    start: date | None = None
    end: date | None = None  # exclusive

    @property
    def is_current(self) -> bool:
        return self.start is None


def report_period_parse(raw: str | None) -> ReportPeriod:
    """``YYYY-MM`` (a calendar month), or ``current`` / nothing: each customer's current billing period."""
    if raw is None or raw == CURRENT:
        return ReportPeriod(label=CURRENT)
    found = _MONTH.match(raw)
    if found is None or not 1 <= int(found.group(2)) <= 12 or int(found.group(1)) < 1970:
        raise InvalidPeriod(
            f"period is a month as YYYY-MM (e.g. 2025-03) or 'current', not {raw[:40]!r}.", param="period"
        )
    year, month = int(found.group(1)), int(found.group(2))
    start = date(year, month, 1)
    end = date(year + 1, 1, 1) if month == 12 else date(year, month + 1, 1)
    return ReportPeriod(label=f"{year:04d}-{month:02d}", start=start, end=end)


def margin_group_parse(raw: str | None) -> MarginGroup:
    if raw is None:
        return MarginGroup.CUSTOMER
    if raw not in MarginGroup.values:
        raise InvalidGroup(
            f"group_by is one of {', '.join(MarginGroup.values)}, not {raw[:40]!r}.", param="group_by"
        )
    return MarginGroup(raw)


@dataclass
class MarginRow:
    key: str
    label: str
    currency: str  # of the revenue (the plan currency)
    revenue: Decimal = ZERO
    cost: Decimal = ZERO  # in the operator's currency

    @property
    def comparable(self) -> bool:
        return self.currency == settings.OPERATOR_CURRENCY

    @property
    def margin(self) -> Decimal | None:
        return self.revenue - self.cost if self.comparable else None

    @property
    def margin_percent(self) -> Decimal | None:
        margin = self.margin
        if margin is None or self.revenue <= 0:
            return None
        return (margin * 100 / self.revenue).quantize(PERCENT_PLACES)


@dataclass(frozen=True)
class MarginReport:
    period: ReportPeriod
    group_by: MarginGroup
    cost_currency: str
    rows: list[MarginRow]
    totals: list[MarginRow]  # one per revenue currency, key = the currency


def margin_report(
    *,
    period: ReportPeriod,
    group_by: MarginGroup,
    sort: str = MarginSort.MARGIN,
    customer_ids: Iterable[int] | None = None,
) -> MarginReport:
    """The report of ``period`` grouped by ``group_by``, sorted by ``sort`` ("-" first: descending; by margin,
    least profitable first, by default). ``customer_ids`` limits it to some customers."""
    sums = _rollup_sums(period=period, customer_ids=customer_ids)
    customers = Customer.objects.in_bulk({row["customer_id"] for row in sums})
    meters = Meter.objects.in_bulk({row["meter_id"] for row in sums})
    terms = _terms_by_customer(customers.values())
    rows: dict[tuple[str, str], MarginRow] = {}
    totals: dict[str, MarginRow] = {}
    for row in sums:
        customer, meter = customers[row["customer_id"]], meters[row["meter_id"]]
        customer_terms = terms[customer.pk]
        currency = customer_terms.currency
        key, label = _group_of(group_by, customer=customer, meter=meter, value=row["dimension_value"])
        revenue = customer_terms.to_money(row["revenue"], customer_terms.cost_unit(meter.pk))
        for target in (
            rows.setdefault((key, currency), MarginRow(key=key, label=label, currency=currency)),
            totals.setdefault(currency, MarginRow(key=currency, label="Total", currency=currency)),
        ):
            target.revenue += revenue
            target.cost += row["cost"]
    if period.is_current:
        _add_base_fees(rows, totals, group_by=group_by, customer_ids=customer_ids)
    return MarginReport(
        period=period,
        group_by=group_by,
        cost_currency=settings.OPERATOR_CURRENCY,
        rows=margin_rows_sorted(rows.values(), sort),
        totals=sorted(totals.values(), key=lambda total: total.currency),
    )


BASE_FEE_KEY = "base_fee"


def _add_base_fees(
    rows: dict[tuple[str, str], MarginRow],
    totals: dict[str, MarginRow],
    *,
    group_by: MarginGroup,
    customer_ids: Iterable[int] | None,
) -> None:
    """Add each live subscription's base fee for its current period to its customer's row (or, grouped by
    meter or model, to a ``base_fee`` row) and to the totals."""
    subscriptions = Subscription.objects.exclude(status=SubscriptionStatus.CANCELED).select_related(
        "customer", "plan_version"
    )
    if customer_ids is not None:
        subscriptions = subscriptions.filter(customer_id__in=list(customer_ids))
    for subscription in subscriptions:
        fee = subscription.period_base_fee(subscription.plan_version.base_fee)
        if fee <= 0:
            continue
        currency = subscription.plan_version.currency
        customer = subscription.customer
        if group_by == MarginGroup.CUSTOMER:
            key, label = customer.external_id, customer.name
        else:
            key, label = BASE_FEE_KEY, "Base fees"
        for target in (
            rows.setdefault((key, currency), MarginRow(key=key, label=label, currency=currency)),
            totals.setdefault(currency, MarginRow(key=currency, label="Total", currency=currency)),
        ):
            target.revenue += fee


def margin_rows_sorted(rows: Iterable[MarginRow], sort: str) -> list[MarginRow]:
    """Rows by ``sort`` (a ``MarginSort``, "-" first for descending); a row without the value sorts last."""
    descending = sort.startswith("-")
    field = MarginSort(sort.removeprefix("-"))
    ordered = sorted(rows, key=lambda row: (row.label, row.currency))
    if field == MarginSort.LABEL:
        return list(reversed(ordered)) if descending else ordered
    present = [row for row in ordered if getattr(row, field) is not None]
    missing = [row for row in ordered if getattr(row, field) is None]
    return sorted(present, key=lambda row: getattr(row, field), reverse=descending) + missing


def margin_sort_parse(raw: str | None) -> str:
    if raw is None:
        return MarginSort.MARGIN
    if raw.removeprefix("-") not in MarginSort.values:
        names = ", ".join(MarginSort.values)
        raise InvalidInput(
            f"sort is one of {names}, '-' first for descending; not {raw[:40]!r}.", param="sort"
        )
    return raw


def _rollup_sums(*, period: ReportPeriod, customer_ids: Iterable[int] | None) -> list[dict[str, Any]]:
    """Revenue (in the price's unit) and serving cost per (customer, meter, dimension value) of the period."""
    rollups = DailyUsageRollup.objects.all()
    if period.is_current:
        # Each customer's current billing period: its rollups carry the period they count in.
        rollups = rollups.filter(period_start=F("customer__subscription__current_period_start"))
    else:
        rollups = rollups.filter(day__gte=period.start, day__lt=period.end)
    if customer_ids is not None:
        rollups = rollups.filter(customer_id__in=list(customer_ids))
    return list(
        rollups.values("customer_id", "meter_id", "dimension_value")
        .annotate(revenue=Sum("cost"), cost=Sum("serving_cost"))
        .order_by()
    )


def _terms_by_customer(customers: Iterable[Customer]) -> dict[int, PlanTerms]:
    customers = list(customers)
    versions = dict(
        Subscription.objects.filter(customer__in=customers).values_list("customer_id", "plan_version_id")
    )
    return {
        customer.pk: (
            plan_terms_cached(versions[customer.pk])
            if customer.pk in versions
            else PlanTerms.without_plan(customer.currency)
        )
        for customer in customers
    }


def _group_of(group_by: MarginGroup, *, customer: Customer, meter: Meter, value: str) -> tuple[str, str]:
    if group_by == MarginGroup.CUSTOMER:
        return customer.external_id, customer.name
    if group_by == MarginGroup.METER:
        return meter.key, meter.name
    return f"{meter.key}:{value}", f"{meter.name}: {value or '(no dimension)'}"
