"""The pages work under our Content-Security-Policy: nothing is refused, and the chart still draws."""

from collections.abc import Callable

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import ConsoleMessage, Page, expect

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def violations(page: Page) -> list[str]:
    """What Chromium refused under the policy: each refusal is a console error naming the policy."""
    seen: list[str] = []

    def note(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            seen.append(message.text)

    page.on("console", note)
    return seen


def _has_policy(page: Page, url: str) -> None:
    response = page.request.get(url)
    assert "script-src 'self'" in response.headers["content-security-policy"]


def test_the_usage_page_draws_its_chart_and_refreshes_under_the_policy(
    acme, log_in: Callable[[str], Page], violations: list[str], live_server
):
    page = log_in("demo")

    chart = page.locator("#usage-chart")
    expect(chart.locator(".main-svg").first).to_be_visible()
    # plotly's own stylesheet is applied (from our file, not injected): its layers are stacked.
    assert chart.locator(".main-svg").first.evaluate("el => getComputedStyle(el).position") == "absolute"
    page.select_option("#chart-meter", "ai_action")  # a meter drawn in units, with its allowance line
    page.get_by_role("button", name="Cumulative").click()
    assert chart.evaluate("el => el.layout.shapes.length") == 1
    # An HTMX refresh of a region works too.
    with page.expect_response("**/settings/usage/partials/summary*"):
        page.evaluate("htmx.trigger(document.body, 'usage-changed')")
    expect(page.locator("#summary")).to_be_visible()
    _has_policy(page, f"{live_server.url}/settings/usage")
    assert violations == []


def test_the_admin_works_under_the_policy(page: Page, live_server, violations: list[str]):
    get_user_model().objects.create_superuser("ops", "ops@example.com", "ops")
    page.goto(f"{live_server.url}/admin/")
    page.get_by_label("Username").fill("ops")
    page.get_by_label("Password").fill("ops")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Site administration")).to_be_visible()
    page.goto(f"{live_server.url}/admin/auth/user/add/")
    expect(page.get_by_label("Username")).to_be_visible()
    _has_policy(page, f"{live_server.url}/admin/")
    assert violations == []


def test_the_api_docs_render_under_the_policy(page: Page, live_server, violations: list[str]):
    page.goto(f"{live_server.url}/api/docs")
    expect(page.get_by_text("Billing metering API").first).to_be_visible(timeout=20_000)
    expect(page.get_by_text("/api/v1/events").first).to_be_attached()
    assert violations == []
