"""Units customers understand, in a real browser: a meter shown as money and one shown in a product unit, on
/settings/usage and /pricing."""

import re
from decimal import Decimal

import pytest
from playwright.sync_api import Page, expect

from plans.models import DisplayMode, Meter

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def actions_as_reports(acme) -> None:
    """AI actions shown as reports of 40 actions each: Acme's 14,400 actions are 360 reports."""
    Meter.objects.filter(key="ai_action").update(
        display_mode=DisplayMode.UNIT, display_unit="reports", display_divisor=Decimal(40)
    )


def test_the_usage_page_shows_money_and_product_units(actions_as_reports, log_in, artifacts):
    page: Page = log_in("demo")

    llm = page.locator('[data-meter="llm_tokens"]')
    expect(llm.get_by_test_id("meter-quantity")).to_have_text(re.compile(r"^\$\d[\d,]*\.\d\d$"))
    expect(llm.locator(".unit").first).to_have_text("of LLM usage")
    expect(llm).not_to_contain_text("token")
    reports = page.locator('[data-meter="ai_action"]')
    expect(reports.get_by_test_id("meter-quantity")).to_have_text("360")
    expect(reports.locator(".unit").first).to_have_text("reports")
    expect(reports).to_contain_text("of 2,500 included")  # Hybrid's 100,000 actions
    page.screenshot(path=artifacts / "usage-display-units.png", full_page=True)


def test_the_pricing_page_shows_money_and_product_units(actions_as_reports, page: Page, live_server):
    page.goto(f"{live_server.url}/pricing")

    hybrid = page.locator("#plan-hybrid")
    expect(hybrid).to_contain_text("Included 2,500 reports")
    expect(hybrid).to_contain_text("$3.00–$75.00 of usage")
    expect(hybrid).not_to_contain_text("5,000,000 tokens")
    expect(hybrid).to_contain_text("$0.32 per report")  # $0.008 an action, 40 actions a report
