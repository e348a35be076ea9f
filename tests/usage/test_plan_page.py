"""/settings/plan: a customer's admins change the plan themselves; an upgrade starts now, a downgrade at the
renewal (applied by the period roll), and members see the page read-only."""

from datetime import timedelta

import pytest

from customers.models import MemberRole, Notification, NotificationKind, Subscription
from customers.services import subscription_roll_period
from plans.models import PlanVersion
from tests.catalog_fixtures import event
from tests.customers.factories import MemberFactory, UserFactory
from usage.ingest import usage_events_ingest

PAGE = "/settings/plan"
CHOOSE = "/settings/plan/choose"


@pytest.fixture
def plans(make_plan):
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


@pytest.fixture
def people(plans, make_customer):
    customer = make_customer("free")
    admin = MemberFactory(customer=customer, role=MemberRole.ADMIN, user=UserFactory(username="ada"))
    member = MemberFactory(customer=customer, role=MemberRole.MEMBER, user=UserFactory(username="bo"))
    return customer, admin, member


def test_an_upgrade_starts_now_with_the_allowance_prorated(client, people):
    customer, admin, _ = people
    usage_events_ingest(raw_events=[event(f"a{n}", meter="ai_action") for n in range(20)])
    client.force_login(admin.user)

    response = client.post(CHOOSE, {"plan": "pro"})

    assert response.status_code == 302 and response["Location"].endswith("?done=now")
    subscription = Subscription.objects.get(customer=customer)
    assert subscription.plan_version.plan.code == "pro"
    assert subscription.pending_plan_version is None
    assert Notification.objects.filter(customer=customer, kind=NotificationKind.PLAN_CHANGED).count() == 1
    # Over the cap on Free, fine on Pro now.
    accepted = usage_events_ingest(raw_events=[event("after", meter="ai_action")])
    assert accepted.results[0].status == "accepted"
    page = client.get(response["Location"]).content.decode()
    assert "Your plan is now Pro" in page


def test_a_downgrade_waits_for_the_renewal_and_the_roll_applies_it(client, people):
    customer, admin, _ = people
    Subscription.objects.filter(customer=customer).update(
        plan_version=PlanVersion.objects.get(plan__code="pro")
    )
    client.force_login(admin.user)

    response = client.post(CHOOSE, {"plan": "free"})

    assert response["Location"].endswith("?done=renewal")
    subscription = Subscription.objects.get(customer=customer)
    assert subscription.plan_version.plan.code == "pro"
    assert subscription.pending_plan_version.plan.code == "free"
    page = client.get(PAGE).content.decode()
    assert "Starts" in page and "Keep it" in page

    assert subscription_roll_period(
        subscription=subscription, now=subscription.current_period_end + timedelta(seconds=1)
    )
    subscription.refresh_from_db()
    assert subscription.plan_version.plan.code == "free"


def test_keeping_the_plan_cancels_a_scheduled_downgrade(client, people):
    customer, admin, _ = people
    client.force_login(admin.user)
    client.post(CHOOSE, {"plan": "pro"})
    client.post(CHOOSE, {"plan": "free"})
    assert Subscription.objects.get(customer=customer).pending_plan_version is not None

    client.post(CHOOSE, {"plan": "pro"})

    assert Subscription.objects.get(customer=customer).pending_plan_version is None
    assert Notification.objects.filter(customer=customer, message__contains="cancelled").exists()


def test_members_see_the_plans_but_cannot_change_them(client, people):
    customer, _, member = people
    client.force_login(member.user)

    page = client.get(PAGE)
    assert page.status_code == 200
    text = page.content.decode()
    assert 'data-testid="plan-choices"' in text and "Switch now" not in text
    assert client.post(CHOOSE, {"plan": "pro"}).status_code == 403
    assert Subscription.objects.get(customer=customer).plan_version.plan.code == "free"


def test_an_unknown_or_foreign_currency_plan_is_refused_with_a_message(client, people, make_plan):
    customer, admin, _ = people
    make_plan(
        "euro", currency="eur", prices=[{"meter": "ai_action", "model": "per_unit", "unit_amount": "1"}]
    )
    client.force_login(admin.user)

    for code in ("nope", "euro"):
        response = client.post(CHOOSE, {"plan": code})
        assert response.status_code == 400
        assert 'role="alert"' in response.content.decode()
    assert Subscription.objects.get(customer=customer).plan_version.plan.code == "free"
    assert not Notification.objects.filter(customer=customer).exists()


def test_the_page_shows_this_periods_bill_on_each_plan(client, people):
    _, admin, _ = people
    usage_events_ingest(raw_events=[event(f"a{n}", meter="ai_action") for n in range(10)])
    client.force_login(admin.user)

    text = client.get(PAGE).content.decode()

    assert "Your bill on each plan" in text
    assert "$20.00" in text  # Pro's base fee, and its bill this period
    assert "Switch now" in text  # Pro costs more per period: it would start now
