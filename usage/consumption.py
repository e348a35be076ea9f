"""How usage is paid for: the consumption order, the limits and the holds, decided in memory.

``ConsumptionEngine`` is a customer's plan terms, limits, period totals, grants, wallet and active holds,
loaded once inside the transaction that holds the customer's lock. ``quote`` decides one unit of work
(allowed? at what cost? covered by what?) and ``apply`` records its effect in memory, so a batch of 1,000
events is decided in order against totals that include the events before it. The callers persist what
changed (``usage.recording``).

Consumption order: the period's included allowance, then credit grants (``CreditGrant.objects.usable``,
in ``GRANT_DRAW_ORDER``), then the wallet, then post-paid overage if the customer allows it. Amounts are
in the price's unit (the plan currency or credits); ``PlanTerms.to_money`` turns credits into money where
money is needed (wallet, overage, spend limits).
"""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from core.money import CREDITS, ledger_amount
from customers.models import Customer, SpendControls, Subscription, SubscriptionStatus
from customers.spend_limits import overage_blocked
from plans.models import Meter
from plans.pricing import PriceSpec, UnknownDimensionValue, billable_cost
from plans.terms import PlanTerms, plan_terms_cached
from usage.errors import (
    AccountFrozen,
    CorrectionUncovered,
    EntitlementLimitReached,
    HardLimitReached,
    InsufficientBalance,
    NoSubscription,
    NotEntitled,
    SubscriptionCanceled,
    UsageRefused,
)
from usage.models import CorrectionFlag, CreditGrant, CustomerBalance, PeriodUsage, Reservation
from usage.sql_reads import ConsumptionRows, HoldRow, consumption_rows_read

ZERO = Decimal(0)


@dataclass
class Coverage:
    """How one unit of work is paid for. Amounts are in ``unit``; ``money_cost`` in the currency."""

    unit: str
    quantity: Decimal
    included_quantity: Decimal = ZERO
    cost: Decimal = ZERO
    credits: Decimal = ZERO
    wallet: Decimal = ZERO
    overage: Decimal = ZERO
    money_cost: Decimal = ZERO
    dimension_value: str = ""
    billable: bool = True

    @property
    def billable_quantity(self) -> Decimal:
        return self.quantity - self.included_quantity


@dataclass
class Holds:
    """What active reservations hold: it counts against the allowance, balances and limits."""

    quantity_by_meter: dict[int, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    included_by_meter: dict[int, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    credits_by_unit: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    wallet_money: Decimal = ZERO
    spend_money: Decimal = ZERO  # what the holds would cost, in money: the hard limit counts it

    @classmethod
    def of(cls, rows: list[HoldRow], terms: PlanTerms) -> "Holds":
        holds = cls()
        for row in rows:
            holds.quantity_by_meter[row.meter_id] += row.quantity
            holds.included_by_meter[row.meter_id] += row.included
            holds.credits_by_unit[row.unit] += row.credits
            holds.wallet_money += terms.to_money(row.wallet, row.unit)
            holds.spend_money += terms.to_money(row.cost, row.unit)
        return holds


@dataclass
class Draw:
    """One amount taken from (negative: given back to) a grant, or the wallet when ``grant`` is None."""

    grant: CreditGrant | None
    amount: Decimal  # in the grant's unit, or money for the wallet
    # What a monetary grant's money paid for, in credits, when it paid for credit-priced usage.
    credits_covered: Decimal = ZERO


@dataclass(frozen=True)
class EventShares:
    """An event as corrected so far (its own row plus its corrections): the units and what paid for them."""

    timestamp: datetime
    properties: dict[str, Any]
    dimension_value: str
    billable: bool
    quantity: Decimal
    included: Decimal
    cost: Decimal
    credits: Decimal
    wallet: Decimal
    overage: Decimal


def _spend_controls(customer: Customer) -> SpendControls:
    """The customer's limits, from the customer row's cache when the caller joined them in."""
    try:
        return customer.spend_controls
    except SpendControls.DoesNotExist:
        return SpendControls(customer=customer)


class ConsumptionEngine:
    """Decides what a customer may use and what pays for it; see the module docstring."""

    def __init__(
        self,
        *,
        customer: Customer,
        balance: CustomerBalance,
        subscription: Subscription,
        now: datetime,
        rows: ConsumptionRows | None = None,
    ) -> None:
        """``rows`` are this customer's, read after their lock; without them the engine reads its own."""
        if rows is None:
            rows = consumption_rows_read(subscriptions=[subscription], now=now)[customer.pk]
        self.customer = customer
        self.balance = balance
        self.subscription = subscription
        self.now = now
        self.terms = plan_terms_cached(subscription.plan_version_id)
        self.currency = self.terms.currency
        self.specs = self.terms.specs
        self.entitlements = self.terms.entitlements
        self.controls = _spend_controls(customer)
        self.grants = rows.grants
        # Grants used up before this request, loaded when a give-back returns credits to them.
        self.used_up_grants: dict[int, CreditGrant] = {}
        current_start = subscription.current_period_start
        self.period_usage: dict[tuple[datetime, int], PeriodUsage] = {
            (current_start, row.meter_id): row for row in rows.period_rows
        }
        self.changed_keys: set[tuple[datetime, int]] = set()
        self.loaded_periods: set[datetime] = {current_start}
        self.holds = Holds.of(rows.holds, self.terms)

    # --- loading -------------------------------------------------------------------------------

    def period_for(self, moment: datetime) -> tuple[datetime, datetime]:
        if self.subscription.current_period_start <= moment < self.subscription.current_period_end:
            return self.subscription.current_period_start, self.subscription.current_period_end
        return self.subscription.period_containing(moment)

    def _load_period(self, start: datetime) -> None:
        if start not in self.loaded_periods:
            for row in PeriodUsage.objects.filter(customer=self.customer, period_start=start):
                self.period_usage[(start, row.meter_id)] = row
            self.loaded_periods.add(start)

    def usage_row(self, *, meter_id: int, period: tuple[datetime, datetime]) -> PeriodUsage:
        start, end = period
        self._load_period(start)
        key = (start, meter_id)
        if key not in self.period_usage:
            self.period_usage[key] = PeriodUsage(
                customer=self.customer, meter_id=meter_id, period_start=start, period_end=end
            )
        return self.period_usage[key]

    # --- money ---------------------------------------------------------------------------------

    def period_spend(self, period_start: datetime) -> Decimal:
        """Usage charges of the period in money, whatever pays for them (the allowance is free)."""
        self._load_period(period_start)
        return self.terms.money_total(
            (row.cost, row.unit or self.currency)
            for (start, _), row in self.period_usage.items()
            if start == period_start
        )

    def _pays_for(self, grant: CreditGrant, unit: str) -> bool:
        """Whether ``grant`` can pay for usage priced in ``unit``: its own unit, or money for credits at
        the plan's credit-pack rate (a monetary grant is worth what the wallet's money is worth)."""
        return grant.unit == unit or (
            unit == CREDITS and grant.unit == self.currency and self.terms.credit_rate is not None
        )

    def _grant_value(self, grant: CreditGrant, unit: str) -> Decimal:
        """What ``grant``'s remaining amount pays for, in ``unit`` (money buys credits rounded down)."""
        return grant.remaining if grant.unit == unit else self.terms.from_money(grant.remaining, unit)

    def grants_available(self, unit: str) -> Decimal:
        pool = sum((self._grant_value(g, unit) for g in self.grants if self._pays_for(g, unit)), ZERO)
        return max(pool - self.holds.credits_by_unit.get(unit, ZERO), ZERO)

    def wallet_available(self) -> Decimal:
        return max(self.balance.wallet_balance - self.holds.wallet_money, ZERO)

    # --- deciding ------------------------------------------------------------------------------

    def quote(
        self,
        *,
        meter: Meter,
        quantity: Decimal,
        properties: dict[str, Any],
        timestamp: datetime,
    ) -> Coverage:
        """Decide one unit of work. Raises a ``UsageRefused`` with the reason when it may not run.

        Open holds pin what they reserved: their units count against the plan's cap, the allowance they
        took is not offered again, their billable units come first in the tiers, and the credits and
        wallet money they hold are not available. So new usage and new holds are priced after every
        hold, and a hold's commit (``hold_settled``) pays exactly from what the hold pinned.
        """
        spec = self.specs.get(meter.pk)
        unit = spec.unit if spec else self.currency
        if properties.get("cached") is True:
            # A cache hit is recorded for the customer's insight but never billed or counted.
            return Coverage(unit=unit, quantity=quantity, billable=False)
        self._check_gates(meter=meter, spec=spec, properties=properties)
        period = self.period_for(timestamp)
        row = self.usage_row(meter_id=meter.pk, period=period)
        current = period[0] == self.subscription.current_period_start
        held = self.holds.quantity_by_meter.get(meter.pk, ZERO) if current else ZERO
        used_or_held = row.quantity + held
        limit = self.entitlements.get(meter.key)
        if limit is not None and limit.limit is not None and used_or_held + quantity > limit.limit:
            raise EntitlementLimitReached(
                f"The plan allows {limit.limit.normalize():f} {meter.unit} of {meter.name} per period; "
                f"{used_or_held.normalize():f} are used or held.",
                limit=f"{limit.limit.normalize():f}",
            ).liftable_by("cap", customer=self.customer, meter=meter)
        self._check_meter_limit(meter=meter, used_or_held=used_or_held, quantity=quantity)
        if spec is None:
            return Coverage(unit=unit, quantity=quantity, included_quantity=quantity)
        coverage = self._rated(
            meter=meter, spec=spec, quantity=quantity, properties=properties, period=period
        )
        self._check_hard_limit(coverage, period_start=period[0])
        try:
            self._cover(coverage, period_row=row)
        except InsufficientBalance as refusal:
            if self.terms.overage_blocked:
                # The plan's policy, not the customer's switch: another plan would bill the rest as overage.
                refusal.liftable_by("overage", customer=self.customer, meter=meter)
            raise
        return coverage

    def _rated(
        self,
        *,
        meter: Meter,
        spec: PriceSpec,
        quantity: Decimal,
        properties: dict[str, Any],
        period: tuple[datetime, datetime],
    ) -> Coverage:
        """What ``quantity`` more of ``meter`` costs after the period's usage and holds: the allowance it takes
        and the cost of the rest. Nothing is paid for yet (``_cover``)."""
        row = self.usage_row(meter_id=meter.pk, period=period)
        current = period[0] == self.subscription.current_period_start
        held_included = self.holds.included_by_meter.get(meter.pk, ZERO) if current else ZERO
        dimension_value = self._dimension_value(spec, properties)
        # The allowance is counted in units taken, not in positions: what recorded usage and open holds
        # took is gone, whatever order the holds settle in. After a plan change in this period the tiers of
        # the plan in force count from the change; earlier usage kept the prices it was rated at.
        allowance = self.subscription.period_allowance(
            meter_id=meter.pk, plan_included=spec.included, period_start=period[0]
        )
        allowance_left = max(allowance - row.included_quantity - held_included, ZERO)
        included = min(quantity, allowance_left)
        billable_before = self._billable_position(meter_id=meter.pk, period=period)
        try:
            # Stored amounts have 12 places: the event's cost is rounded once, here, and every total
            # after it (period, rollups, ledger) is a sum of stored event amounts, never rounded again.
            cost = ledger_amount(
                billable_cost(
                    spec,
                    billable_before=billable_before,
                    billable_add=quantity - included,
                    dimension_value=dimension_value or None,
                )
            )
        except UnknownDimensionValue as error:
            raise NotEntitled(
                f"{meter.name} has no price for {spec.dimension} = {dimension_value!r} on this plan."
            ) from error
        return Coverage(
            unit=spec.unit,
            quantity=quantity,
            included_quantity=included,
            cost=cost,
            money_cost=self.terms.to_money(cost, spec.unit),
            dimension_value=dimension_value,
        )

    def _billable_position(self, *, meter_id: int, period: tuple[datetime, datetime]) -> Decimal:
        """Billable units of the meter before the next one in the period's tiers: recorded usage past the
        allowance (since the plan in force began) and open holds' billable units."""
        row = self.usage_row(meter_id=meter_id, period=period)
        current = period[0] == self.subscription.current_period_start
        held = self.holds.quantity_by_meter.get(meter_id, ZERO) if current else ZERO
        held_included = self.holds.included_by_meter.get(meter_id, ZERO) if current else ZERO
        _, billable_before_plan = self.subscription.used_before_plan(meter_id) if current else (ZERO, ZERO)
        return (row.quantity - row.included_quantity - billable_before_plan) + (held - held_included)

    # --- corrections ---------------------------------------------------------------------------

    def correction_quoted(
        self, *, meter: Meter, corrected: "EventShares", difference: Decimal
    ) -> tuple[Coverage, list[str]]:
        """What a correction of an event by ``difference`` units changes, and the limits it goes past.

        The period is re-rated: the units are added at (or taken from) the top of the period's tiers, so the
        period's charge becomes the plan's price of the corrected usage. A correction is never refused:
        the usage happened (or did not). Units added are paid for like new usage (allowance, grants, wallet,
        overage); past a cap or the hard limit, or beyond what a plan blocking overage allows, they are still
        recorded, as overage where nothing else pays, and flagged (``CorrectionFlag``). Units taken back
        give back in reverse consumption order what the event took: its overage first, then its wallet
        share, then its credits, then its allowance, each at most what the event (with its earlier
        corrections) still holds. Raises ``CorrectionUncovered`` only where added usage has no money value
        at all (credits on a plan that sells none) and nothing pays for it.
        """
        spec = self.specs.get(meter.pk)
        unit = spec.unit if spec else self.currency
        if not corrected.billable:
            return Coverage(unit=unit, quantity=difference, billable=False), []
        period = self.period_for(corrected.timestamp)
        row = self.usage_row(meter_id=meter.pk, period=period)
        flags: list[str] = []
        if difference > 0:
            limit = self.entitlements.get(meter.key)
            held = self.holds.quantity_by_meter.get(meter.pk, ZERO)
            if (
                limit is not None
                and limit.limit is not None
                and row.quantity + held + difference > limit.limit
            ):
                flags.append(CorrectionFlag.ENTITLEMENT_LIMIT)
            try:
                self._check_meter_limit(meter=meter, used_or_held=row.quantity + held, quantity=difference)
            except HardLimitReached:
                flags.append(CorrectionFlag.METER_LIMIT)
            if spec is None:
                return Coverage(unit=unit, quantity=difference, included_quantity=difference), flags
            coverage = self._rated(
                meter=meter, spec=spec, quantity=difference, properties=corrected.properties, period=period
            )
        else:
            coverage = self._taken_back(
                meter=meter, spec=spec, unit=unit, corrected=corrected, units=-difference, period=period
            )
        if coverage.cost > 0:
            flags += self._cover_unrefused(coverage, period_row=row, period_start=period[0])
        elif coverage.cost < 0:
            self._give_back_of_event(coverage, corrected=corrected, period_row=row)
        return coverage, flags

    def _taken_back(
        self,
        *,
        meter: Meter,
        spec: PriceSpec | None,
        unit: str,
        corrected: "EventShares",
        units: Decimal,
        period: tuple[datetime, datetime],
    ) -> Coverage:
        """``units`` of an event taken back: its billable units first (they were paid for last), then its
        allowance, priced at the top of the period's tiers."""
        billable_removed = min(units, max(corrected.quantity - corrected.included, ZERO))
        included_removed = units - billable_removed
        cost = ZERO
        if spec is not None and billable_removed:
            position = self._billable_position(meter_id=meter.pk, period=period)
            if position >= billable_removed:
                cost = -ledger_amount(
                    billable_cost(
                        spec,
                        billable_before=position - billable_removed,
                        billable_add=billable_removed,
                        dimension_value=corrected.dimension_value or None,
                    )
                )
            else:
                # Units rated under the plan in force before a change this period: not in this plan's tiers.
                # They give back their own share of what the event cost.
                billable = corrected.quantity - corrected.included
                cost = -ledger_amount(corrected.cost * billable_removed / billable)
        return Coverage(
            unit=unit,
            quantity=-units,
            included_quantity=-included_removed,
            cost=cost,
            money_cost=self.terms.to_money(cost, unit),
            dimension_value=corrected.dimension_value,
        )

    def _give_back_of_event(
        self, coverage: Coverage, *, corrected: "EventShares", period_row: PeriodUsage
    ) -> None:
        """Split a negative cost in reverse consumption order, first within what the event still holds of
        each source; what the re-rating gives back beyond that (a dearer top tier) comes from the period's
        sources in the same order, as any give-back (``_give_back``)."""
        give_back = -coverage.cost
        overage = min(give_back, max(corrected.overage, ZERO))
        wallet = min(give_back - overage, max(corrected.wallet, ZERO))
        credits = min(give_back - overage - wallet, max(corrected.credits, ZERO))
        rest = give_back - overage - wallet - credits
        if rest > 0:
            more_overage = min(rest, max(period_row.overage_amount - overage, ZERO))
            more_wallet = min(rest - more_overage, max(period_row.wallet_amount - wallet, ZERO))
            overage, wallet = overage + more_overage, wallet + more_wallet
            credits += rest - more_overage - more_wallet
        coverage.overage, coverage.wallet, coverage.credits = -overage, -wallet, -credits

    def _cover_unrefused(
        self, coverage: Coverage, *, period_row: PeriodUsage, period_start: datetime
    ) -> list[str]:
        """``_cover`` for a correction's added cost: what grants and the wallet do not pay is overage, even
        where overage is blocked; returns the limits it went past."""
        flags: list[str] = []
        try:
            self._check_hard_limit(coverage, period_start=period_start)
        except HardLimitReached:
            flags.append(CorrectionFlag.HARD_LIMIT)
        try:
            self._cover(coverage, period_row=period_row)
        except InsufficientBalance as refusal:
            if coverage.unit == CREDITS and self.terms.credit_rate is None:
                raise CorrectionUncovered(
                    f"Nothing pays for the {refusal.details['needed']} credits this correction adds: the plan "
                    "sells no credits, so they cannot be billed as overage. Grant the customer credits "
                    "(POST /api/v1/customers/{id}/credits), then correct the event.",
                ) from refusal
            coverage.overage = coverage.cost - coverage.credits - coverage.wallet
            flags.append(CorrectionFlag.OVERAGE_BLOCKED)
        return flags

    def hold_settled(self, hold: Reservation, *, quantity: Decimal) -> Coverage:
        """What committing ``quantity`` of ``hold`` costs, and what pays: the hold's own quote, in proportion.

        The hold was decided under the plan version, prices and balances of its time, and pinned what it
        needed; its commit draws from that first: the pinned allowance, then the billable units at the
        rate the hold was quoted (never more than it was quoted), paid by its pinned credits, wallet money
        and overage in that order. No limit is checked again: they were checked when the hold was taken.
        """
        if hold.properties.get("cached") is True:
            return Coverage(unit=hold.unit, quantity=quantity, billable=False)
        included = min(quantity, hold.held_included)
        billable_held = hold.quantity - hold.held_included
        share = (quantity - included) / billable_held if billable_held > 0 else ZERO
        cost = ledger_amount(hold.held_cost * share)
        coverage = Coverage(
            unit=hold.unit,
            quantity=quantity,
            included_quantity=included,
            cost=cost,
            money_cost=self.terms.to_money(cost, hold.unit),
            dimension_value=self._hold_dimension_value(hold),
        )
        if cost < 0:
            self._give_back(
                coverage, period_row=self.usage_row(meter_id=hold.meter_id, period=self.period_for(self.now))
            )
            return coverage
        coverage.credits = min(cost, max(hold.held_credits, ZERO))
        coverage.wallet = min(cost - coverage.credits, max(hold.held_wallet, ZERO))
        coverage.overage = cost - coverage.credits - coverage.wallet
        return coverage

    def _hold_dimension_value(self, hold: Reservation) -> str:
        spec = self.specs.get(hold.meter_id)
        return self._dimension_value(spec, hold.properties) if spec else ""

    def _check_gates(self, *, meter: Meter, spec: PriceSpec | None, properties: dict[str, Any]) -> None:
        if self.subscription.status == SubscriptionStatus.CANCELED:
            # Usage after the final invoice could never be billed: it is refused, not recorded.
            raise SubscriptionCanceled("The subscription is canceled: new usage is not accepted.")
        if self.customer.is_frozen:
            raise AccountFrozen(
                f"Billable usage is paused for this account: {self.customer.frozen_reason or 'frozen'}."
            )
        gate = self.entitlements.get(meter.key)
        feature_key = properties.get("feature")
        feature = self.entitlements.get(feature_key) if isinstance(feature_key, str) else None
        for entitlement in (gate, feature):
            if entitlement is not None and not entitlement.enabled:
                raise NotEntitled(
                    f"The plan does not include {entitlement.feature}.", feature=entitlement.feature
                )
        if spec is None and gate is None:
            raise NotEntitled(f"The plan does not include {meter.name}.", feature=meter.key)

    @staticmethod
    def _dimension_value(spec: PriceSpec, properties: dict[str, Any]) -> str:
        if not spec.dimension:
            return ""
        value = properties.get(spec.dimension)
        return "" if value is None else str(value)

    def _check_hard_limit(self, coverage: Coverage, *, period_start: datetime) -> None:
        hard_limit = self.controls.hard_limit
        if hard_limit is None or coverage.money_cost <= 0:
            return
        spend = self.period_spend(period_start) + self.holds.spend_money
        if spend + coverage.money_cost > hard_limit:
            raise HardLimitReached(
                f"This would take usage charges to {spend + coverage.money_cost:.2f} {self.currency.upper()}, "
                f"over the hard limit of {hard_limit:.2f}.",
                hard_limit=f"{hard_limit.normalize():f}",
            )

    def _check_meter_limit(self, *, meter: Meter, used_or_held: Decimal, quantity: Decimal) -> None:
        """The customer's own stop in units ("stop at 5,000,000 tokens this period"): like the plan's cap,
        usage and open holds count, so concurrent holds under the customer's lock never pass it."""
        limit = self.controls.meter_limit(meter.key)
        if limit is not None and used_or_held + quantity > limit:
            raise HardLimitReached(
                f"Your limit for {meter.name} is {limit.normalize():f} {meter.unit} per period; "
                f"{used_or_held.normalize():f} are used or held.",
                meter=meter.key,
                limit=f"{limit.normalize():f}",
            )

    def _cover(self, coverage: Coverage, *, period_row: PeriodUsage) -> None:
        """Split the cost over grants, wallet and overage, in that order."""
        unit, remaining = coverage.unit, coverage.cost
        if remaining < 0:
            self._give_back(coverage, period_row=period_row)
            return
        coverage.credits = min(self.grants_available(unit), remaining)
        remaining -= coverage.credits
        coverage.wallet = self._wallet_covers(unit, remaining, period_row=period_row)
        remaining -= coverage.wallet
        if remaining <= 0:
            return
        overage_possible = unit != CREDITS or self.terms.credit_rate is not None
        blocked = self.overage_blocked
        if overage_possible and not blocked:
            coverage.overage = remaining
            return
        raise InsufficientBalance(
            f"Not enough credits or wallet balance: {remaining.normalize():f} {unit} more is needed"
            + (", and overage is blocked." if blocked else "."),
            needed=f"{remaining.normalize():f}",
        )

    @property
    def overage_blocked(self) -> bool:
        return overage_blocked(terms=self.terms, controls=self.controls)

    def _wallet_covers(self, unit: str, amount: Decimal, *, period_row: PeriodUsage) -> Decimal:
        """How much of ``amount`` (in ``unit``) the wallet's available money pays for.

        Credits cost money at the pack rate on the period's running total (``money_of_running_total``),
        which is what ``apply`` will draw; when the wallet falls short, it pays what its money buys,
        rounded down.
        """
        available = self.wallet_available()
        needed = self.terms.money_of_running_total(before=period_row.wallet_amount, add=amount, unit=unit)
        if needed <= available and (unit != CREDITS or self.terms.credit_rate is not None):
            return amount
        return min(self.terms.from_money(available, unit), amount)

    @staticmethod
    def _give_back(coverage: Coverage, *, period_row: PeriodUsage) -> None:
        """A negative cost (volume pricing reached a cheaper tier) goes back where the period's cost came
        from, in reverse consumption order: post-paid overage first, then the wallet, then credit grants,
        each at most what it paid this period, in the unit it paid in."""
        give_back = -coverage.cost
        overage = min(give_back, max(period_row.overage_amount, ZERO))
        wallet = min(give_back - overage, max(period_row.wallet_amount, ZERO))
        credits = give_back - overage - wallet
        coverage.overage, coverage.wallet, coverage.credits = -overage, -wallet, -credits

    def remaining_quantity(self, meter: Meter) -> Decimal | None:
        """Units of ``meter`` still usable this period under the plan's cap and the customer's own limit for
        it (the tighter), or None when neither bounds it."""
        entitlement = self.entitlements.get(meter.key)
        bounds = [
            limit
            for limit in (entitlement.limit if entitlement else None, self.controls.meter_limit(meter.key))
            if limit is not None
        ]
        if not bounds:
            return None
        row = self.usage_row(meter_id=meter.pk, period=self.period_for(self.now))
        used = row.quantity + self.holds.quantity_by_meter.get(meter.pk, ZERO)
        return max(min(bounds) - used, ZERO)

    # --- applying ------------------------------------------------------------------------------

    def apply(
        self, coverage: Coverage, *, meter: Meter, timestamp: datetime, serving_cost: Decimal = ZERO
    ) -> list[Draw]:
        """Add a decided event to the totals, take its credits and wallet share; return the draws.

        ``serving_cost`` is what the event cost us (``plans.serving_costs``): a cache hit costs us too.
        """
        period = self.period_for(timestamp)
        row = self.usage_row(meter_id=meter.pk, period=period)
        self.changed_keys.add((period[0], meter.pk))
        row.unit = coverage.unit
        row.event_count += 1
        row.serving_cost += serving_cost
        if not coverage.billable:
            row.non_billable_quantity += coverage.quantity
            return []
        if coverage.credits >= 0:
            draws = self._draw_grants(coverage.unit, coverage.credits)
        else:
            draws, unreturned = self._refund_grants(coverage.unit, -coverage.credits)
            # Credits of a grant voided since cannot go back to it: that part goes to the wallet, and the
            # event's split says so, so that the split and the ledger rows agree.
            coverage.credits += unreturned
            coverage.wallet -= unreturned
        wallet_before = row.wallet_amount
        row.quantity += coverage.quantity
        row.included_quantity += coverage.included_quantity
        row.cost += coverage.cost
        row.credits_amount += coverage.credits
        row.wallet_amount += coverage.wallet
        row.overage_amount += coverage.overage
        if coverage.wallet:
            money = self.terms.money_of_running_total(
                before=wallet_before, add=coverage.wallet, unit=coverage.unit
            )
            # The running total's rounding may ask one ten-trillionth more than is left: never overdraw.
            money = min(money, self.balance.wallet_balance)
            self.balance.wallet_balance -= money
            draws.append(Draw(grant=None, amount=-money))
        return draws

    def changed_period_usage(self) -> list[PeriodUsage]:
        """The period totals that ``apply`` changed, to be saved."""
        return [self.period_usage[key] for key in self.changed_keys]

    def _draw_grants(self, unit: str, amount: Decimal) -> list[Draw]:
        """Take ``amount`` of ``unit`` from the grants in draw order, each at most what it holds. A monetary
        grant paying for credits gives their money at the pack rate, never more than it holds."""
        draws = []
        for grant in self.grants:
            if amount <= 0:
                break
            if not self._pays_for(grant, unit) or grant.remaining <= 0:
                continue
            taken = min(self._grant_value(grant, unit), amount)
            amount -= taken
            if grant.unit == unit:
                grant.remaining -= taken
                draws.append(Draw(grant=grant, amount=-taken))
                continue
            money = min(self.terms.to_money(taken, unit), grant.remaining)
            grant.remaining -= money
            draws.append(Draw(grant=grant, amount=-money, credits_covered=taken))
        return draws

    def _refund_grants(self, unit: str, amount: Decimal) -> tuple[list[Draw], Decimal]:
        """Give ``amount`` of ``unit`` back to the grants of that unit still in force, the last drawn first,
        each up to what was taken from it. Returns the draws and what no grant could take back."""
        loaded = {grant.pk: grant for grant in self.grants} | self.used_up_grants
        refundable = (
            CreditGrant.objects.in_force(self.now)
            .filter(customer=self.customer, unit=unit)
            .in_draw_order()
            .reverse()
        )
        draws = []
        for stored in refundable:
            if amount <= 0:
                break
            grant = loaded.get(stored.pk) or self.used_up_grants.setdefault(stored.pk, stored)
            given = min(grant.amount - grant.remaining, amount)
            if given > 0:
                grant.remaining += given
                amount -= given
                draws.append(Draw(grant=grant, amount=given))
        return draws, amount


# --- asking before the work --------------------------------------------------------------------


@dataclass
class Decision:
    """The answer to "may this customer use this much now, and what would it cost?"."""

    allowed: bool
    code: str | None
    message: str | None
    coverage: Coverage | None
    currency: str
    remaining: Decimal | None  # how many more units of the meter could be used now, when bounded


def usage_decide(
    *, customer: Customer, meter: Meter, quantity: Decimal, properties: dict[str, Any], now: datetime
) -> Decision:
    """Check a unit of work without holding anything: what ``/check`` and ``/estimate`` answer.

    A read without the lock: the answer is advice for this instant. To be sure the customer can
    pay when the work is done, take a reservation, which decides the same way under the lock.
    Pass a customer from ``customer_for_decision`` to save the lookups of its related rows.
    """
    try:
        subscription = customer.subscription
    except Subscription.DoesNotExist:
        raise NoSubscription(f"Customer {customer.external_id!r} has no subscription.") from None
    try:
        balance = customer.balance
    except CustomerBalance.DoesNotExist:
        balance = CustomerBalance(customer=customer, currency=customer.currency)
    engine = ConsumptionEngine(customer=customer, balance=balance, subscription=subscription, now=now)
    remaining = engine.remaining_quantity(meter)
    try:
        coverage = engine.quote(meter=meter, quantity=quantity, properties=properties, timestamp=now)
    except UsageRefused as refusal:
        return Decision(False, refusal.code, refusal.message, None, engine.currency, remaining)
    return Decision(True, None, None, coverage, engine.currency, remaining)
