"""What a customer sees on /settings/usage in a real browser, and what the limits form does to the API."""

import re

import pytest
from playwright.sync_api import Page, expect

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_admin_sees_numbers_projection_chart_and_tables(acme, log_in, artifacts):
    page = log_in("demo")

    # LLM usage is shown as money (the demo catalog's display), never in tokens.
    tokens = page.locator('[data-meter="llm_tokens"]')
    expect(tokens.get_by_test_id("meter-quantity")).to_have_text(re.compile(r"^\$\d[\d,]*\.\d\d$"))
    expect(tokens).not_to_contain_text("token")
    actions = page.locator('[data-meter="ai_action"]')
    expect(actions).to_contain_text("of 100,000 included")
    expect(page.get_by_test_id("projection-sentence")).to_contain_text("On track for $")
    expect(page.get_by_test_id("projection-sentence")).to_contain_text("over included")
    chart = page.locator("#usage-chart")
    expect(chart.locator(".main-svg").first).to_be_visible()
    daily = chart.evaluate("el => el.data[0].y")
    assert len(daily) >= 12
    assert sum(daily) > 0
    expect(page.locator("#top-actions-table")).to_contain_text("generate_report")
    expect(page.locator("#members-table")).to_contain_text("Raj Patel")
    expect(page.locator("#wallet")).to_contain_text("Launch promotion")
    page.screenshot(path=artifacts / "usage-admin.png", full_page=True)

    page.select_option("#chart-meter", "ai_action")
    page.get_by_role("button", name="Cumulative").click()
    quota_line = chart.evaluate("el => el.layout.shapes[0].y0")
    assert quota_line == 100_000  # Hybrid's included AI actions
    chart.screenshot(path=artifacts / "usage-chart-cumulative.png")

    # LLM usage is shown to customers as money (the catalog's "display": "money"): the chart draws what it
    # cost, 8.64M tokens of which 5M were included, with no allowance line in tokens.
    page.select_option("#chart-meter", "llm_tokens")
    cumulative = chart.evaluate("el => el.data[0].y")
    card = page.locator('[data-meter="llm_tokens"] [data-testid="meter-quantity"]').inner_text()
    assert f"${cumulative[-1]:,.2f}" == card
    assert chart.evaluate("el => el.layout.shapes.length") == 0


def test_a_hard_limit_set_on_the_page_refuses_a_reservation_over_the_api(acme, log_in, api_client, artifacts):
    page = log_in("demo")
    reservation = {
        "customer": "acme",
        "meter": "llm_tokens",
        "quantity": 1000,
        "properties": {"model": "gpt-4o"},
    }
    assert (
        api_client.post("/reservations", json={**reservation, "idempotency_key": "before"}).status_code == 201
    )

    page.get_by_label("Stop billable usage at").fill("10")
    page.get_by_role("button", name="Save limits").click()

    expect(page.locator("#limits")).to_contain_text("Limits saved")
    expect(page.locator("#spend")).to_contain_text("stop at $10.00")  # the summary refreshed itself
    refused = api_client.post("/reservations", json={**reservation, "idempotency_key": "after"})
    assert refused.status_code == 402
    assert refused.json()["error"]["code"] == "hard_limit_reached"
    page.screenshot(path=artifacts / "usage-hard-limit.png", full_page=True)


def test_the_limits_form_explains_a_hard_limit_below_the_soft_one(acme, log_in):
    page = log_in("demo")

    page.get_by_label("Warn me at").fill("20")
    page.get_by_label("Stop billable usage at").fill("10")
    page.get_by_role("button", name="Save limits").click()

    expect(page.locator("#hard-limit-error")).to_have_text("The hard limit must be at least the soft limit.")


def test_a_member_finds_no_member_table_and_no_limits_form(acme, log_in, artifacts):
    page = log_in("member")
    page.set_viewport_size({"width": 390, "height": 844})

    expect(page.locator("#my-usage")).to_contain_text("of your account's usage")
    expect(page.locator("#members-table")).to_have_count(0)
    expect(page.locator("#limits-form")).to_have_count(0)
    expect(page.locator("#limits")).to_contain_text("Set by your account's admins")
    page.screenshot(path=artifacts / "usage-member-phone.png", full_page=True)


def test_an_anonymous_visitor_is_asked_to_log_in(page: Page, live_server):
    page.goto(f"{live_server.url}/settings/usage")

    expect(page).to_have_url(f"{live_server.url}/accounts/login/?next=/settings/usage")
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()


def test_the_public_pricing_page(page: Page, live_server, acme, artifacts):
    page.goto(f"{live_server.url}/pricing")

    expect(page.locator("#plan-hybrid")).to_contain_text("$999.00")
    page.screenshot(path=artifacts / "pricing.png", full_page=True)
