"""Your bill on each plan, and the prompt that names the cheapest one when a cap is near."""

from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.utils import timezone

from customers.models import MemberRole
from tests.catalog_fixtures import event
from tests.customers.factories import MemberFactory, UserFactory
from usage.ingest import usage_events_ingest
from usage.selectors import usage_period_summary
from usage.selectors.plan_comparison import plan_comparison, upgrade_prompt

D = Decimal
PAGE = "/settings/usage"


@pytest.fixture
def plans(make_plan):
    """Free: 20 AI actions, capped. Pro: $20 a month, 1,000 included, then 2c. Pay as you go: 5c each."""
    make_plan(
        "free",
        prices=[{"meter": "ai_action", "model": "per_unit", "unit_amount": "0", "included": "20"}],
        entitlements=[{"feature": "ai_action", "limit": "20"}],
    )
    make_plan(
        "pro",
        base_fee="20.00",
        prices=[{"meter": "ai_action", "model": "per_unit", "unit_amount": "0.02", "included": "1000"}],
    )
    make_plan("payg", prices=[{"meter": "ai_action", "model": "per_unit", "unit_amount": "0.05"}])
    # A plan in another currency is never offered.
    make_plan(
        "euro", currency="eur", prices=[{"meter": "ai_action", "model": "per_unit", "unit_amount": "0.01"}]
    )


def use(count, *, customer="acme", prefix="a"):
    return usage_events_ingest(
        raw_events=[event(f"{prefix}{n}", customer=customer, meter="ai_action") for n in range(count)]
    )


def test_each_plan_rates_this_periods_usage_and_the_cheapest_that_allows_more_is_named(plans, make_customer):
    customer = make_customer("free")
    refused = use(21)
    assert refused.results[-1].code == "entitlement_limit_reached"

    summary = usage_period_summary(customer=customer)
    comparison = plan_comparison(customer=customer, summary=summary)

    bills = {bill.code: bill for bill in comparison.plans}
    assert set(bills) == {"free", "pro", "payg"}
    assert (bills["free"].total, bills["free"].covers, bills["free"].current) == (D("0.00"), False, True)
    assert (bills["pro"].total, bills["pro"].covers) == (D("20.00"), True)
    assert (bills["payg"].total, bills["payg"].covers) == (D("1.00"), True)  # 20 × 5c
    assert comparison.cheapest.code == "payg"
    assert bills["payg"].difference == D("1.00")

    prompt = upgrade_prompt(summary=summary, comparison=comparison)
    assert prompt.reached and prompt.plan.code == "payg"


def test_no_prompt_below_eighty_percent_of_a_cap(plans, make_customer):
    customer = make_customer("free")
    use(15)
    summary = usage_period_summary(customer=customer)
    assert (
        upgrade_prompt(summary=summary, comparison=plan_comparison(customer=customer, summary=summary))
        is None
    )

    use(1, prefix="b")  # 16 of 20
    summary = usage_period_summary(customer=customer)
    prompt = upgrade_prompt(summary=summary, comparison=plan_comparison(customer=customer, summary=summary))
    assert prompt is not None and not prompt.reached


def test_the_projection_is_rated_on_each_plan(plans, make_customer):
    customer = make_customer("pro")
    start = timezone.now()
    # 600 on the first whole day: the recent rate is 600 a day.
    first_whole_day = (start + timedelta(days=1)).replace(hour=12, minute=0)
    with time_machine.travel(first_whole_day, tick=False):
        use(600)
    with time_machine.travel(first_whole_day + timedelta(days=1), tick=False):
        summary = usage_period_summary(customer=customer)
        comparison = plan_comparison(customer=customer, summary=summary)

    projected = summary.meters[0].projected_quantity
    bills = {bill.code: bill for bill in comparison.plans}
    assert projected > 1000
    assert bills["pro"].projected_total == D("20.00") + ((projected - 1000) * D("0.02")).quantize(D("0.01"))
    assert bills["payg"].projected_total == (projected * D("0.05")).quantize(D("0.01"))
    assert bills["pro"].current and bills["pro"].difference == 0


def test_the_api_answers_the_comparison(api, plans, make_customer):
    make_customer("free")
    use(20)

    response = api.get("/api/v1/customers/acme/plan-comparison")

    assert response.status_code == 200
    body = response.json()
    assert body["current"] == {"plan": "free", "currency": "usd", "total": "0.00", "projected_total": "0.00"}
    assert body["cheapest"] == "payg"
    assert [(plan["plan"], plan["total"], plan["covers"]) for plan in body["plans"]] == [
        ("payg", "1.00", True),
        ("pro", "20.00", True),
        ("free", "0.00", False),
    ]
    assert api.get("/api/v1/customers/nobody/plan-comparison").status_code == 404


def test_the_page_shows_the_prompt_to_everyone_and_the_comparison_to_admins(client, plans, make_customer):
    customer = make_customer("free")
    use(20)
    admin = MemberFactory(customer=customer, role=MemberRole.ADMIN, user=UserFactory(username="ada"))
    member = MemberFactory(customer=customer, role=MemberRole.MEMBER, user=UserFactory(username="bo"))

    client.force_login(admin.user)
    page = client.get(PAGE).content.decode()
    assert 'data-testid="upgrade-prompt"' in page
    assert "used 20 of 20" in page
    assert "Payg would allow more" in page
    assert 'data-testid="plan-comparison"' in page

    client.force_login(member.user)
    page = client.get(PAGE).content.decode()
    assert 'data-testid="upgrade-prompt"' in page
    assert 'data-testid="plan-comparison"' not in page


def test_a_plan_that_does_not_price_a_meter_used_does_not_cover_it(plans, make_plan, make_customer):
    make_plan("exports-only", prices=[{"meter": "export", "model": "per_unit", "unit_amount": "0.01"}])
    customer = make_customer("pro")
    use(10)

    comparison = plan_comparison(customer=customer, summary=usage_period_summary(customer=customer))

    bills = {bill.code: bill for bill in comparison.plans}
    assert bills["exports-only"].total == D("0.00")
    assert not bills["exports-only"].covers
    assert comparison.cheapest.code != "exports-only"


def test_the_plan_in_force_shows_the_figures_it_charges(plans, make_customer):
    customer = make_customer("pro")
    use(10)
    summary = usage_period_summary(customer=customer)

    [current] = [bill for bill in plan_comparison(customer=customer, summary=summary).plans if bill.current]

    assert current.total == summary.base_fee + summary.spend.spend
    assert current.projected_total == summary.projection.total


def test_a_refusal_a_plan_could_lift_names_the_cheapest_plan_that_would(api, plans, make_plan, make_customer):
    make_customer("free")
    use(20)

    refused = api.post(
        "/api/v1/reservations",
        {"customer": "acme", "meter": "ai_action", "quantity": "1", "idempotency_key": "r1"},
        format="json",
    )

    assert refused.status_code == 402
    error = refused.json()["error"]
    assert error["code"] == "entitlement_limit_reached"
    assert error["limit"] == "20"
    # Pay-as-you-go has no cap and no base fee: the cheapest plan that allows a 21st action.
    assert error["upgrade"]["plan"] == "payg"
    assert error["upgrade"]["price"] == "0.00"
    assert error["upgrade"]["url"].endswith("/settings/plan")


def test_a_blocked_plans_refusal_names_a_plan_that_bills_overage(api, make_plan, make_customer):
    make_plan(
        "prepaid",
        overage="blocked",
        prices=[{"meter": "ai_action", "model": "per_unit", "unit_amount": "0.05"}],
    )
    make_plan(
        "pro", base_fee="20.00", prices=[{"meter": "ai_action", "model": "per_unit", "unit_amount": "0.02"}]
    )
    make_customer("prepaid")

    refused = api.post(
        "/api/v1/reservations",
        {"customer": "acme", "meter": "ai_action", "quantity": "1", "idempotency_key": "r1"},
        format="json",
    )

    error = refused.json()["error"]
    assert (refused.status_code, error["code"]) == (402, "insufficient_balance")
    assert error["upgrade"]["plan"] == "pro"


def test_a_customers_own_switch_offers_no_plan(api, pro_plan, make_customer):
    make_customer("pro", block_overage=True)
    use_calls = [event(f"c{n}") for n in range(100)]
    usage_events_ingest(raw_events=use_calls)

    refused = api.post(
        "/api/v1/reservations",
        {"customer": "acme", "meter": "api_call", "quantity": "1", "idempotency_key": "r1"},
        format="json",
    )

    assert refused.status_code == 402
    assert "upgrade" not in refused.json()["error"]


def test_a_prepaid_plan_is_never_named_as_the_cheapest_or_the_upgrade(api, plans, make_plan, make_customer):
    # Its bill is the packs bought, not the usage rated; without them it refuses the usage too.
    make_plan(
        "credits",
        overage="blocked",
        prices=[{"meter": "ai_action", "model": "per_unit", "unit": "credits", "unit_amount": "1"}],
        credit_packs=[{"price": "250.00", "credits": "50000"}],
    )
    customer = make_customer("free")
    use(20)

    comparison = plan_comparison(customer=customer, summary=usage_period_summary(customer=customer))
    refused = api.post(
        "/api/v1/reservations",
        {"customer": "acme", "meter": "ai_action", "quantity": "1", "idempotency_key": "r1"},
        format="json",
    )

    assert any(bill.code == "credits" and bill.prepaid for bill in comparison.plans)
    assert comparison.cheapest.code == "payg"
    assert refused.json()["error"]["upgrade"]["plan"] == "payg"
