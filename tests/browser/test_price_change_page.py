"""A price change in a real browser: the email's link asks before it chooses, works once, and the plan page
shows an admin the change, their bill on both versions and the two buttons."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from playwright.sync_api import Page, expect

from customers.models import MemberRole, Subscription
from customers.services import member_create
from plans.models import Meter
from tests.usage.test_price_change_notice import draft, notify, period_usage
from usage.models import MigrationChoice, PlanMigrationNotice
from usage.plan_migrations import price_change_link_token

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def noticed(make_plan, make_customer):
    """Acme on Pro v1 ($20, 100 calls included then 10c) for three months of 600 calls; told of v2 ($25,
    then 8c), whose date is 61 days away. Maya is its admin (login maya / maya)."""
    make_plan(
        "pro",
        base_fee="20.00",
        prices=[{"meter": "api_call", "model": "per_unit", "unit_amount": "0.10", "included": "100"}],
    )
    customer = make_customer("pro", "acme")
    user = get_user_model().objects.create_user("maya", "maya@acme.example", "maya")
    member_create(
        customer=customer, external_id="maya", email="maya@acme.example", role=MemberRole.ADMIN, user=user
    )
    for months_ago in (1, 2, 3):
        period_usage(customer, Meter.objects.get(key="api_call"), 600, months_ago=months_ago)
    v2 = draft(
        "pro",
        base_fee="25.00",
        prices=[{"meter": "api_call", "model": "per_unit", "unit_amount": "0.08", "included": "100"}],
    )
    notify(v2)
    return PlanMigrationNotice.objects.get(customer=customer)


def test_the_emailed_link_asks_first_then_keeps_the_plan_once(page: Page, live_server, noticed, artifacts):
    url = f"{live_server.url}/settings/plan/price-change/{price_change_link_token(notice=noticed, choice='keep')}"

    page.goto(url)

    expect(page.get_by_role("heading", name="Keep my current plan?")).to_be_visible()
    # 3 × ($20 + 500 × 10c) = $210 on v1; 3 × ($25 + 500 × 8c) = $195 on v2.
    expect(page.locator("[data-testid=price-change-choice]")).to_contain_text("cost $210.00")
    expect(page.locator("[data-testid=price-change-choice]")).to_contain_text("would have cost $195.00")
    noticed.refresh_from_db()
    assert noticed.choice == MigrationChoice.PENDING  # opening the link chose nothing
    page.screenshot(path=str(artifacts / "price-change-confirm.png"), full_page=True)

    page.get_by_test_id("price-change-confirm").click()

    expect(page.get_by_test_id("price-change-done")).to_contain_text("stays on Pro v1")
    assert Subscription.objects.get(customer=noticed.customer).grandfathered
    page.goto(url)
    expect(page.get_by_test_id("price-change-already")).to_contain_text(
        "Already chosen: Keep the current plan"
    )
    expect(page.get_by_test_id("price-change-confirm")).to_have_count(0)


def test_the_plan_page_shows_both_bills_and_an_admin_accepts(log_in, live_server, noticed, artifacts):
    page = log_in("maya")
    page.goto(f"{live_server.url}/settings/plan")

    panel = page.get_by_test_id("price-change")
    expect(panel).to_contain_text("Pro prices change: v1 → v2")
    bill = panel.get_by_test_id("price-change-bill")
    expect(bill).to_contain_text("1,800")  # calls over the three periods
    expect(bill.get_by_role("row", name="Your current plan (v1)")).to_contain_text("$210.00")
    expect(bill.get_by_role("row", name="The new version (v2)")).to_contain_text("$195.00")
    page.screenshot(path=str(artifacts / "price-change-plan-page.png"), full_page=True)

    panel.get_by_test_id("price-change-accept").click()

    expect(page.get_by_test_id("plan-done")).to_contain_text("You accepted the new prices")
    expect(page.get_by_test_id("price-change")).to_contain_text("You accepted v2")
    expect(page.get_by_test_id("price-change-keep")).to_have_count(0)
    noticed.refresh_from_db()
    assert (noticed.choice, noticed.chosen_by) == (MigrationChoice.ACCEPT, "plan page (maya)")
    assert noticed.choose_by > timezone.now() + timedelta(days=59)
