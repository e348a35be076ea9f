"""The default soft limit on /settings/usage: shown to a customer with closed periods, turned off by an admin."""

from datetime import timedelta
from decimal import Decimal

import pytest
from playwright.sync_api import expect

from customers.models import Customer, SpendControls
from customers.services import spend_controls_update
from plans.models import Meter
from usage.models import PeriodUsage

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def three_closed_periods(customer: Customer, *charges: str) -> None:
    """Periods before the current one that charged ``charges`` for LLM usage (oldest first); the customer's
    own soft limit removed, so the default applies."""
    subscription = customer.subscription
    meter = Meter.objects.get(key="llm_tokens")
    for age, cost in enumerate(reversed(charges), start=1):
        start = subscription.current_period_start - timedelta(days=31 * age)
        PeriodUsage.objects.create(
            customer=customer,
            meter=meter,
            period_start=start,
            period_end=start + timedelta(days=31),
            quantity=Decimal(9_000_000),
            cost=Decimal(cost),
            overage_amount=Decimal(cost),
        )
    spend_controls_update(customer=customer, soft_limit=None, hard_limit=None, block_overage=False)
    # History written after the customer's default was computed for the period: computed again on reading.
    SpendControls.objects.filter(customer=customer).update(default_soft_limit_period_start=None)


def test_the_admin_sees_the_default_and_turns_it_off(acme, log_in, api_client, artifacts):
    three_closed_periods(acme, "40.00", "100.00", "60.00")  # median 60: the default is $48.00
    page = log_in("demo")
    page.set_viewport_size({"width": 1366, "height": 900})

    note = page.get_by_test_id("default-soft-limit")
    expect(note).to_have_text(
        "Default: 80% of your typical spend ($48.00). Change it by entering an amount above, or turn it off below."
    )
    expect(page.locator("#spend")).to_contain_text("Warn at $48.00 (default)")
    expect(page.get_by_label("Warn me at")).to_have_attribute("placeholder", "Default $48.00")
    page.locator("#limits").screenshot(path=artifacts / "default-soft-limit-1366.png")
    assert api_client.get("/customers/acme/limits").json()["soft_limit_source"] == "default"

    page.get_by_label("Turn off the default warning").check()
    page.get_by_role("button", name="Save limits").click()

    expect(page.locator("#limits")).to_contain_text("Limits saved")
    expect(note).to_contain_text("is off")
    expect(page.locator("#spend")).not_to_contain_text("Warn at")
    limits = api_client.get("/customers/acme/limits").json()
    assert (limits["default_soft_limit_off"], limits["soft_limit_in_force"]) == (True, None)

    page.get_by_label("Turn off the default warning").uncheck()
    page.get_by_role("button", name="Save limits").click()
    expect(page.locator("#spend")).to_contain_text("Warn at $48.00 (default)")


def test_a_member_reads_the_default_without_controls(acme, log_in, artifacts):
    three_closed_periods(acme, "40.00", "100.00", "60.00")
    page = log_in("member")
    page.set_viewport_size({"width": 390, "height": 844})

    expect(page.locator("#limits")).to_contain_text("Warn at: $48.00 (default: 80% of your typical spend)")
    expect(page.get_by_label("Turn off the default warning")).to_have_count(0)
    page.locator("#limits").screenshot(path=artifacts / "default-soft-limit-member-390.png")
    page.screenshot(path=artifacts / "default-soft-limit-390.png", full_page=True)
