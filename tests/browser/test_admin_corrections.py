"""Staff correct a usage event in admin: the form, the preview of the period's charges, then the record."""

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import Page, expect

from tests.catalog_fixtures import event
from usage.ingest import usage_events_ingest
from usage.ledger_audit import ledger_mismatches
from usage.models import PeriodUsage, UsageEvent

pytestmark = pytest.mark.browser


def test_staff_preview_then_record_a_correction(
    transactional_db, live_server, page: Page, pro_plan, make_customer
):
    make_customer("pro")
    [result] = usage_events_ingest(raw_events=[event("b", quantity=150)]).results
    get_user_model().objects.create_superuser("ops", "ops@example.com", "ops")
    page.goto(f"{live_server.url}/admin/login/")
    page.get_by_label("Username").fill("ops")
    page.get_by_label("Password").fill("ops")
    page.get_by_role("button", name="Log in").click()

    page.goto(f"{live_server.url}/admin/usage/usageevent/{result.id}/change/")
    page.get_by_role("link", name="Correct this event").click()
    page.get_by_label("Corrected quantity").fill("120")
    page.get_by_label("Reason").fill("retries were counted twice")
    page.get_by_role("button", name="Preview").click()

    expect(page.locator("#preview-summary")).to_contain_text("Records -30")
    charges = page.locator("#preview-charges")
    expect(charges).to_contain_text("5.00")
    expect(charges.locator("tr").last).to_contain_text("25.00")
    expect(charges.locator("tr").last).to_contain_text("22.00")
    assert UsageEvent.objects.count() == 1  # the preview wrote nothing

    page.get_by_role("button", name="Record correction").click()

    expect(page.locator(".messagelist")).to_contain_text(f"Event {result.id} corrected to 120")
    correction = UsageEvent.objects.get(corrects_id=result.id)
    assert (correction.quantity, correction.correction_reason) == (-30, "retries were counted twice")
    assert correction.corrected_by == "staff ops"
    assert PeriodUsage.objects.get().quantity == 120
    assert not ledger_mismatches()

    # Corrected again, the form starts from what the event counts now, not from what it first recorded.
    page.goto(f"{live_server.url}/admin/usage/usageevent/{result.id}/correct/")
    expect(page.get_by_label("Corrected quantity")).to_have_value("120")
    expect(page.locator("#content-main p").first).to_contain_text(", 120 ")
    expect(page.locator("#content-main p").first).to_contain_text("with its corrections below")
