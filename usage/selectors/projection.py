"""Where the period is heading: the recent daily rate, the projected totals, when prepaid money runs out."""

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from core.money import CREDITS
from customers.models import SpendControls
from customers.spend_limits import overage_blocked
from plans.models import Meter
from plans.pricing import PriceModel, PriceSpec, marginal_cost, split_included
from plans.terms import PlanTerms
from usage.models import CreditGrant
from usage.selectors.formatting import format_amount
from usage.selectors.meter_lines import MeterLine
from usage.selectors.periods import BillingPeriod
from usage.selectors.series import NO_USAGE, DayTotals
from usage.selectors.units import LEDGER_PLACES, ZERO

ONE_DAY = timedelta(days=1)
SECONDS_PER_DAY = Decimal(86400)

# The projection: the daily rate is a weighted mean of the last PROJECTION_WINDOW_DAYS whole days,
# yesterday weighing 1 and each earlier day PROJECTION_DECAY times the day after it, so a change in
# habits shows within days while one odd day does not swing the forecast.
PROJECTION_WINDOW_DAYS = 7
PROJECTION_DECAY = Decimal("0.7")
# No projection until the period is this old: twenty-five seconds of usage extrapolated to a month told
# a new customer "on track for $1,835". Before then the page shows usage so far.
PROJECTION_MIN_ELAPSED = ONE_DAY
# How far ahead a prepaid balance's run-out date is looked for.
RUNWAY_HORIZON_DAYS = 730


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
    available: bool = True  # False in the period's first day: the totals are usage so far


@dataclass(frozen=True)
class PeriodClock:
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
    def projects(self) -> bool:
        """Whether a projection is made: the period has ended (its numbers are final) or is a day old."""
        # On the clock itself: days_elapsed is rounded, and 23:59 would read as a whole day.
        elapsed = min(max(self.now, self.period.start), self.period.end) - self.period.start
        return self.days_remaining <= 0 or elapsed >= PROJECTION_MIN_ELAPSED

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


def daily_rate(
    daily: Mapping[date, DayTotals], clock: PeriodClock, *, billable: Decimal, non_billable: Decimal
) -> Decimal:
    """Billable units per day at the recent, recency-weighted rate.

    Rollups count cache hits with the rest, so the recorded rate is scaled by the period's share of
    billable units: a customer whose cache serves a third of calls is projected to pay for two thirds.
    """
    days = clock.rate_days()
    if not days:
        return billable / max(clock.days_elapsed, _days(PROJECTION_MIN_ELAPSED))
    weighted = sum((daily.get(d, NO_USAGE).quantity * w for d, w in days), ZERO)
    rate = weighted / sum((w for _, w in days), ZERO)
    recorded = billable + non_billable
    return rate * billable / recorded if recorded > 0 else rate


def added_cost(
    *,
    spec: PriceSpec | None,
    before: Decimal,
    add: Decimal,
    cost: Decimal,
    daily: Mapping[date, DayTotals],
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


def projection_for(
    *,
    meters: list[MeterLine],
    terms: PlanTerms,
    clock: PeriodClock,
    grants: list[CreditGrant],
    wallet: Decimal,
    controls: SpendControls,
    base_fee: Decimal,
) -> Projection:
    """Where the period is heading; ``base_fee`` is the period's (prorated after a plan change)."""
    spend_now = terms.money_total((line.cost, line.cost_unit) for line in meters)
    new_cost: dict[str, Decimal] = defaultdict(Decimal)
    for line in meters:
        new_cost[line.cost_unit] += max(line.projected_cost - line.cost, ZERO)
    new_money = terms.money_total((amount, unit) for unit, amount in new_cost.items())

    # How the rest would be paid, in the consumption order: grants of the same unit, then the wallet.
    from_grants = {
        unit: min(sum((g.remaining for g in grants if g.unit == unit), ZERO), amount)
        for unit, amount in new_cost.items()
    }
    after_grants = terms.money_total((amount - from_grants[unit], unit) for unit, amount in new_cost.items())
    prepaid_covers = terms.money_total((amount, unit) for unit, amount in from_grants.items()) + min(
        wallet, after_grants
    )

    # The customer's own limits refuse usage rather than bill it: past the hard limit, and past
    # what credits and the wallet cover when overage is blocked. What is refused is never billed.
    allowed_new, limited_by = new_money, ""
    if overage_blocked(terms=terms, controls=controls) and prepaid_covers < allowed_new:
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
    overage_so_far = terms.money_total((line.overage_amount, line.cost_unit) for line in meters)
    billed = base_fee + overage_so_far + new_overage

    hard_limit_on = None
    if limited_by == "hard_limit" and spend_now < (controls.hard_limit or ZERO) and clock.days_remaining > 0:
        per_day = new_money / clock.days_remaining
        days_to_limit = ((controls.hard_limit or ZERO) - spend_now) / per_day
        hard_limit_on = (clock.now + _timedelta_days(days_to_limit)).date()

    window = len(clock.rate_days())
    if clock.days_remaining <= 0:
        method = "The period has ended: these are its final numbers."
    elif not clock.projects:
        method = (
            "No projection yet: it starts once the period is a day old, so a few hours of usage are not "
            "taken for a month's. These are your usage charges so far."
        )
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
        total=base_fee + usage_spend,
        usage_spend=usage_spend,
        credits=credits.quantize(LEDGER_PLACES),
        billed=billed,
        limited_by=limited_by,
        hard_limit_reached_on=hard_limit_on,
        daily_rate_window_days=window,
        method=method,
        available=clock.projects,
    )


@dataclass
class _Pool:
    unit: str
    remaining: Decimal
    expires_at: datetime | None


def runways_for(
    *,
    meters: list[MeterLine],
    terms: PlanTerms,
    clock: PeriodClock,
    grants: list[CreditGrant],
    wallet: Decimal,
) -> tuple[Runway, ...]:
    """When the credit grants and the prepaid money run out, drawing in the consumption order.

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
            pools=pools, wallet=wallet, terms=terms, clock=clock, burn_now=burn_now, burn_later=burn_later
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
                unit=terms.currency,
                remaining=prepaid_start,
                daily_burn=terms.money_total((amount, unit) for unit, amount in burn_now.items()),
                runs_out_on=prepaid_out,
            )
        )
    return tuple(runways)


def _simulate_draws(
    *,
    pools: list["_Pool"],
    wallet: Decimal,
    terms: PlanTerms,
    clock: PeriodClock,
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
                    terms.to_money(rate, unit)
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
    """A Decimal number of days as a timedelta, to the whole second (a date is all that is shown)."""
    return timedelta(seconds=int(days * SECONDS_PER_DAY))
