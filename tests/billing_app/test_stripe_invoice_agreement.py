"""We rate, Stripe invoices: for every price model, the finalized Stripe invoice equals our charges to the cent.

Each scenario runs a period end to end with the real SDK against the fake: sync, usage through ingest, the
outbox drain, the period's end (carries settled, the drain run again) and the fake's period close, which
invoices the meters and finalizes. The local side is read from the usage ledger, not from the outbox: per
Stripe line, the overage money of the period's events, rounded once.
"""

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.utils import timezone

from billing_app.models import ReconciliationDivergence
from billing_app.stripe.carries import usage_carries_finalize
from billing_app.stripe.outbox import outbox_drain
from billing_app.stripe.reconciliation import reconciliation_run
from billing_app.stripe.sync.pending import stripe_sync_pending
from core.money import CREDITS, round_money
from customers.models import Customer, Subscription
from plans.models import PriceModel
from plans.terms import PlanTerms
from tests.billing_app.conftest import calls, ingest
from tests.catalog_fixtures import event
from tests.stripe_fake import FakeStripe
from usage.models import UsageEvent
from usage.services import credit_grant_create, wallet_top_up

D = Decimal
Line = tuple[str, str]  # (meter key, dimension value with its own Stripe meter, or "")


@dataclass
class Scenario:
    prices: list[dict[str, Any]]
    batches: list[list[tuple[str, str, str]]]  # per batch: (meter, quantity, dimension value or "")
    expected: dict[Line, str]  # the local charges we worked out by hand, per line
    credit_packs: list[dict[str, Any]] = field(default_factory=list)
    wallet: str | None = None
    grant_credits: str | None = None
    grant_money: str | None = None


GRADUATED = [
    {"up_to": "1000", "unit_amount": "0.02"},
    {"up_to": None, "unit_amount": "0.01"},
]
# A volume price whose second tier is cheaper: crossing it lowers the rate of every unit already billed, so
# the engine gives money back (a negative overage) and Stripe must take it off too.
VOLUME = [
    {"up_to": "1000", "unit_amount": "0.01"},
    {"up_to": None, "unit_amount": "0.008"},
]
LLM_RATES = {"gpt-4o": "0.01", "gpt-4o-mini": "0.0006"}

SCENARIOS = {
    # 100 included, then $0.10: 150 calls are $5.00, of which a $1 wallet pays $1.
    "per-unit-with-wallet": Scenario(
        prices=[{"meter": "api_call", "model": "per_unit", "unit_amount": "0.10", "included": "100"}],
        batches=[[("api_call", "120", "")], [("api_call", "30", "")]],
        wallet="1.00",
        expected={("api_call", ""): "4.00"},
    ),
    # 3,000 actions: 1,000 at 2c and 2,000 at 1c = $40.00; Stripe re-rating used to bill $20.00.
    "graduated": Scenario(
        prices=[{"meter": "ai_action", "model": "graduated", "tiers": GRADUATED}],
        batches=[[("ai_action", "1500", "")], [("ai_action", "1500", "")]],
        expected={("ai_action", ""): "40.00"},
    ),
    # The same with a $10 wallet paying the first $10: $30.00 (Stripe used to bill $10.00).
    "graduated-with-wallet": Scenario(
        prices=[{"meter": "ai_action", "model": "graduated", "tiers": GRADUATED}],
        batches=[[("ai_action", "1500", "")], [("ai_action", "1500", "")]],
        wallet="10.00",
        expected={("ai_action", ""): "30.00"},
    ),
    # 1,000 units cost $10.00 and are sent; 100 more move all 1,100 to 0.8c: $8.80, $1.20 given back;
    # 460 more make 1,560 at 0.8c: $12.48.
    "volume-with-give-back": Scenario(
        prices=[{"meter": "ai_action", "model": "volume", "tiers": VOLUME}],
        batches=[[("ai_action", "1000", "")], [("ai_action", "100", "")], [("ai_action", "460", "")]],
        expected={("ai_action", ""): "12.48"},
    ),
    # 100 included, then $5 per started 1,000: 2,600 exports are 3 packages.
    "package": Scenario(
        prices=[
            {
                "meter": "export",
                "model": "package",
                "included": "100",
                "package_size": "1000",
                "package_amount": "5.00",
            }
        ],
        batches=[[("export", "700", "")], [("export", "1800", "")], [("export", "100", "")]],
        expected={("export", ""): "15.00"},
    ),
    # Per 1K tokens by model; fractions of a cent add up across events and are settled at period end.
    "dimensional": Scenario(
        prices=[
            {
                "meter": "llm_1k_tokens",
                "model": "dimensional",
                "dimension": "model",
                "rates": LLM_RATES,
                "default_rate": None,
            }
        ],
        batches=[
            [("llm_1k_tokens", "12.5", "gpt-4o"), ("llm_1k_tokens", "333", "gpt-4o-mini")],
            [("llm_1k_tokens", "7.25", "gpt-4o"), ("llm_1k_tokens", "500", "gpt-4o-mini")],
        ],
        # gpt-4o: 19.75 × 1c = 19.75c; gpt-4o-mini: 833 × 0.06c = 49.98c.
        expected={("llm_1k_tokens", "gpt-4o"): "0.20", ("llm_1k_tokens", "gpt-4o-mini"): "0.50"},
    ),
    # 2 credits an action, credits at 1c (a 1,000-credit pack for $10): 600 actions are 1,200 credits;
    # a 500-credit grant and a $4 wallet (400 credits) pay 900; 300 are overage.
    "credits-with-grants-and-wallet": Scenario(
        prices=[{"meter": "ai_action", "model": "per_unit", "unit": "credits", "unit_amount": "2"}],
        credit_packs=[{"price": "10.00", "credits": "1000"}],
        batches=[[("ai_action", "250", "")], [("ai_action", "350", "")]],
        grant_credits="500",
        wallet="4.00",
        expected={("ai_action", ""): "3.00"},
    ),
}


def local_lines(customer: Customer) -> dict[Line, Decimal]:
    """Our charges per Stripe line, from the usage ledger: each event's overage money, summed, rounded once."""
    subscription = Subscription.objects.select_related("plan_version").get(customer=customer)
    terms = PlanTerms.of_version(subscription.plan_version)
    exact: dict[Line, Decimal] = defaultdict(Decimal)
    for usage in UsageEvent.objects.filter(customer=customer).select_related("meter"):
        if not usage.overage_amount:
            continue
        price = terms.prices[usage.meter_id]
        own_meter = price.model == PriceModel.DIMENSIONAL and usage.dimension_value in terms.dimension_values(
            usage.meter_id
        )
        line = (usage.meter.key, usage.dimension_value if own_meter else "")
        exact[line] += terms.to_money(usage.overage_amount, usage.cost_unit)
    return {line: round_money(amount, terms.currency) for line, amount in exact.items()}


def stripe_lines(fake: FakeStripe, invoice: dict[str, Any]) -> dict[Line, Decimal]:
    lines = {}
    for line in invoice["lines"]["data"]:
        price = fake.get(line["pricing"]["price_details"]["price"])
        metadata = price["metadata"]
        if line["amount"]:
            lines[(metadata["meter"], metadata.get("dimension_value", ""))] = D(line["amount"]) / 100
    return lines


def run_period(
    fake: FakeStripe,
    make_plan: Callable[..., Any],
    make_customer: Callable[..., Customer],
    scenario: Scenario,
) -> tuple[Customer, dict[str, Any]]:
    """One customer's period from signup to Stripe's finalized invoice."""
    make_plan("metered", prices=scenario.prices, credit_packs=scenario.credit_packs)
    customer = make_customer("metered")
    if scenario.wallet:
        wallet_top_up(customer=customer, amount=D(scenario.wallet))
    if scenario.grant_credits:
        credit_grant_create(customer=customer, amount=D(scenario.grant_credits), unit=CREDITS)
    if scenario.grant_money:
        credit_grant_create(customer=customer, amount=D(scenario.grant_money), unit="usd")
    report = stripe_sync_pending()
    assert not report.errors
    subscription = Subscription.objects.get(customer=customer)
    start = subscription.current_period_start
    for number, batch in enumerate(scenario.batches):
        with time_machine.travel(start + timedelta(days=number + 1, minutes=30), tick=True):
            ingest(
                *(
                    event(
                        f"e{number}-{index}",
                        meter=meter,
                        quantity=quantity,
                        **({"properties": {"model": value}} if value else {}),
                    )
                    for index, (meter, quantity, value) in enumerate(batch)
                )
            )
            outbox_drain()
    with time_machine.travel(subscription.current_period_end + timedelta(minutes=1), tick=True):
        usage_carries_finalize()
        outbox_drain()
        subscription.refresh_from_db()
        [invoice] = fake.close_period(subscription.stripe_subscription_id)
    return customer, invoice


@pytest.mark.parametrize("name", SCENARIOS)
def test_stripes_finalized_invoice_equals_our_charges_line_by_line(name, stripe_on, make_plan, make_customer):
    scenario = SCENARIOS[name]
    customer, invoice = run_period(stripe_on, make_plan, make_customer, scenario)

    assert invoice["status"] == "open"  # finalized
    expected = {line: D(amount) for line, amount in scenario.expected.items()}
    assert local_lines(customer) == expected
    assert stripe_lines(stripe_on, invoice) == expected
    assert D(invoice["total"]) / 100 == sum(expected.values())


def test_a_give_back_reaches_stripe_as_a_negative_value(stripe_on, make_plan, make_customer):
    run_period(stripe_on, make_plan, make_customer, SCENARIOS["volume-with-give-back"])

    values = [int(record.payload["value"]) for record in stripe_on.meter_events()]
    assert values == [1000, -120, 368]
    assert sum(values) == 1248


def test_a_period_ending_on_a_give_back_bills_the_lower_total(stripe_on, make_plan, make_customer):
    scenario = Scenario(
        prices=[{"meter": "ai_action", "model": "volume", "tiers": VOLUME}],
        batches=[[("ai_action", "1000", "")], [("ai_action", "100", "")]],
        expected={("ai_action", ""): "8.80"},  # 1,100 × 0.8c
    )
    customer, invoice = run_period(stripe_on, make_plan, make_customer, scenario)

    assert [int(record.payload["value"]) for record in stripe_on.meter_events()] == [1000, -120]
    assert local_lines(customer) == {("ai_action", ""): D("8.80")}
    assert stripe_lines(stripe_on, invoice) == {("ai_action", ""): D("8.80")}


def test_reconciliation_finds_no_divergence_after_the_period(stripe_on, make_plan, make_customer):
    customer, _ = run_period(stripe_on, make_plan, make_customer, SCENARIOS["dimensional"])

    subscription = Subscription.objects.get(customer=customer)
    with time_machine.travel(subscription.current_period_end + timedelta(minutes=2), tick=False):
        report = reconciliation_run()

    assert report.checked >= 2
    assert not ReconciliationDivergence.objects.exists()


def test_usage_in_the_first_minute_is_on_stripes_invoice_though_the_sync_ran_later(
    stripe_on, pro_plan, make_customer
):
    signup = timezone.now().replace(microsecond=654321) + timedelta(days=1)
    with time_machine.travel(signup, tick=False):
        customer = make_customer("pro")
    with time_machine.travel(signup + timedelta(seconds=20), tick=False):
        ingest(*calls("first-minute", 130))  # 30 past the allowance: $3.00
    with time_machine.travel(signup + timedelta(minutes=3), tick=True):
        assert not stripe_sync_pending().errors
        outbox_drain()
    subscription = Subscription.objects.get(customer=customer)
    remote = stripe_on.get(subscription.stripe_subscription_id)
    for item in remote["items"]["data"]:
        assert item["current_period_start"] == int(subscription.current_period_start.timestamp())
        assert item["current_period_end"] == int(subscription.current_period_end.timestamp())
    [record] = stripe_on.meter_events()
    assert record.timestamp == int(signup.timestamp())

    with time_machine.travel(subscription.current_period_end + timedelta(minutes=1), tick=True):
        usage_carries_finalize()
        outbox_drain()
        [invoice] = stripe_on.close_period(subscription.stripe_subscription_id)

    assert local_lines(customer) == {("api_call", ""): D("3.00")}
    assert stripe_lines(stripe_on, invoice) == {("api_call", ""): D("3.00")}
