"""The period summary: usage per meter, spend against limits, projection, balances."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.utils import timezone

from core.money import CREDITS, format_money, round_money
from customers.models import Customer, SoftLimitSource
from customers.selectors import customer_subscription_terms, spend_controls_of
from customers.spend_limits import DEFAULT_SOFT_LIMIT_SHARE, overage_blocked
from plans.display import DisplayUnit, allowance_value
from plans.models import Meter
from plans.pricing import PriceSpec
from plans.terms import PlanTerms
from usage.consumption import Holds
from usage.default_soft_limit import default_soft_limits_refresh
from usage.models import CreditGrant, CustomerBalance, PeriodUsage
from usage.selectors.formatting import format_amount, format_quantity
from usage.selectors.meter_lines import QUOTA_WARN_PERCENT, MeterLine, UsageLevel
from usage.selectors.periods import BillingPeriod, PeriodStart, usage_period_resolve
from usage.selectors.projection import (
    PROJECTION_WINDOW_DAYS,
    PeriodClock,
    Projection,
    Runway,
    added_cost,
    daily_rate,
    projection_for,
    runways_for,
)
from usage.selectors.series import DayTotals, daily_by_meter
from usage.selectors.units import LEDGER_PLACES, QUANTITY_PLACES, ZERO
from usage.sql_reads import active_holds_read


@dataclass(frozen=True)
class SpendStatus:
    """This period's spend against the customer's own limits, as the API's checks see it."""

    spend: Decimal  # money, in the plan currency: usage charges so far
    held: Decimal  # money held by reservations in flight; the hard limit counts it too
    soft_limit: Decimal | None  # the customer's own
    hard_limit: Decimal | None
    block_overage: bool  # in force: the plan's policy or the customer's own switch
    # The plan's policy alone (a prepaid plan): the customer's own switch changes nothing.
    plan_blocks_overage: bool
    level: UsageLevel
    # The customer's stops in units a period, by meter key, as stored (decimal strings).
    meter_limits: dict[str, str] = field(default_factory=dict)
    # The default soft limit for the current period (None: no closed period, or nothing charged), whether
    # the customer turned it off, and the soft limit in force with where it comes from.
    default_soft_limit: Decimal | None = None
    default_soft_limit_off: bool = False
    soft_limit_in_force: Decimal | None = None
    soft_limit_source: SoftLimitSource | None = None

    @property
    def default_soft_limit_applies(self) -> bool:
        return self.soft_limit_source == SoftLimitSource.DEFAULT

    @property
    def limit_for_bar(self) -> Decimal | None:
        return self.hard_limit if self.hard_limit is not None else self.soft_limit_in_force

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
        soft = self.soft_limit_in_force
        if soft is None or self.hard_limit is None or self.hard_limit <= 0:
            return None
        return min(int(soft * 100 / self.hard_limit), 100)


@dataclass(frozen=True)
class ChargeLine:
    """One line of the period's charges so far, as an invoice line: rounded to the currency's minor unit."""

    description: str
    meter: str | None  # the meter's key; None for the base fee
    quantity: Decimal | None  # billable units; None for the base fee
    amount: Decimal  # money, in currency, rounded to its minor unit
    currency: str


@dataclass(frozen=True)
class Charges:
    """The period so far as invoice lines: the base fee, then each meter's usage charge in money (credit-priced
    usage at the plan's credit-pack rate, whatever pays for it), as ``base_fee`` and ``spend.spend`` count them.
    ``total`` is the sum of the rounded lines, so the lines add up to it to the cent."""

    lines: tuple[ChargeLine, ...]
    currency: str

    @property
    def total(self) -> Decimal:
        return sum((line.amount for line in self.lines), round_money(ZERO, self.currency))


@dataclass(frozen=True)
class UsageSummary:
    """Everything the page's numbers show for one period; the usage API serializes it as is
    (``usage.api.serializers.UsageSummaryOutput``)."""

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
    # Money per credit (cheapest credit pack); None when the plan prices nothing in credits or sells no packs.
    credit_unit_amount: Decimal | None
    spend: SpendStatus
    projection: Projection
    wallet_balance: Decimal  # money
    credits_remaining: Decimal  # credit grants in credits, active now
    monetary_credits_remaining: Decimal  # credit grants in the currency, active now
    runways: tuple[Runway, ...]
    account_frozen: bool
    frozen_reason: str
    charges: Charges

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
        """The soft limit in force (the customer's, else the default), as money."""
        soft = self.spend.soft_limit_in_force
        return self.money(soft) if soft is not None else ""

    @property
    def default_soft_limit_share_display(self) -> str:
        """The default's share of typical spend, as the page says it: "80%"."""
        return f"{DEFAULT_SOFT_LIMIT_SHARE * 100:.0f}%"

    @property
    def default_soft_limit_display(self) -> str:
        default = self.spend.default_soft_limit
        return self.money(default) if default is not None else ""

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
    subscription, terms = customer_subscription_terms(customer)
    version = terms.version

    usage_rows = {
        row.meter_id: row
        for row in PeriodUsage.objects.filter(customer=customer, period_start=period.start).select_related(
            "meter"
        )
    }
    # The projection reads only the days its rate is measured over.
    daily = daily_by_meter(
        customer=customer, period=period, since=now.date() - timedelta(days=PROJECTION_WINDOW_DAYS)
    )
    clock = PeriodClock(period=period, now=now)
    # Open holds pin allowance, credits, wallet money and spend; they count only in the current period.
    holds = Holds.of(active_holds_read(customer=customer, now=now), terms) if period.is_current else Holds()

    meters: list[MeterLine] = []
    for meter in terms.meters_with(extra=[row.meter for row in usage_rows.values()]):
        row = usage_rows.get(meter.pk)
        spec = terms.specs.get(meter.pk)
        included = spec.included if spec else ZERO
        if subscription is not None:  # after a plan change this period: the prorated allowance
            included = subscription.period_allowance(
                meter_id=meter.pk, plan_included=included, period_start=period.start
            )
        meters.append(
            _meter_line(
                meter=meter,
                row=row,
                terms=terms,
                included=included,
                held_included=holds.included_by_meter.get(meter.pk, ZERO),
                daily=daily.get(meter.pk, {}),
                clock=clock,
            )
        )
    controls = spend_controls_of(customer)
    default_soft_limits_refresh(
        controls_and_subscriptions=[(controls, subscription)], terms={customer.pk: terms}
    )
    spend = terms.money_total((line.cost, line.cost_unit) for line in meters)
    held = holds.spend_money
    spend_status = SpendStatus(
        spend=spend,
        held=held,
        soft_limit=controls.soft_limit,
        hard_limit=controls.hard_limit,
        block_overage=overage_blocked(terms=terms, controls=controls),
        plan_blocks_overage=terms.overage_blocked,
        level=_spend_level(spend + held, soft=controls.soft_limit_in_force, hard=controls.hard_limit),
        meter_limits=dict(controls.meter_limits or {}),
        default_soft_limit=controls.default_soft_limit,
        default_soft_limit_off=controls.default_soft_limit_off,
        soft_limit_in_force=controls.soft_limit_in_force,
        soft_limit_source=controls.soft_limit_source,
    )
    balance = CustomerBalance.objects.filter(customer=customer).first()
    wallet = balance.wallet_balance if balance else ZERO
    grants = list(CreditGrant.objects.usable(now).filter(customer=customer).in_draw_order())
    credits_remaining = sum((g.remaining for g in grants if g.unit == CREDITS), ZERO)
    monetary_remaining = sum((g.remaining for g in grants if g.unit != CREDITS), ZERO)

    base_fee = (
        subscription.period_base_fee(terms.base_fee)
        if subscription is not None and period.is_current
        else terms.base_fee
    )
    projection = projection_for(
        meters=meters,
        terms=terms,
        clock=clock,
        grants=grants,
        wallet=wallet,
        controls=controls,
        base_fee=base_fee,
    )
    runways = (
        runways_for(meters=meters, terms=terms, clock=clock, grants=grants, wallet=wallet)
        if period.is_current
        else ()
    )
    return UsageSummary(
        customer_id=customer.external_id,
        customer_name=customer.name,
        plan_name=version.plan.name if version else "",
        plan_version=version.number if version else None,
        currency=terms.currency,
        period=period,
        as_of=now,
        days_in_period=clock.days_in_period,
        days_elapsed=clock.days_elapsed,
        days_remaining=clock.days_remaining,
        meters=tuple(meters),
        base_fee=base_fee,
        credit_unit_amount=terms.credit_rate if terms.prices_in_credits else None,
        spend=spend_status,
        projection=projection,
        wallet_balance=wallet,
        credits_remaining=credits_remaining,
        monetary_credits_remaining=monetary_remaining,
        runways=runways,
        account_frozen=customer.is_frozen,
        frozen_reason=customer.frozen_reason,
        charges=_charges(
            meters=meters, terms=terms, base_fee=base_fee, plan_name=version.plan.name if version else ""
        ),
    )


def _charges(*, meters: list[MeterLine], terms: PlanTerms, base_fee: Decimal, plan_name: str) -> Charges:
    currency = terms.currency
    lines = []
    if base_fee:
        lines.append(
            ChargeLine(
                description=f"{plan_name} base fee".strip(),
                meter=None,
                quantity=None,
                amount=round_money(base_fee, currency),
                currency=currency,
            )
        )
    lines += [
        ChargeLine(
            description=line.name,
            meter=line.key,
            quantity=line.quantity,
            amount=round_money(terms.to_money(line.cost, line.cost_unit), currency),
            currency=currency,
        )
        for line in meters
    ]
    return Charges(lines=tuple(lines), currency=currency)


def _meter_line(
    *,
    meter: Meter,
    row: PeriodUsage | None,
    terms: PlanTerms,
    included: Decimal,
    held_included: Decimal,
    daily: Mapping[date, DayTotals],
    clock: PeriodClock,
) -> MeterLine:
    spec = terms.specs.get(meter.pk)
    quantity = row.quantity if row else ZERO
    cost = row.cost if row else ZERO
    unit = terms.cost_unit(meter.pk)

    projected_add = ZERO
    cap = terms.cap(meter.key)
    if clock.days_remaining > 0 and clock.projects:
        rate = daily_rate(
            daily, clock, billable=quantity, non_billable=row.non_billable_quantity if row else ZERO
        )
        projected_add = (rate * clock.days_remaining).quantize(QUANTITY_PLACES)
        if cap is not None:
            # Usage past a cap is refused, never used: the projection stops where the cap does.
            projected_add = min(projected_add, max(cap - quantity, ZERO))
    projected_cost = cost + added_cost(
        spec=spec, before=quantity, add=projected_add, cost=cost, daily=daily, meter=meter
    ).quantize(LEDGER_PLACES)

    # What the allowance covered is what the engine recorded (``included_quantity``), not min(quantity,
    # allowance): after a plan change, units billed before it are not in the new allowance.
    allowance_taken = row.included_quantity if row else ZERO
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
        included_used=min(allowance_taken, included) if included > 0 else ZERO,
        # The engine's rule (usage.consumption): the allowance less what usage took and open holds pin.
        included_remaining=max(included - allowance_taken - held_included, ZERO),
        overage_quantity=max(quantity - allowance_taken, ZERO),
        cap=cap,
        cost_unit=unit,
        cost=cost,
        credits_amount=row.credits_amount if row else ZERO,
        wallet_amount=row.wallet_amount if row else ZERO,
        overage_amount=row.overage_amount if row else ZERO,
        projected_quantity=quantity + projected_add,
        projected_cost=projected_cost,
        level=level,
        display=DisplayUnit.of(meter),
        currency=terms.currency,
        money_cost=terms.to_money(cost, unit),
        projected_money_cost=terms.to_money(projected_cost, unit),
        included_value=_included_value(spec, included=included, terms=terms),
    )


def _included_value(spec: PriceSpec | None, *, included: Decimal, terms: PlanTerms) -> Decimal:
    """A money meter's allowance as what it is worth, in money; 0 (not shown) when it is free or its worth
    depends on the dimension (the model), which the page cannot say in one amount."""
    if spec is None:
        return ZERO
    low, high = allowance_value(spec, included)
    return terms.to_money(low, spec.unit) if low == high else ZERO


def _spend_level(spend: Decimal, *, soft: Decimal | None, hard: Decimal | None) -> UsageLevel:
    if hard is not None and spend >= hard:
        return UsageLevel.OVER
    if soft is not None and spend >= soft:
        return UsageLevel.WARN
    return UsageLevel.OK
