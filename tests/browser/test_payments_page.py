"""Paying from /settings/usage in a real browser: Stripe's Checkout page is the fake's, which sends the signed
webhook to the live server as Stripe would."""

import re
from typing import Any

import pytest
from django.conf import settings as django_settings
from playwright.sync_api import Page, expect

from billing_app.models import CheckoutSession
from customers.models import Customer
from customers.services import plan_version_for_code, spend_controls_update
from tests.stripe_fake import FakeStripe
from usage.services import subscription_change

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def stripe_live(settings: Any, fake_stripe: FakeStripe, live_server) -> FakeStripe:
    settings.STRIPE_API_KEY = "sk_test_browser"
    settings.STRIPE_API_BASE = fake_stripe.url
    settings.STRIPE_MAX_NETWORK_RETRIES = 0
    fake_stripe.configure_webhooks(f"{live_server.url}/stripe/webhook", django_settings.STRIPE_WEBHOOK_SECRET)
    return fake_stripe


def wallet_text(page: Page) -> str:
    return page.get_by_test_id("wallet-balance").inner_text()


def test_an_admin_tops_up_the_wallet_through_checkout(
    acme: Customer, stripe_live, log_in, live_server, artifacts
):
    page = log_in("demo")
    before = wallet_text(page)
    page.screenshot(path=artifacts / "payments-admin.png", full_page=True)

    page.get_by_label("Top up the wallet by").fill("50")
    page.get_by_role("button", name="Pay by card").click()

    page.wait_for_url(re.compile(rf"^{re.escape(stripe_live.url)}/pay/cs_test_"))
    expect(page.get_by_text("Pay with test card 4242")).to_be_visible()
    session_id = page.url.rsplit("/", 1)[1]
    stripe_live.checkout_complete(session_id)  # the customer pays; the webhook reaches the live server

    page.goto(f"{live_server.url}/settings/usage")
    expect(page.get_by_test_id("wallet-balance")).not_to_have_text(before)
    assert CheckoutSession.objects.get(stripe_session_id=session_id).status == "complete"
    balance = acme.balance
    balance.refresh_from_db()
    expect(page.get_by_test_id("wallet-balance")).to_have_text(f"${balance.wallet_balance:,.2f}")
    expect(page.locator("#wallet")).to_contain_text(f"Top-up paid by card ({session_id})")


def test_a_credit_pack_bought_on_the_hosted_page_shows_on_return(
    acme: Customer, stripe_live, log_in, artifacts
):
    subscription_change(customer=acme, plan_version=plan_version_for_code("credits"))
    spend_controls_update(customer=acme, soft_limit=None, hard_limit=None, block_overage=True)
    page = log_in("demo")

    page.locator("#payments").get_by_role("button", name="Buy").first.click()
    page.wait_for_url(re.compile(r"/pay/cs_test_"))
    page.get_by_role("button", name="Pay with test card 4242").click()

    page.wait_for_url("**/settings/usage?checkout=complete#payments")
    expect(page.get_by_test_id("checkout-complete")).to_be_visible()
    expect(page.locator("#grants-table")).to_contain_text("Credit pack: 50000 credits")
    # The card is saved, and overage is blocked: automatic top-up may be turned on.
    page.get_by_label("Top up automatically").check()
    page.get_by_role("button", name="Save automatic top-up").click()
    expect(page.get_by_test_id("auto-top-up-status")).to_contain_text("On: when the wallet falls below")
    page.screenshot(path=artifacts / "payments-credit-pack.png", full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.locator("#payments").screenshot(path=artifacts / "payments-phone.png")


def test_a_member_sees_invoices_but_nothing_to_buy(acme: Customer, stripe_live, log_in, artifacts):
    page = log_in("member")
    page.set_viewport_size({"width": 390, "height": 844})

    expect(page.locator("#payments")).to_contain_text("Your account's admins add funds")
    expect(page.locator("#top-up-form")).to_have_count(0)
    expect(page.locator("#auto-top-up-form")).to_have_count(0)
    expect(page.locator("#upcoming-invoice-table")).to_be_visible()
    page.screenshot(path=artifacts / "payments-member-phone.png", full_page=True)
