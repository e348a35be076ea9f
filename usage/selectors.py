"""Reads behind /settings/usage and ``GET /api/v1/customers/{id}/usage``.

Every number the page shows comes from here, and the API serializes the same ``UsageSummary``
(``usage_summary_as_dict``), so the page and the API cannot disagree.

Only ``PeriodUsage``, ``DailyUsageRollup``, the credit tables, reservations in flight and
notifications are read, never ``UsageEvent``: the cost of a read grows with days, members and
actions, not with the number of events in the period.

Units: quantities are in the meter's unit (tokens, actions, credits); costs are in the price's
unit (the plan currency, or credits for a credit-priced meter); "spend" is money in the plan
currency, credits converted at the plan's credit-pack rate, exactly as ``usage.balances`` does
when it checks the limits.
"""

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from enum import Enum
from functools import cached_property
from typing import Any

from django.db import models
from django.db.models import Q, Sum
from django.utils import timezone

from customers.models import Customer, Member, Notification, SpendControls, Subscription
from plans.errors import InvalidInput, NotFound
from plans.models import Entitlement, Meter, PlanVersion, Price, PricingUnit
from plans.money import CREDITS, format_money
from plans.pricing import PriceModel, PriceSpec, marginal_cost, split_included
from plans.selectors import price_spec, prices_with_rates
from usage.models import (
    CreditGrant,
    CreditLedgerEntry,
    CustomerBalance,
    DailyUsageRollup,
    LedgerEntryKind,
    PeriodUsage,
    Reservation,
    ReservationStatus,
)

ZERO = Decimal(0)
ONE_DAY = timedelta(days=1)
SECONDS_PER_DAY = Decimal(86400)
QUANTITY_PLACES = Decimal("0.000001")  # the ledger's quantity precision
LEDGER_PLACES = Decimal("0.000000000001")  # the ledger's amount precision

# The projection: the daily rate is a weighted mean of the last PROJECTION_WINDOW_DAYS whole days,
# yesterday weighing 1 and each earlier day PROJECTION_DECAY times the day after it, so a change in
# habits shows within days while one odd day does not swing the forecast.
PROJECTION_WINDOW_DAYS = 7
PROJECTION_DECAY = Decimal("0.7")
# Before the first whole day, usage so far is spread over at least this much of a day, so an hour
# of usage is not extrapolated as if it were the whole day's.
PROJECTION_MIN_ELAPSED_DAYS = Decimal("0.25")
# The included-quota bar turns amber here (percent of the allowance), red at 100.
QUOTA_WARN_PERCENT = 80
# The chart shows the whole period when it is about a month, else the last CHART_MAX_DAYS days.
CHART_MAX_DAYS = 31
# How far ahead a prepaid balance's run-out date is looked for.
RUNWAY_HORIZON_DAYS = 730
# Top-ups are looked for among this many latest ledger rows, so finding them costs the same however
# many draw-downs a busy customer has.
TOP_UP_LOOKBACK_ROWS = 500


class UsageLevel(models.TextChoices):
    """How close something is to its limit; the page colours bars by it."""

    OK = "ok", "Within limits"
    WARN = "warn", "Near the limit"
    OVER = "over", "At or over the limit"


class NoBillingPeriod(NotFound):
    code = "no_billing_period"


class PeriodNotFound(NotFound):
    code = "period_not_found"


# --- Display helpers (the same text on the page and in the API's labels) ----------------------------


def format_quantity(value: Decimal) -> str:
    """Exact, with thousands separators and no trailing zeros: 1234567.500000 -> "1,234,567.5"."""
    if value == value.to_integral_value():
        return f"{value.quantize(Decimal(1)):,f}"
    return f"{value.quantize(QUANTITY_PLACES).normalize():,f}"


def format_quantity_short(value: Decimal) -> str:
    """Compact for big numbers: 1234567 -> "1.2M", 12500 -> "12.5K", 950 -> "950"."""
    magnitude = abs(value)
    for threshold, suffix in ((Decimal(10) ** 9, "B"), (Decimal(10) ** 6, "M"), (Decimal(10) ** 3, "K")):
        if magnitude >= threshold:
            scaled = (value / threshold).quantize(Decimal("0.1"), rounding=ROUND_FLOOR)
            return f"{scaled.normalize():f}{suffix}"
    return format_quantity(value.quantize(Decimal("0.01")) if value != value.to_integral_value() else value)


def unit_label(unit: str, quantity: Decimal | None = None) -> str:
    """The meter's unit, plural unless exactly one: "token" -> "tokens"; "GB-hours" stays."""
    if quantity is not None and quantity == 1:
        return unit
    if not unit or unit.endswith("s") or not unit[-1].isalpha():
        return unit
    return f"{unit}s"


def format_amount(amount: Decimal, unit: str) -> str:
    """Money with its symbol ("$12.30"), credits as a counted number ("1,250 credits")."""
    if unit == CREDITS:
        return f"{format_quantity(amount.quantize(Decimal('0.01')))} credits"
    return format_money(amount, unit)


# --- Periods ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BillingPeriod:
    start: datetime
    end: datetime  # exclusive
    is_current: bool

    @property
    def key(self) -> str:
        """What ``?period=`` takes: the start date."""
        return self.start.date().isoformat()

    @property
    def last_day(self) -> date:
        return (self.end - timedelta(microseconds=1)).date()

    @property
    def label(self) -> str:
        start, last = self.start.date(), self.last_day
        text = f"{start:%b} {start.day} – {last:%b} {last.day}, {last.year}"
        return f"{text} (current)" if self.is_current else text


def usage_periods(*, customer: Customer) -> tuple[BillingPeriod, ...]:
    """The current period and every earlier one with usage, newest first."""
    subscription = Subscription.objects.filter(customer=customer).first()
    periods: dict[datetime, BillingPeriod] = {}
    if subscription is not None:
        start, end = subscription.current_period_start, subscription.current_period_end
        periods[start] = BillingPeriod(start=start, end=end, is_current=True)
    rows = (
        PeriodUsage.objects.filter(customer=customer)
        .values_list("period_start", "period_end")
        .distinct()
        .order_by("-period_start")
    )
    for start, end in rows:
        periods.setdefault(start, BillingPeriod(start=start, end=end, is_current=False))
    return tuple(sorted(periods.values(), key=lambda period: period.start, reverse=True))


PeriodStart = date | datetime | str | BillingPeriod | None


def usage_period_resolve(*, customer: Customer, period_start: PeriodStart = None) -> BillingPeriod:
    """The period ``period_start`` names, the current one for None or "".

    ``period_start`` is a start date, the exact start, or a start date as text ("2025-03-14", as
    ``?period=`` gives it). Raises ``InvalidInput`` for text that is not a date, ``PeriodNotFound``
    for a date no period of this customer starts on.
    """
    if isinstance(period_start, BillingPeriod):
        return period_start  # resolved already, by a caller that resolved it for this customer
    if isinstance(period_start, str):
        period_start = _parse_period_key(period_start)
    periods = usage_periods(customer=customer)
    if not periods:
        raise NoBillingPeriod("This customer has no subscription and no usage yet.")
    if period_start is None:
        return periods[0]
    for period in periods:
        if isinstance(period_start, datetime):
            if period.start == period_start:
                return period
        elif period.start.date() == period_start:
            return period
    raise PeriodNotFound(f"No billing period of this customer starts on {period_start:%Y-%m-%d}.")


def _parse_period_key(text: str) -> date | None:
    if not text.strip():
        return None
    try:
        return date.fromisoformat(text.strip())
    except ValueError as error:
        raise InvalidInput(
            f"period must be a period's start date as YYYY-MM-DD, not {text[:40]!r}.", param="period"
        ) from error


# --- The period summary ----------------------------------------------------------------------------


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
    def overage_quantity(self) -> Decimal:
        return max(self.quantity - self.included, ZERO)

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


@dataclass(frozen=True)
class Runway:
    """How long a prepaid balance lasts at the projected rate."""

    source: str  # "credits": credit grants; "prepaid": the wallet and monetary grants
    unit: str  # "credits" or the currency
    remaining: Decimal
    daily_burn: Decimal  # in unit, at the projected rate
    runs_out_on: date | None  # None when it lasts past the horizon or nothing is using it

    @property
    def remaining_display(self) -> str:
        return format_amount(self.remaining, self.unit)

    @property
    def daily_burn_display(self) -> str:
        return format_amount(self.daily_burn, self.unit)


@dataclass(frozen=True)
class Projection:
    """Where the period is heading at the recent rate. Money in the plan currency."""

    total: Decimal  # base fee + usage_spend
    usage_spend: Decimal  # usage charges past the included allowance, whatever pays for them
    credits: Decimal  # credit-priced usage, in credits
    billed: Decimal  # base fee + overage not covered by credits or the wallet: the invoice
    # "hard_limit" or "block_overage" when the customer's own limits will refuse part of the
    # projected usage (the totals then stop there); "" otherwise.
    limited_by: str
    hard_limit_reached_on: date | None  # when billable usage would stop at this rate
    daily_rate_window_days: int  # how many whole days the rate was measured over (0: usage so far)
    method: str  # the explanation the page shows in a tooltip


@dataclass(frozen=True)
class SpendStatus:
    """This period's spend against the customer's own limits, as the API's checks see it."""

    spend: Decimal  # money, in the plan currency: usage charges so far
    held: Decimal  # money held by reservations in flight; the hard limit counts it too
    soft_limit: Decimal | None
    hard_limit: Decimal | None
    block_overage: bool
    level: UsageLevel

    @property
    def limit_for_bar(self) -> Decimal | None:
        return self.hard_limit if self.hard_limit is not None else self.soft_limit

    @property
    def bar_percent(self) -> int:
        limit = self.limit_for_bar
        if limit is None:
            return 0
        if limit <= 0:
            return 100
        return min(int((self.spend + self.held) * 100 / limit), 100)

    @property
    def soft_marker_percent(self) -> int | None:
        """Where the soft limit sits on a bar that runs to the hard limit."""
        if self.soft_limit is None or self.hard_limit is None or self.hard_limit <= 0:
            return None
        return min(int(self.soft_limit * 100 / self.hard_limit), 100)


@dataclass(frozen=True)
class UsageSummary:
    """Everything the page's numbers show for one period; the usage API returns it as is."""

    customer_id: str  # the customer's external id
    customer_name: str
    plan_name: str
    plan_version: int | None
    currency: str
    period: BillingPeriod
    as_of: datetime
    days_in_period: Decimal
    days_elapsed: Decimal
    days_remaining: Decimal
    meters: tuple[MeterLine, ...]
    base_fee: Decimal
    credit_unit_amount: Decimal | None  # money per credit (cheapest credit pack); None: no packs
    spend: SpendStatus
    projection: Projection
    wallet_balance: Decimal  # money
    credits_remaining: Decimal  # credit grants in credits, active now
    monetary_credits_remaining: Decimal  # credit grants in the currency, active now
    runways: tuple[Runway, ...]
    account_frozen: bool
    frozen_reason: str

    def money(self, amount: Decimal) -> str:
        return format_money(amount, self.currency)

    @property
    def spend_display(self) -> str:
        return self.money(self.spend.spend)

    @property
    def projected_total_display(self) -> str:
        return self.money(self.projection.total)

    @property
    def projected_usage_display(self) -> str:
        return self.money(self.projection.usage_spend)

    @property
    def projected_billed_display(self) -> str:
        return self.money(self.projection.billed)

    @property
    def base_fee_display(self) -> str:
        return self.money(self.base_fee)

    @property
    def soft_limit_display(self) -> str:
        return self.money(self.spend.soft_limit) if self.spend.soft_limit is not None else ""

    @property
    def hard_limit_display(self) -> str:
        return self.money(self.spend.hard_limit) if self.spend.hard_limit is not None else ""

    @property
    def held_display(self) -> str:
        return self.money(self.spend.held)

    @property
    def days_remaining_display(self) -> str:
        return format_quantity(self.days_remaining.quantize(Decimal("0.1")))

    @property
    def wallet_display(self) -> str:
        return self.money(self.wallet_balance)

    @property
    def credits_remaining_display(self) -> str:
        return format_amount(self.credits_remaining, CREDITS)

    @property
    def has_credit_pricing(self) -> bool:
        return any(line.cost_unit == CREDITS for line in self.meters)


def usage_period_summary(
    *, customer: Customer, period_start: PeriodStart = None, now: datetime | None = None
) -> UsageSummary:
    """The period's usage per meter, spend against limits, the projection and prepaid balances.

    ``period_start`` picks an earlier period (a start date, or the exact start); None is the current
    one. Raises ``NoBillingPeriod`` or ``PeriodNotFound`` (both 404 ``NotFound``).
    """
    now = now or timezone.now()
    period = usage_period_resolve(customer=customer, period_start=period_start)
    catalog = _Catalog.of(customer, for_rating=True)
    version = catalog.version

    usage_rows = {
        row.meter_id: row
        for row in PeriodUsage.objects.filter(customer=customer, period_start=period.start).select_related(
            "meter"
        )
    }
    # The projection reads only the days its rate is measured over.
    daily = _daily_by_meter(
        customer=customer, period=period, since=now.date() - timedelta(days=PROJECTION_WINDOW_DAYS)
    )
    clock = _PeriodClock(period=period, now=now)

    meters: list[MeterLine] = []
    for meter in catalog.meters_with(extra=[row.meter for row in usage_rows.values()]):
        row = usage_rows.get(meter.pk)
        meters.append(
            _meter_line(meter=meter, row=row, catalog=catalog, daily=daily.get(meter.pk, {}), clock=clock)
        )
    controls = SpendControls.objects.filter(customer=customer).first() or SpendControls(customer=customer)
    spend = catalog.money_total((line.cost, line.cost_unit) for line in meters)
    held = _held_money(customer=customer, catalog=catalog, now=now) if period.is_current else ZERO
    spend_status = SpendStatus(
        spend=spend,
        held=held,
        soft_limit=controls.soft_limit,
        hard_limit=controls.hard_limit,
        block_overage=controls.block_overage,
        level=_spend_level(spend + held, soft=controls.soft_limit, hard=controls.hard_limit),
    )
    balance = CustomerBalance.objects.filter(customer=customer).first()
    wallet = balance.wallet_balance if balance else ZERO
    grants = _active_grants(customer=customer, now=now)
    credits_remaining = sum((g.remaining for g in grants if g.unit == CREDITS), ZERO)
    monetary_remaining = sum((g.remaining for g in grants if g.unit != CREDITS), ZERO)

    projection = _projection(
        meters=meters, catalog=catalog, clock=clock, grants=grants, wallet=wallet, controls=controls
    )
    runways = (
        _runways(meters=meters, catalog=catalog, clock=clock, grants=grants, wallet=wallet)
        if period.is_current
        else ()
    )
    return UsageSummary(
        customer_id=customer.external_id,
        customer_name=customer.name,
        plan_name=version.plan.name if version else "",
        plan_version=version.number if version else None,
        currency=catalog.currency,
        period=period,
        as_of=now,
        days_in_period=clock.days_in_period,
        days_elapsed=clock.days_elapsed,
        days_remaining=clock.days_remaining,
        meters=tuple(meters),
        base_fee=catalog.base_fee,
        credit_unit_amount=catalog.credit_rate,
        spend=spend_status,
        projection=projection,
        wallet_balance=wallet,
        credits_remaining=credits_remaining,
        monetary_credits_remaining=monetary_remaining,
        runways=runways,
        account_frozen=customer.is_frozen,
        frozen_reason=customer.frozen_reason,
    )


def usage_summary_as_dict(summary: UsageSummary) -> dict[str, Any]:
    """The summary as JSON-ready data: decimals as strings (never floats), dates in ISO 8601."""
    data = _plain(dataclasses.asdict(summary))
    data["period"]["key"] = summary.period.key
    for line, meter in zip(data["meters"], summary.meters, strict=True):
        line["percent_of_included"] = meter.percent_of_included
    return data


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, Decimal):
        return _decimal_text(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    return value


def _decimal_text(value: Decimal) -> str:
    """Plain digits, no exponent, no trailing zeros: Decimal("12.340000000000") -> "12.34"."""
    if value == 0:
        return "0"
    return f"{value.normalize():f}"


# --- Summary internals -----------------------------------------------------------------------------


class _Catalog:
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
    def of(cls, customer: Customer, *, for_rating: bool = False) -> "_Catalog":
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


@dataclass(frozen=True)
class _PeriodClock:
    period: BillingPeriod
    now: datetime

    @property
    def days_in_period(self) -> Decimal:
        return _days(self.period.end - self.period.start)

    @property
    def days_elapsed(self) -> Decimal:
        moment = min(max(self.now, self.period.start), self.period.end)
        return _days(moment - self.period.start)

    @property
    def days_remaining(self) -> Decimal:
        if self.now >= self.period.end:
            return ZERO
        return _days(self.period.end - max(self.now, self.period.start))

    def rate_days(self) -> list[tuple[date, Decimal]]:
        """The whole days the daily rate is measured over, with their weights (yesterday first)."""
        today = self.now.date()
        # The first day counts only if the period started at midnight: a partial day reads low.
        first_whole = self.period.start.date()
        if self.period.start.timetz().replace(tzinfo=None) != datetime.min.time():
            first_whole += ONE_DAY
        days = []
        for age in range(1, PROJECTION_WINDOW_DAYS + 1):
            day = today - timedelta(days=age)
            if day < first_whole:
                break
            days.append((day, PROJECTION_DECAY ** (age - 1)))
        return days


def _days(delta: timedelta) -> Decimal:
    return (Decimal(delta.total_seconds()) / SECONDS_PER_DAY).quantize(Decimal("0.01"))


@dataclass(frozen=True)
class _DayTotals:
    """One meter's day, from the rollups (see ``usage.ingest._write_rollups``)."""

    quantity: Decimal  # every unit recorded, cache hits included
    beyond_included: Decimal  # units past the included allowance: the priced ones
    cost: Decimal  # in the price's unit


NO_USAGE = _DayTotals(quantity=ZERO, beyond_included=ZERO, cost=ZERO)


def _daily_by_meter(
    *, customer: Customer, period: BillingPeriod, since: date | None = None
) -> dict[int, dict[date, _DayTotals]]:
    rollups = DailyUsageRollup.objects.filter(customer=customer, period_start=period.start)
    if since is not None:
        rollups = rollups.filter(day__gte=since)
    rows = rollups.values("meter_id", "day").annotate(
        quantity=Sum("quantity"), beyond=Sum("billable_quantity"), cost=Sum("cost")
    )
    daily: dict[int, dict[date, _DayTotals]] = defaultdict(dict)
    for row in rows:
        daily[row["meter_id"]][row["day"]] = _DayTotals(
            quantity=row["quantity"] or ZERO, beyond_included=row["beyond"] or ZERO, cost=row["cost"] or ZERO
        )
    return daily


def _daily_rate(
    daily: Mapping[date, _DayTotals], clock: _PeriodClock, *, billable: Decimal, non_billable: Decimal
) -> Decimal:
    """Billable units per day at the recent, recency-weighted rate.

    Rollups count cache hits with the rest, so the recorded rate is scaled by the period's share of
    billable units: a customer whose cache serves a third of calls is projected to pay for two thirds.
    """
    days = clock.rate_days()
    if not days:
        elapsed = max(clock.days_elapsed, PROJECTION_MIN_ELAPSED_DAYS)
        return billable / elapsed
    weighted = sum((daily.get(d, NO_USAGE).quantity * w for d, w in days), ZERO)
    rate = weighted / sum((w for _, w in days), ZERO)
    recorded = billable + non_billable
    return rate * billable / recorded if recorded > 0 else rate


def _meter_line(
    *,
    meter: Meter,
    row: PeriodUsage | None,
    catalog: _Catalog,
    daily: Mapping[date, _DayTotals],
    clock: _PeriodClock,
) -> MeterLine:
    spec = catalog.spec(meter.pk)
    quantity = row.quantity if row else ZERO
    cost = row.cost if row else ZERO
    included = spec.included if spec else ZERO
    unit = catalog.cost_unit(meter.pk)

    projected_add = ZERO
    if clock.days_remaining > 0:
        rate = _daily_rate(
            daily, clock, billable=quantity, non_billable=row.non_billable_quantity if row else ZERO
        )
        projected_add = (rate * clock.days_remaining).quantize(QUANTITY_PLACES)
    projected_cost = cost + _added_cost(
        spec=spec, before=quantity, add=projected_add, cost=cost, daily=daily, meter=meter
    ).quantize(LEDGER_PLACES)

    percent = quantity * 100 / included if included > 0 else None
    if percent is None:
        level = UsageLevel.OK
    elif percent >= 100:
        level = UsageLevel.OVER
    elif percent >= QUOTA_WARN_PERCENT:
        level = UsageLevel.WARN
    else:
        level = UsageLevel.OK
    return MeterLine(
        key=meter.key,
        name=meter.name,
        unit=meter.unit,
        quantity=quantity,
        non_billable_quantity=row.non_billable_quantity if row else ZERO,
        included=included,
        included_used=min(quantity, included) if included > 0 else ZERO,
        cap=catalog.caps.get(meter.key),
        cost_unit=unit,
        cost=cost,
        credits_amount=row.credits_amount if row else ZERO,
        wallet_amount=row.wallet_amount if row else ZERO,
        overage_amount=row.overage_amount if row else ZERO,
        projected_quantity=quantity + projected_add,
        projected_cost=projected_cost,
        level=level,
    )


def _added_cost(
    *,
    spec: PriceSpec | None,
    before: Decimal,
    add: Decimal,
    cost: Decimal,
    daily: Mapping[date, _DayTotals],
    meter: Meter,
) -> Decimal:
    """What ``add`` more units would cost this period, rated by the plan's price."""
    if add <= 0:
        return ZERO
    if spec is None:
        # Not priced on the current version (usage from before a plan change): its average so far.
        return cost * add / before if before > 0 else ZERO
    if spec.model != PriceModel.DIMENSIONAL:
        return marginal_cost(spec, before=before, add=add)
    # A dimensional price's cost depends on which values the new units will carry; assume the mix
    # of the units billed so far (the average billed rate), else the price's default rate.
    _, billable = split_included(included=spec.included, before=before, add=add)
    billed_before = max(before - spec.included, ZERO)
    if billed_before > 0 and cost > 0:
        rate = cost / billed_before
    else:
        rate = spec.default_rate if spec.default_rate is not None else _cheapest_rate(spec)
    return billable * rate


def _cheapest_rate(spec: PriceSpec) -> Decimal:
    return min((rate for _, rate in spec.rates), default=ZERO)


def _spend_level(spend: Decimal, *, soft: Decimal | None, hard: Decimal | None) -> UsageLevel:
    if hard is not None and spend >= hard:
        return UsageLevel.OVER
    if soft is not None and spend >= soft:
        return UsageLevel.WARN
    return UsageLevel.OK


def _held_money(*, customer: Customer, catalog: _Catalog, now: datetime) -> Decimal:
    rows = (
        Reservation.objects.filter(customer=customer, status=ReservationStatus.HELD, expires_at__gt=now)
        .values("unit")
        .annotate(cost=Sum("held_cost"))
    )
    return catalog.money_total((row["cost"] or ZERO, row["unit"] or catalog.currency) for row in rows)


def _active_grants(*, customer: Customer, now: datetime) -> list[CreditGrant]:
    """Grants usable now, in the order the ledger draws them (as ``usage.balances``)."""
    return list(
        CreditGrant.objects.filter(
            Q(expires_at__isnull=True) | Q(expires_at__gt=now),
            customer=customer,
            expired_at__isnull=True,
            effective_at__lte=now,
            remaining__gt=0,
        ).order_by("priority", "expires_at", "id")
    )


def _projection(
    *,
    meters: list[MeterLine],
    catalog: _Catalog,
    clock: _PeriodClock,
    grants: list[CreditGrant],
    wallet: Decimal,
    controls: SpendControls,
) -> Projection:
    spend_now = catalog.money_total((line.cost, line.cost_unit) for line in meters)
    new_cost: dict[str, Decimal] = defaultdict(Decimal)
    for line in meters:
        new_cost[line.cost_unit] += max(line.projected_cost - line.cost, ZERO)
    new_money = catalog.money_total((amount, unit) for unit, amount in new_cost.items())

    # How the rest would be paid, in the ledger's order: grants of the same unit, then the wallet.
    from_grants = {
        unit: min(sum((g.remaining for g in grants if g.unit == unit), ZERO), amount)
        for unit, amount in new_cost.items()
    }
    after_grants = catalog.money_total(
        (amount - from_grants[unit], unit) for unit, amount in new_cost.items()
    )
    prepaid_covers = catalog.money_total((amount, unit) for unit, amount in from_grants.items()) + min(
        wallet, after_grants
    )

    # The customer's own limits refuse usage rather than bill it: past the hard limit, and past
    # what credits and the wallet cover when overage is blocked. What is refused is never billed.
    allowed_new, limited_by = new_money, ""
    if controls.block_overage and prepaid_covers < allowed_new:
        allowed_new, limited_by = prepaid_covers, "block_overage"
    if controls.hard_limit is not None and spend_now + allowed_new > controls.hard_limit:
        allowed_new, limited_by = max(controls.hard_limit - spend_now, ZERO), "hard_limit"
    share = allowed_new / new_money if new_money > 0 else ZERO
    usage_spend = spend_now + allowed_new
    credits = (
        sum((line.cost for line in meters if line.cost_unit == CREDITS), ZERO)
        + new_cost.get(CREDITS, ZERO) * share
    )

    # The invoice: overage so far, plus what of the allowed new cost prepaid money does not cover.
    new_overage = max(allowed_new - prepaid_covers, ZERO)
    overage_so_far = catalog.money_total((line.overage_amount, line.cost_unit) for line in meters)
    billed = catalog.base_fee + overage_so_far + new_overage

    hard_limit_on = None
    if limited_by == "hard_limit" and spend_now < (controls.hard_limit or ZERO) and clock.days_remaining > 0:
        per_day = new_money / clock.days_remaining
        days_to_limit = ((controls.hard_limit or ZERO) - spend_now) / per_day
        hard_limit_on = (clock.now + timedelta(days=float(days_to_limit))).date()

    window = len(clock.rate_days())
    if clock.days_remaining <= 0:
        method = "The period has ended: these are its final numbers."
    elif window:
        method = (
            f"Usage so far plus the recent daily rate × the {clock.days_remaining.normalize():f} days left. "
            f"The rate is a weighted average of the last {window} whole day{'s' if window != 1 else ''}: "
            f"yesterday counts most, each earlier day {PROJECTION_DECAY}× the day after it. "
            "Costs are rated with your plan's prices, included quantities first."
        )
    else:
        method = (
            "Usage so far, spread over the time elapsed, × the "
            f"{clock.days_remaining.normalize():f} days left (no whole day of usage yet). "
            "Costs are rated with your plan's prices, included quantities first."
        )
    if limited_by:
        method += " Usage your own limits will refuse is left out: it would not be billed."
    return Projection(
        total=catalog.base_fee + usage_spend,
        usage_spend=usage_spend,
        credits=credits.quantize(LEDGER_PLACES),
        billed=billed,
        limited_by=limited_by,
        hard_limit_reached_on=hard_limit_on,
        daily_rate_window_days=window,
        method=method,
    )


@dataclass
class _Pool:
    unit: str
    remaining: Decimal
    expires_at: datetime | None


def _runways(
    *,
    meters: list[MeterLine],
    catalog: _Catalog,
    clock: _PeriodClock,
    grants: list[CreditGrant],
    wallet: Decimal,
) -> tuple[Runway, ...]:
    """When the credit grants and the prepaid money run out, drawing in the ledger's order.

    The rest of this period burns at its projected cost per day, later periods at this period's
    projected average per day. Grants drop out when they expire. Between those moments the burn is
    steady, so each run-out moment is found exactly rather than day by day.
    """
    days_left = clock.days_remaining
    if days_left <= 0:
        return ()
    burn_now: dict[str, Decimal] = defaultdict(Decimal)
    burn_later: dict[str, Decimal] = defaultdict(Decimal)
    for line in meters:
        burn_now[line.cost_unit] += max(line.projected_cost - line.cost, ZERO) / days_left
        burn_later[line.cost_unit] += line.projected_cost / max(clock.days_in_period, Decimal(1))

    pools = [_Pool(unit=g.unit, remaining=g.remaining, expires_at=g.expires_at) for g in grants]
    credits_start = sum((g.remaining for g in grants if g.unit == CREDITS), ZERO)
    prepaid_start = wallet + sum((g.remaining for g in grants if g.unit != CREDITS), ZERO)
    credits_out = prepaid_out = None
    if credits_start > 0 or prepaid_start > 0:
        credits_out, prepaid_out = _simulate_draws(
            pools=pools, wallet=wallet, catalog=catalog, clock=clock, burn_now=burn_now, burn_later=burn_later
        )

    runways = []
    if credits_start > 0:
        runways.append(
            Runway(
                source="credits",
                unit=CREDITS,
                remaining=credits_start,
                daily_burn=burn_now.get(CREDITS, ZERO),
                runs_out_on=credits_out,
            )
        )
    if prepaid_start > 0:
        runways.append(
            Runway(
                source="prepaid",
                unit=catalog.currency,
                remaining=prepaid_start,
                daily_burn=catalog.money_total((amount, unit) for unit, amount in burn_now.items()),
                runs_out_on=prepaid_out,
            )
        )
    return tuple(runways)


def _simulate_draws(
    *,
    pools: list["_Pool"],
    wallet: Decimal,
    catalog: _Catalog,
    clock: _PeriodClock,
    burn_now: Mapping[str, Decimal],
    burn_later: Mapping[str, Decimal],
) -> tuple[date | None, date | None]:
    """(credits run out on, prepaid money runs out on), None for either that outlasts the horizon."""
    horizon = clock.now + timedelta(days=RUNWAY_HORIZON_DAYS)
    breaks = sorted(
        {clock.period.end, horizon}
        | {p.expires_at for p in pools if p.expires_at is not None and clock.now < p.expires_at < horizon}
    )
    money = wallet
    moment = clock.now
    credits_out: date | None = None
    prepaid_out: date | None = None

    def credits_left() -> Decimal:
        return sum((p.remaining for p in pools if p.unit == CREDITS), ZERO)

    def prepaid_left() -> Decimal:
        return money + sum((p.remaining for p in pools if p.unit != CREDITS), ZERO)

    had_credits, had_prepaid = credits_left() > 0, prepaid_left() > 0
    steps = 0
    while moment < horizon and (
        (had_credits and credits_out is None) or (had_prepaid and prepaid_out is None)
    ):
        for pool in pools:
            if pool.expires_at is not None and pool.expires_at <= moment:
                pool.remaining = ZERO
        if had_credits and credits_out is None and credits_left() <= 0:
            credits_out = moment.date()
        if had_prepaid and prepaid_out is None and prepaid_left() <= 0:
            prepaid_out = moment.date()
        burn = burn_now if moment < clock.period.end else burn_later
        segment_end = next(b for b in breaks if b > moment)
        # Within the segment the burn is steady; it changes only when a unit's grants are used up
        # (the rest of that unit then comes from the wallet). Step from one such moment to the next.
        while moment < segment_end and steps < 1000:  # a unit's grants run out once: few steps
            steps += 1
            step_days = _days_exact(segment_end - moment)
            for unit, rate in burn.items():
                pooled = sum((p.remaining for p in pools if p.unit == unit), ZERO)
                if rate > 0 and pooled > 0:
                    step_days = min(step_days, pooled / rate)
            wallet_rate = sum(
                (
                    catalog.to_money(rate, unit)
                    for unit, rate in burn.items()
                    if not any(p.remaining > 0 for p in pools if p.unit == unit)
                ),
                ZERO,
            )
            if had_prepaid and prepaid_out is None and money > 0 and wallet_rate > 0:
                currency_pooled = sum((p.remaining for p in pools if p.unit != CREDITS), ZERO)
                if currency_pooled <= 0 and money / wallet_rate <= step_days:
                    prepaid_out = (moment + _timedelta_days(money / wallet_rate)).date()
            for unit, rate in burn.items():
                _take(pools, unit, rate * step_days)
            money -= wallet_rate * step_days
            moment = min(moment + _timedelta_days(step_days), segment_end)
            if step_days <= 0:
                break
            if had_credits and credits_out is None and credits_left() <= 0:
                credits_out = moment.date()
            if had_prepaid and prepaid_out is None and prepaid_left() <= 0:
                prepaid_out = moment.date()
        moment = segment_end
    return credits_out, prepaid_out


def _take(pools: list["_Pool"], unit: str, amount: Decimal) -> None:
    for pool in pools:
        if amount <= 0:
            return
        if pool.unit == unit and pool.remaining > 0:
            taken = min(pool.remaining, amount)
            pool.remaining -= taken
            amount -= taken
            if pool.remaining < LEDGER_PLACES:
                pool.remaining = ZERO  # below the ledger's precision: used up, not a sliver left


def _days_exact(delta: timedelta) -> Decimal:
    return Decimal(delta.total_seconds()) / SECONDS_PER_DAY


def _timedelta_days(days: Decimal) -> timedelta:
    return timedelta(seconds=float(days * SECONDS_PER_DAY))


# --- Daily series (the chart) -----------------------------------------------------------------------


@dataclass(frozen=True)
class DailyPoint:
    day: date
    quantity: Decimal  # units recorded that day, cache hits included
    beyond_included: Decimal  # of quantity, units past the included allowance (the priced ones)
    cost: Decimal  # in the meter's cost unit
    cumulative: Decimal  # units recorded from the period start to the end of the day

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

    catalog = _Catalog.of(customer)
    daily = _daily_by_meter(customer=customer, period=period)
    used_meters = Meter.objects.filter(pk__in=list(daily))
    days = [first_day + timedelta(days=n) for n in range((last_day - first_day).days + 1)]

    series = []
    for meter in catalog.meters_with(extra=used_meters):
        by_day = daily.get(meter.pk, {})
        # Cumulative from the period start, so days before a long period's window still count.
        running = sum((totals.quantity for day, totals in by_day.items() if day < first_day), ZERO)
        points = []
        for day in days:
            totals = by_day.get(day, NO_USAGE)
            running += totals.quantity
            points.append(
                DailyPoint(
                    day=day,
                    quantity=totals.quantity,
                    beyond_included=totals.beyond_included,
                    cost=totals.cost,
                    cumulative=running,
                )
            )
        series.append(
            MeterSeries(
                key=meter.key,
                name=meter.name,
                unit=meter.unit,
                cost_unit=catalog.cost_unit(meter.pk),
                included=catalog.included(meter.pk),
                points=tuple(points),
            )
        )
    return DailySeries(period=period, first_day=first_day, last_day=last_day, meters=tuple(series))


# --- Top actions and members ------------------------------------------------------------------------


@dataclass(frozen=True)
class ActionLine:
    """What drove one meter's usage: an action (the event's ``action`` property)."""

    meter_key: str
    meter_name: str
    unit: str
    action: str  # "" when events carried none
    quantity: Decimal  # units recorded (cache hits included)
    cost: Decimal
    cost_unit: str
    share: Decimal  # of the meter's units recorded this period, 0..1

    @property
    def label(self) -> str:
        return self.action or "(no action given)"

    @property
    def quantity_display(self) -> str:
        return f"{format_quantity_short(self.quantity)} {unit_label(self.unit, self.quantity)}"

    @property
    def cost_display(self) -> str:
        return format_amount(self.cost, self.cost_unit)

    @property
    def share_percent(self) -> int:
        return int((self.share * 100).to_integral_value())


def usage_top_actions(
    *, customer: Customer, period_start: PeriodStart = None, limit: int = 10
) -> tuple[ActionLine, ...]:
    """The actions that used the most, per meter, largest first; shares are of the meter's total."""
    period = usage_period_resolve(customer=customer, period_start=period_start)
    rows = list(
        DailyUsageRollup.objects.filter(customer=customer, period_start=period.start)
        .values("meter_id", "meter__key", "meter__name", "meter__unit", "action")
        .annotate(quantity=Sum("quantity"), cost=Sum("cost"))
    )
    return _shared_lines(customer=customer, rows=rows, limit=limit, make=_action_line)


def _action_line(row: dict[str, Any], unit: str, share: Decimal) -> ActionLine:
    return ActionLine(
        meter_key=row["meter__key"],
        meter_name=row["meter__name"],
        unit=row["meter__unit"],
        action=row["action"],
        quantity=row["quantity"] or ZERO,
        cost=row["cost"] or ZERO,
        cost_unit=unit,
        share=share,
    )


@dataclass(frozen=True)
class MemberLine:
    """One member's usage of one meter; member_id None is usage sent without a user."""

    member_id: int | None
    member_name: str
    member_email: str
    meter_key: str
    meter_name: str
    unit: str
    quantity: Decimal
    cost: Decimal
    cost_unit: str
    share: Decimal  # of the meter's units recorded this period, 0..1

    @property
    def label(self) -> str:
        if self.member_id is None:
            return "Not attributed to a user"
        return self.member_name or self.member_email or f"Member {self.member_id}"

    @property
    def quantity_display(self) -> str:
        return f"{format_quantity_short(self.quantity)} {unit_label(self.unit, self.quantity)}"

    @property
    def cost_display(self) -> str:
        return format_amount(self.cost, self.cost_unit)

    @property
    def share_percent(self) -> int:
        return int((self.share * 100).to_integral_value())


def usage_member_breakdown(
    *,
    customer: Customer,
    period_start: PeriodStart = None,
    only_member: Member | None = None,
) -> tuple[MemberLine, ...]:
    """Which members drive usage, per meter, largest first. ``only_member`` keeps that member's lines
    (shares stay shares of the whole customer's usage).
    """
    period = usage_period_resolve(customer=customer, period_start=period_start)
    rows = list(
        DailyUsageRollup.objects.filter(customer=customer, period_start=period.start)
        .values(
            "meter_id",
            "meter__key",
            "meter__name",
            "meter__unit",
            "member_id",
            "member__name",
            "member__email",
        )
        .annotate(quantity=Sum("quantity"), cost=Sum("cost"))
    )
    lines = _shared_lines(customer=customer, rows=rows, limit=None, make=_member_line)
    if only_member is not None:
        lines = tuple(line for line in lines if line.member_id == only_member.pk)
    return lines


def _member_line(row: dict[str, Any], unit: str, share: Decimal) -> MemberLine:
    return MemberLine(
        member_id=row["member_id"],
        member_name=row["member__name"] or "",
        member_email=row["member__email"] or "",
        meter_key=row["meter__key"],
        meter_name=row["meter__name"],
        unit=row["meter__unit"],
        quantity=row["quantity"] or ZERO,
        cost=row["cost"] or ZERO,
        cost_unit=unit,
        share=share,
    )


def _shared_lines(*, customer: Customer, rows: list[dict[str, Any]], limit: int | None, make: Any) -> Any:
    """Rows grouped by meter with their share of the meter's total, ranked by cost then quantity."""
    catalog = _Catalog.of(customer)
    totals: dict[int, Decimal] = defaultdict(Decimal)
    for row in rows:
        totals[row["meter_id"]] += row["quantity"] or ZERO
    rows = [row for row in rows if (row["quantity"] or ZERO) != 0 or (row["cost"] or ZERO) != 0]
    rows.sort(
        key=lambda row: (
            -catalog.to_money(row["cost"] or ZERO, catalog.cost_unit(row["meter_id"])),
            -(row["quantity"] or ZERO),
            row["meter__key"],
        )
    )
    if limit is not None:
        rows = rows[:limit]
    lines = []
    for row in rows:
        total = totals[row["meter_id"]]
        share = (row["quantity"] or ZERO) / total if total > 0 else ZERO
        lines.append(make(row, catalog.cost_unit(row["meter_id"]), share))
    return tuple(lines)


# --- Wallet and credits -----------------------------------------------------------------------------


@dataclass(frozen=True)
class GrantLine:
    kind: str
    kind_label: str
    unit: str
    amount: Decimal
    remaining: Decimal
    effective_at: datetime
    expires_at: datetime | None
    expired: bool  # voided or past its expiry
    description: str

    @property
    def remaining_display(self) -> str:
        return format_amount(self.remaining, self.unit)

    @property
    def amount_display(self) -> str:
        return format_amount(self.amount, self.unit)


@dataclass(frozen=True)
class LedgerLine:
    created_at: datetime
    kind: str
    kind_label: str
    amount: Decimal  # signed: positive adds to the balance
    unit: str
    note: str
    is_grant: bool  # a grant's row, else the wallet's

    @property
    def label(self) -> str:
        if self.kind == LedgerEntryKind.DRAWDOWN:
            return "Credits used" if self.is_grant else "Paid from wallet"
        if self.kind == LedgerEntryKind.GRANT:
            return "Credits granted"
        if self.kind in (LedgerEntryKind.EXPIRY, LedgerEntryKind.REFUND, LedgerEntryKind.ADJUSTMENT):
            return f"{self.kind_label} ({'credits' if self.is_grant else 'wallet'})"
        return self.kind_label

    @property
    def amount_display(self) -> str:
        sign = "+" if self.amount > 0 else ""
        return sign + format_amount(self.amount, self.unit)


@dataclass(frozen=True)
class WalletView:
    currency: str
    balance: Decimal  # money
    grants: tuple[GrantLine, ...]  # active first, then those that ended in the last 30 days
    recent: tuple[LedgerLine, ...]  # the latest rows of any kind
    top_ups: tuple[LedgerLine, ...]  # the latest top-ups, grants, refunds, expiries and adjustments

    @property
    def balance_display(self) -> str:
        return format_money(self.balance, self.currency)


def usage_wallet(*, customer: Customer, now: datetime | None = None, recent_limit: int = 10) -> WalletView:
    now = now or timezone.now()
    balance = CustomerBalance.objects.filter(customer=customer).first()
    grants = CreditGrant.objects.filter(customer=customer).filter(
        Q(expired_at__isnull=True) | Q(expired_at__gte=now - timedelta(days=30))
    )
    grant_lines = []
    for grant in grants.order_by("priority", "expires_at", "id")[:50]:
        expired = grant.expired_at is not None or (grant.expires_at is not None and grant.expires_at <= now)
        if expired and grant.expires_at is not None and grant.expires_at < now - timedelta(days=30):
            continue
        grant_lines.append(
            GrantLine(
                kind=grant.kind,
                kind_label=grant.get_kind_display(),
                unit=grant.unit,
                amount=grant.amount,
                remaining=grant.remaining if not expired else ZERO,
                effective_at=grant.effective_at,
                expires_at=grant.expires_at,
                expired=expired,
                description=grant.description,
            )
        )
    grant_lines.sort(key=lambda line: line.expired)
    entries = CreditLedgerEntry.objects.filter(customer=customer).order_by("-created_at", "-id")
    recent = tuple(_ledger_line(entry) for entry in entries[:recent_limit])
    # Only the latest rows are looked at, so a busy customer's draw-downs never make this a scan.
    window = entries.values("pk")[:TOP_UP_LOOKBACK_ROWS]
    top_ups = tuple(
        _ledger_line(entry)
        for entry in CreditLedgerEntry.objects.filter(pk__in=window)
        .exclude(kind=LedgerEntryKind.DRAWDOWN)
        .order_by("-created_at", "-id")[:5]
    )
    return WalletView(
        currency=balance.currency if balance else customer.currency,
        balance=balance.wallet_balance if balance else ZERO,
        grants=tuple(grant_lines),
        recent=recent,
        top_ups=top_ups,
    )


def _ledger_line(entry: CreditLedgerEntry) -> LedgerLine:
    return LedgerLine(
        created_at=entry.created_at,
        kind=entry.kind,
        kind_label=entry.get_kind_display(),
        amount=entry.amount,
        unit=entry.unit,
        note=entry.note,
        is_grant=entry.grant_id is not None,
    )


# --- Notifications ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NotificationLine:
    id: int
    kind: str
    kind_label: str
    message: str
    created_at: datetime
    read_at: datetime | None

    @property
    def is_unread(self) -> bool:
        return self.read_at is None


@dataclass(frozen=True)
class NotificationList:
    unread_count: int
    items: tuple[NotificationLine, ...]  # unread first, newest first within each


def usage_notifications(*, customer: Customer, limit: int = 20) -> NotificationList:
    base = Notification.objects.filter(customer=customer)
    unread = list(base.filter(read_at__isnull=True).order_by("-created_at", "-id")[:limit])
    read = list(
        base.filter(read_at__isnull=False).order_by("-created_at", "-id")[: max(limit - len(unread), 0)]
    )
    unread_count = len(unread) if len(unread) < limit else base.filter(read_at__isnull=True).count()
    return NotificationList(
        unread_count=unread_count,
        items=tuple(
            NotificationLine(
                id=n.pk,
                kind=n.kind,
                kind_label=n.get_kind_display(),
                message=n.message,
                created_at=n.created_at,
                read_at=n.read_at,
            )
            for n in unread + read
        ),
    )
