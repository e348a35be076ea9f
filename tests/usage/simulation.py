"""A model of how customers use the engine, for ``test_simulation.py``: the catalog, the actions and the invariants.

Two customers, on plans that cover every price model, send events (cached, dimensional, backdated), take,
commit and release reservations, get grants and top-ups, change limits and plans, while time moves across
period ends and the housekeeping jobs run or lag. Every action goes through the engine's own services, on
PostgreSQL, with the clock moved by time-machine. After each step the invariants of one family are checked.

Each example runs in a savepoint rolled back at its end, so examples start from the same catalog and never
see each other's rows.
"""

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import time_machine
from django.db import DatabaseError, transaction
from django.utils import timezone
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, multiple, rule
from rest_framework.test import APIClient

from billing_app.models import ApiKey
from core.errors import BillingError
from customers.models import Customer, Subscription
from customers.services import customer_create, spend_controls_update
from customers.tasks import subscriptions_roll_periods_task
from plans.models import Meter, PlanVersion
from plans.terms import PlanTerms
from usage.api.fields import amount_string
from usage.ingest import usage_events_ingest
from usage.ledger_audit import PROOFS
from usage.models import CreditGrant, PeriodUsage, Reservation, ReservationStatus, UsageEvent
from usage.services import (
    credit_grant_create,
    credit_grants_expire,
    reservation_commit,
    reservation_create,
    reservation_release,
    reservations_expire,
    subscription_change,
    wallet_top_up,
)

ZERO = Decimal(0)
START = datetime(2025, 3, 30, 22, 0, tzinfo=UTC)
CUSTOMERS = ("sim-a", "sim-b")
MODELS = ("small", "large")

# Every price model, an allowance on most, a credits-priced plan with a credit pack whose rate does not
# terminate (10 USD for 30 credits), and a free plan with a cap and a disabled feature.
PLANS: dict[str, dict[str, Any]] = {
    "sim-unit": {
        "prices": [
            {"meter": "sim_work", "model": "per_unit", "unit_amount": "0.10", "included": "10"},
            {
                "meter": "sim_tokens",
                "model": "dimensional",
                "dimension": "model",
                "rates": {"small": "0.001", "large": "0.01"},
            },
        ],
    },
    "sim-graduated": {
        "prices": [
            {
                "meter": "sim_work",
                "model": "graduated",
                "tiers": [
                    {"up_to": "10", "unit_amount": "0"},
                    {"up_to": "50", "unit_amount": "0.05", "flat_amount": "1"},
                    {"up_to": None, "unit_amount": "0.02"},
                ],
            },
            {
                "meter": "sim_tokens",
                "model": "dimensional",
                "dimension": "model",
                "rates": {"large": "0.01"},
                "default_rate": "0.002",
            },
        ],
    },
    "sim-volume": {
        "prices": [
            {
                "meter": "sim_work",
                "model": "volume",
                "included": "5",
                "tiers": [
                    {"up_to": "20", "unit_amount": "0.10"},
                    {"up_to": "100", "unit_amount": "0.05"},
                    {"up_to": None, "unit_amount": "0.01", "flat_amount": "0.5"},
                ],
            },
        ],
    },
    "sim-package": {
        "prices": [
            {
                "meter": "sim_work",
                "model": "package",
                "package_size": "10",
                "package_amount": "0.75",
                "included": "5",
            },
            {"meter": "sim_tokens", "model": "per_unit", "unit_amount": "0.003"},
        ],
    },
    "sim-credits": {
        "prices": [
            {
                "meter": "sim_work",
                "model": "dimensional",
                "unit": "credits",
                "dimension": "model",
                "rates": {"small": "1", "large": "5"},
                "included": "3",
            },
            {"meter": "sim_tokens", "model": "per_unit", "unit_amount": "0.001"},
        ],
        "credit_packs": [{"price": "10", "credits": "30"}],
    },
    "sim-free": {
        "prices": [{"meter": "sim_work", "model": "per_unit", "unit_amount": "0", "included": "20"}],
        "entitlements": [{"feature": "sim_work", "limit": "20"}, {"feature": "premium", "enabled": False}],
    },
}


def catalog_create(make_plan: Callable[..., PlanVersion]) -> dict[str, PlanVersion]:
    return {code: make_plan(code, **spec) for code, spec in PLANS.items()}


# --- what the model remembers about the actions it took ---------------------------------------------------


@dataclass
class Limits:
    hard: Decimal | None = None
    block_overage: bool = False


@dataclass
class Hold:
    """A reservation as taken, with the limits that were in force when it was."""

    id: Any
    customer: int
    limits: Limits


@dataclass
class Facts:
    """What the invariants beyond the ledger check, gathered as the actions run."""

    # Events recorded while overage was blocked (for a commit: when the hold was taken and when committed).
    blocked_events: set[int] = field(default_factory=set)
    # (event id, the hold's quoted cost in its unit, unit)
    commits: list[tuple[int, Decimal, str]] = field(default_factory=list)
    # Spend that went past a hard limit in force when the usage was allowed: messages.
    hard_limit_passed: list[str] = field(default_factory=list)
    # Requests the engine failed with an error of the database instead of an answer: messages.
    crashes: list[str] = field(default_factory=list)


# --- the invariants, by family ----------------------------------------------------------------------------


def _ledger_family(name: str) -> Callable[["EngineSimulation"], list[str]]:
    def check(machine: "EngineSimulation") -> list[str]:
        return [str(mismatch) for mismatch in PROOFS[name](timezone.now())]

    return check


def _block_overage(machine: "EngineSimulation") -> list[str]:
    return [
        f"event {pk} recorded with overage blocked has overage {overage} {unit}"
        for pk, overage, unit in UsageEvent.objects.filter(
            pk__in=machine.facts.blocked_events, overage_amount__gt=0
        ).values_list("pk", "overage_amount", "cost_unit")
    ]


def _no_crash(machine: "EngineSimulation") -> list[str]:
    return list(machine.facts.crashes)


def _hard_limit(machine: "EngineSimulation") -> list[str]:
    return list(machine.facts.hard_limit_passed)


def _commit_within_quote(machine: "EngineSimulation") -> list[str]:
    costs = dict(
        UsageEvent.objects.filter(pk__in=[pk for pk, _, _ in machine.facts.commits]).values_list("pk", "cost")
    )
    return [
        f"committed event {pk} costs {costs[pk]} {unit}, its hold was quoted {quoted}"
        for pk, quoted, unit in machine.facts.commits
        if costs[pk] > quoted
    ]


def _usage_api(machine: "EngineSimulation") -> list[str]:
    """``GET /customers/{id}/usage`` tells what the events and the credit ledger say."""
    problems = []
    now = timezone.now()
    for customer in machine.customers:
        response = machine.api.get(f"/api/v1/customers/{customer.external_id}/usage")
        if response.status_code != 200:
            problems.append(f"{customer.external_id}: usage API answered {response.status_code}")
            continue
        body = response.json()
        period_start = datetime.fromisoformat(body["period"]["start"])
        events = UsageEvent.objects.filter(customer=customer, period_start=period_start, billable=True)
        for line in body["meters"]:
            of_meter = events.filter(meter__key=line["key"])
            if Decimal(line["quantity"]) != _sum(of_meter, "quantity"):
                problems.append(
                    f"{customer.external_id} {line['key']} quantity: API says {line['quantity']}, "
                    f"events sum to {_sum(of_meter, 'quantity')}"
                )
            # Amounts are shown with the currency's minor-unit places (credits exact): the sum, so rounded.
            for name in ("cost", "credits_amount", "wallet_amount", "overage_amount"):
                summed = amount_string(_sum(of_meter, name), line["cost_unit"])
                if line[name] != summed:
                    problems.append(
                        f"{customer.external_id} {line['key']} {name}: API says {line[name]}, events sum to {summed}"
                    )
        wallet = _sum(customer.credit_ledger.filter(grant__isnull=True), "amount")
        if body["wallet_balance"] != amount_string(wallet, body["currency"]):
            problems.append(
                f"{customer.external_id} wallet: API says {body['wallet_balance']}, ledger sums to {wallet}"
            )
        credits = _sum(
            customer.credit_ledger.filter(
                grant__in=CreditGrant.objects.filter(customer=customer, unit="credits").usable(now)
            ),
            "amount",
        )
        if Decimal(body["credits_remaining"]) != credits:
            problems.append(
                f"{customer.external_id} credits: API says {body['credits_remaining']}, ledger sums to {credits}"
            )
    return problems


def _sum(queryset: Any, name: str) -> Decimal:
    return sum(queryset.values_list(name, flat=True), ZERO)


FAMILIES: dict[str, Callable[["EngineSimulation"], list[str]]] = {
    **{name: _ledger_family(name) for name in PROOFS},
    "block_overage": _block_overage,
    "hard_limit": _hard_limit,
    "commit_within_quote": _commit_within_quote,
    "usage_api": _usage_api,
    "no_crash": _no_crash,
}


# --- the actions ------------------------------------------------------------------------------------------

quantities = st.sampled_from(["0", "0.000001", "1", "2.5", "7", "15", "40"]).map(Decimal)
events = st.fixed_dictionaries(
    {
        "meter": st.sampled_from(["sim_work", "sim_tokens"]),
        "quantity": quantities,
        "model": st.sampled_from(MODELS),
        "cached": st.sampled_from([False, False, False, True]),
        "backdated": st.sampled_from([0, 0, 0, 600, 3 * 3600, 2 * 86400, 20 * 86400]),
        "user": st.sampled_from([None, "ana", "bo"]),
        "premium": st.sampled_from([False, False, True]),
    }
)
limits = st.sampled_from([None, "0.5", "3", "20"]).map(lambda text: None if text is None else Decimal(text))


class EngineSimulation(RuleBasedStateMachine):
    """Set by ``simulation_for``: which invariants to enforce, and the catalog the examples share."""

    family: str = ""
    plans: dict[str, PlanVersion] = {}
    reservations = Bundle("reservations")

    def __init__(self) -> None:
        super().__init__()
        self.atomic = transaction.atomic()
        self.atomic.__enter__()
        self.clock = time_machine.travel(START, tick=False)
        self.traveller = self.clock.start()
        self.customers: list[Customer] = []
        self.limits: list[Limits] = []
        self.facts = Facts()
        self.keys = 0
        self.meters = {meter.key: meter for meter in Meter.objects.filter(key__in=["sim_work", "sim_tokens"])}
        _, raw_key = ApiKey.generate(name="simulation")
        self.api = APIClient()
        self.api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")

    def teardown(self) -> None:
        try:
            transaction.set_rollback(True)
            self.atomic.__exit__(None, None, None)
        finally:
            self.clock.stop()

    def _customer(self, who: int) -> Customer:
        """The customer as a request would load it: its subscription and limits read afresh."""
        return Customer.objects.get(pk=self.customers[who].pk)

    def _key(self, prefix: str) -> str:
        self.keys += 1
        return f"{prefix}-{self.keys}"

    @initialize(first=st.sampled_from(sorted(PLANS)), second=st.sampled_from(sorted(PLANS)))
    def customers_create(self, first: str, second: str) -> None:
        for external_id, plan in zip(CUSTOMERS, (first, second), strict=True):
            self.customers.append(customer_create(external_id=external_id, name=external_id, plan_code=plan))
            self.limits.append(Limits())

    # --- spending -------------------------------------------------------------------------------------

    @rule(who=st.integers(0, 1), spec=events)
    def event_send(self, who: int, spec: dict[str, Any]) -> None:
        self.events_send(who, [spec])

    @rule(who=st.integers(0, 1), batch=st.lists(events, min_size=2, max_size=4))
    def events_send(self, who: int, batch: list[dict[str, Any]]) -> None:
        customer = self._customer(who)
        now = timezone.now()
        period_start = Subscription.objects.get(customer=customer).current_period_start
        raw = []
        for spec in batch:
            properties: dict[str, Any] = {"model": spec["model"], "action": "chat"}
            if spec["cached"]:
                properties["cached"] = True
            if spec["premium"]:
                properties["feature"] = "premium"
            timestamp = max(now - timedelta(seconds=spec["backdated"]), period_start)
            body = {
                "idempotency_key": self._key("e"),
                "customer": customer.external_id,
                "meter": spec["meter"],
                "quantity": str(spec["quantity"]),
                "timestamp": timestamp.isoformat(),
                "properties": properties,
            }
            if spec["user"]:
                body["user"] = spec["user"]
            raw.append(body)
        before = self._spend_by_period(customer)
        try:
            result = usage_events_ingest(raw_events=raw)
        except BillingError:  # an invalid batch (a dimension value without a price) is refused whole
            return
        except DatabaseError as error:
            self.facts.crashes.append(f"events {raw} failed: {error}")
            return
        recorded = [event.written_id() for event in result.events]
        if self.limits[who].block_overage:
            self.facts.blocked_events.update(recorded)
        if recorded:
            self._check_hard_limit(who, before, limit=self.limits[who].hard, action=f"events {recorded}")

    @rule(
        target=reservations,
        who=st.integers(0, 1),
        meter=st.sampled_from(["sim_work", "sim_tokens"]),
        quantity=st.sampled_from(["1", "4", "12", "30"]).map(Decimal),
        model=st.sampled_from(MODELS),
        cached=st.sampled_from([False, False, False, True]),
        ttl=st.sampled_from([120, 3600, 3 * 86400]),
    )
    def reservation_take(
        self, who: int, meter: str, quantity: Decimal, model: str, cached: bool, ttl: int
    ) -> Any:
        properties: dict[str, Any] = {"model": model}
        if cached:
            properties["cached"] = True
        try:
            reservation, _ = reservation_create(
                customer=self._customer(who),
                meter=self.meters[meter],
                quantity=quantity,
                idempotency_key=self._key("r"),
                properties=properties,
                ttl_seconds=ttl,
            )
        except BillingError:
            return multiple()
        except DatabaseError as error:
            self.facts.crashes.append(f"reservation of {quantity} {meter} failed: {error}")
            return multiple()
        limits = self.limits[who]
        return Hold(reservation.pk, who, Limits(limits.hard, limits.block_overage))

    @rule(hold=reservations, share=st.sampled_from(["0", "0.5", "1"]).map(Decimal))
    def reservation_settle(self, hold: Hold, share: Decimal) -> None:
        reservation = Reservation.objects.get(pk=hold.id)
        quantity = (reservation.quantity * share).quantize(Decimal("0.000001"))
        customer = self._customer(hold.customer)
        before = self._spend_by_period(customer)
        try:
            _, usage_event = reservation_commit(reservation_id=hold.id, quantity=quantity)
        except BillingError:  # expired or released already
            return
        except DatabaseError as error:
            self.facts.crashes.append(f"commit of {hold.id} failed: {error}")
            return
        if usage_event.reservation_id != reservation.pk or reservation.status != ReservationStatus.HELD:
            return  # committed before: the same event again
        self.facts.commits.append((usage_event.id, reservation.held_cost, reservation.unit))
        limits = self.limits[hold.customer]
        if hold.limits.block_overage and limits.block_overage:
            self.facts.blocked_events.add(usage_event.id)
        if hold.limits.hard == limits.hard:
            self._check_hard_limit(hold.customer, before, limit=limits.hard, action=f"commit of {hold.id}")

    @rule(hold=reservations)
    def reservation_cancel(self, hold: Hold) -> None:
        with contextlib.suppress(BillingError):  # committed already
            reservation_release(reservation_id=hold.id)

    # --- paying and limits ----------------------------------------------------------------------------

    @rule(
        who=st.integers(0, 1),
        amount=st.sampled_from(["0.5", "5", "40"]).map(Decimal),
        money=st.booleans(),
        priority=st.sampled_from([10, 50, 90]),
        expires_in=st.sampled_from([None, 3600, 3 * 86400]),
    )
    def grant_give(
        self, who: int, amount: Decimal, money: bool, priority: int, expires_in: int | None
    ) -> None:
        credit_grant_create(
            customer=self._customer(who),
            amount=amount,
            unit="usd" if money else None,
            priority=priority,
            expires_at=None if expires_in is None else timezone.now() + timedelta(seconds=expires_in),
        )

    @rule(who=st.integers(0, 1), amount=st.sampled_from(["0.3", "2", "25"]).map(Decimal))
    def wallet_fill(self, who: int, amount: Decimal) -> None:
        wallet_top_up(customer=self._customer(who), amount=amount)

    @rule(who=st.integers(0, 1), hard=limits, block_overage=st.booleans())
    def limits_set(self, who: int, hard: Decimal | None, block_overage: bool) -> None:
        spend_controls_update(
            customer=self._customer(who), soft_limit=None, hard_limit=hard, block_overage=block_overage
        )
        self.limits[who] = Limits(hard, block_overage)

    @rule(who=st.integers(0, 1), plan=st.sampled_from(sorted(PLANS)))
    def plan_change(self, who: int, plan: str) -> None:
        subscription_change(customer=self._customer(who), plan_version=self.plans[plan])

    # --- time -----------------------------------------------------------------------------------------

    @rule(
        step=st.sampled_from(
            [
                timedelta(minutes=10),
                timedelta(hours=3),
                timedelta(days=2),
                timedelta(days=12),
                timedelta(days=33),
            ]
        ),
        housekeeping=st.booleans(),
    )
    def time_pass(self, step: timedelta, housekeeping: bool) -> None:
        self.traveller.shift(step)
        if housekeeping:
            self.housekeeping_run()

    @rule(who=st.integers(0, 1), side=st.sampled_from([-1, 1]), housekeeping=st.booleans())
    def time_to_period_end(self, who: int, side: int, housekeeping: bool) -> None:
        """Just before or just after a customer's period ends, where the days of two periods meet."""
        end = Subscription.objects.get(customer=self.customers[who]).current_period_end
        target = end + side * timedelta(minutes=30)
        if target > timezone.now():
            self.traveller.move_to(target)
        if housekeeping:
            self.housekeeping_run()

    def housekeeping_run(self) -> None:
        """What beat runs: periods roll, holds and grants past their end expire."""
        subscriptions_roll_periods_task()
        reservations_expire()
        credit_grants_expire()

    # --- checking -------------------------------------------------------------------------------------

    @invariant()
    def family_holds(self) -> None:
        if not self.customers:
            return
        problems = FAMILIES[self.family](self)
        assert not problems, f"{self.family} broken at {timezone.now().isoformat()}:\n" + "\n".join(problems)

    def _spend_by_period(self, customer: Customer) -> dict[datetime, Decimal]:
        """Usage charges per period, in money at the customer's plan's rate."""
        subscription = Subscription.objects.select_related("plan_version").get(customer=customer)
        terms = PlanTerms.of_version(subscription.plan_version)
        spend: dict[datetime, Decimal] = {}
        for start, cost, unit in PeriodUsage.objects.filter(customer=customer).values_list(
            "period_start", "cost", "unit"
        ):
            spend[start] = spend.get(start, ZERO) + terms.to_money(cost, unit or terms.currency)
        return spend

    def _check_hard_limit(
        self, who: int, before: dict[datetime, Decimal], *, limit: Decimal | None, action: str
    ) -> None:
        """Usage allowed under a hard limit never takes a period's spend past it (unless it already was)."""
        if limit is None:
            return
        for start, spend in self._spend_by_period(self._customer(who)).items():
            previous = before.get(start, ZERO)
            if spend > previous and spend > limit and previous <= limit:
                self.facts.hard_limit_passed.append(
                    f"{action} took {CUSTOMERS[who]}'s spend of the period {start:%Y-%m-%d %H:%M} "
                    f"from {previous} to {spend}, past the hard limit {limit}"
                )


def simulation_for(family: str, plans: dict[str, PlanVersion]) -> type[EngineSimulation]:
    """The machine enforcing one family of invariants, on the catalog ``plans``."""
    return type(f"Simulation_{family}", (EngineSimulation,), {"family": family, "plans": plans})
