"""/pricing in a real browser: the five demo plans fit one 1366×900 screen, caps are said plainly, a
prepaid plan is headed by its pack, and a signed-in customer's plan is marked."""

import pytest
from playwright.sync_api import Page, expect

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_five_plans_fit_one_screen_and_say_where_usage_stops(page: Page, live_server, acme, artifacts):
    page.set_viewport_size({"width": 1366, "height": 900})
    page.goto(f"{live_server.url}/pricing")

    plans = page.locator("article.plan")
    expect(plans).to_have_count(5)
    height = page.evaluate("document.documentElement.scrollHeight")
    page.screenshot(path=str(artifacts / "pricing-1366.png"), full_page=True)
    assert height <= 900, f"the pricing page is {height} px tall at 1366 px wide"
    free = page.locator("#plan-free")
    expect(free).to_contain_text("20 actions, then stops at 20 a month")
    expect(free).not_to_contain_text("Then")
    expect(page.locator("#plan-pro")).to_contain_text("Included 1,000 actions")
    expect(page.locator("#plan-credits .big-number")).to_have_text("$250.00 for 50,000 credits")


def test_a_signed_in_customer_sees_their_plan_marked(log_in, live_server, acme):
    page = log_in("demo")
    page.goto(f"{live_server.url}/pricing")

    expect(page.locator("#plan-hybrid [data-testid=current-plan]")).to_have_text("Your plan")
    expect(page.locator("[data-testid=current-plan]")).to_have_count(1)
