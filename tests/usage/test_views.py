"""/settings/usage: who may see what, every HTMX region, the limits form, and the numbers against the API."""

import gzip
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.core import mail
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from core.money import format_money
from customers.models import Member, MemberRole, SpendControls
from tests.catalog_fixtures import event
from tests.customers.factories import (
    MemberFactory,
    SpendControlsFactory,
    SubscriptionFactory,
    UserFactory,
)
from tests.plans.factories import MeterFactory, PlanVersionFactory, PriceFactory
from tests.usage.factories import (
    CreditGrantFactory,
    CustomerBalanceFactory,
    DailyUsageRollupFactory,
    NotificationFactory,
    PeriodUsageFactory,
)
from usage.views import PARTIALS, PLOTLY_VERSION

pytestmark = pytest.mark.django_db

PAGE = "/settings/usage"
HTMX = {"HTTP_HX_REQUEST": "true"}


def _customer(name, *, quantity, members):
    version = PlanVersionFactory(base_fee=Decimal("20"))
    meter = MeterFactory(key="ai_action", name="AI actions", unit="action")
    PriceFactory(
        plan_version=version, meter=meter, unit_amount=Decimal("0.10"), included_quantity=Decimal(100)
    )
    subscription = SubscriptionFactory(
        plan_version=version,
        customer__name=name,
        billing_anchor=timezone.now() - timedelta(days=10),
    )
    customer = subscription.customer
    PeriodUsageFactory(
        customer=customer, meter=meter, quantity=Decimal(quantity), cost=Decimal(quantity - 100) / 10
    )
    share = Decimal(quantity) / max(len(members), 1)
    for member in members:
        DailyUsageRollupFactory(
            customer=customer,
            meter=meter,
            member=member if isinstance(member, Member) else MemberFactory(customer=customer, name=member),
            action="generate_report",
            quantity=share,
            cost=share / 10,
        )
    return customer


@pytest.fixture
def acme():
    customer = _customer("Acme AI", quantity=300, members=[])
    maya = MemberFactory(
        customer=customer, name="Maya Chen", role=MemberRole.ADMIN, user=UserFactory(username="maya")
    )
    raj = MemberFactory(customer=customer, name="Raj Patel", user=UserFactory(username="raj"))
    for member, quantity in ((maya, 100), (raj, 200)):
        DailyUsageRollupFactory(
            customer=customer,
            meter=MeterFactory(key="ai_action"),
            member=member,
            action="generate_report" if member == raj else "draft_email",
            quantity=Decimal(quantity),
            billable_quantity=Decimal(quantity) if member == raj else Decimal(0),
            cost=Decimal(quantity) / 10 if member == raj else Decimal(0),
        )
    return customer


@pytest.fixture
def globex():
    return _customer("Globex", quantity=777, members=["Gina Globex"])


@pytest.fixture
def admin(client, acme):
    client.force_login(acme.members.get(name="Maya Chen").user)
    return client


@pytest.fixture
def member(client, acme):
    client.force_login(acme.members.get(name="Raj Patel").user)
    return client


# --- Access ------------------------------------------------------------------------------------


def test_an_anonymous_visitor_is_sent_to_log_in(client):
    response = client.get(PAGE)

    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/settings/usage"


def test_logging_in_lands_on_the_usage_page(client, acme):
    assert client.get("/accounts/login/").status_code == 200

    response = client.post("/accounts/login/", {"username": "maya", "password": "password"})

    assert response.status_code == 302
    assert response["Location"] == PAGE


def test_a_wrong_password_is_refused_on_the_login_page(client, acme):
    response = client.post("/accounts/login/", {"username": "maya", "password": "nope"})

    assert response.status_code == 200
    assert b"alert-danger" in response.content


def test_password_reset_sends_a_link_by_email(client, acme):
    user = acme.members.get(name="Maya Chen").user

    response = client.post("/accounts/password_reset/", {"email": user.email})

    assert response.status_code == 302
    (message,) = mail.outbox
    link = re.search(r"https?://\S+/accounts/reset/\S+/", message.body).group(0)
    confirm = client.get(link, follow=True)
    assert b"Choose a new password" in confirm.content


def test_a_login_without_membership_gets_a_page_that_says_why(client):
    client.force_login(UserFactory(username="stranger"))

    response = client.get(PAGE)

    assert response.status_code == 403
    assert b"not linked to an account" in response.content


def test_staff_without_membership_are_sent_to_the_admin(client):
    client.force_login(UserFactory(username="ops", is_staff=True))

    response = client.get(PAGE)

    assert response.status_code == 302
    assert response["Location"] == "/admin/"


def test_an_admin_sees_every_member_and_the_limits_form(admin):
    page = admin.get(PAGE).content.decode()

    assert 'id="members-table"' in page
    assert "Raj Patel" in page and "Maya Chen" in page
    assert 'id="limits-form"' in page


def test_a_member_sees_only_their_own_line_and_no_limits_form(member):
    page = member.get(PAGE).content.decode()

    assert 'id="members-table"' not in page
    assert 'id="my-usage"' in page
    assert "Maya Chen" not in page
    assert 'id="limits-form"' not in page
    assert "Set by your account's admins" in page


def test_another_customers_numbers_never_show(admin, globex):
    page = admin.get(PAGE).content.decode()

    assert "Globex" not in page
    assert "Gina Globex" not in page
    assert "777" not in page


def test_another_customers_notification_is_not_found(admin, globex):
    theirs = NotificationFactory(customer=globex)

    response = admin.post(f"/settings/usage/notifications/{theirs.pk}/read", **HTMX)

    assert response.status_code == 404
    theirs.refresh_from_db()
    assert theirs.read_at is None


def test_another_customers_period_is_not_found(admin, globex):
    PeriodUsageFactory(
        customer=globex,
        meter=MeterFactory(key="ai_action"),
        period_start=datetime(2024, 1, 1, tzinfo=UTC),
        period_end=datetime(2024, 2, 1, tzinfo=UTC),
    )

    assert admin.get(f"{PAGE}?period=2024-01-01").status_code == 404
    assert admin.get(f"{PAGE}?period=not-a-date").status_code == 404


# --- The page and its regions -------------------------------------------------------------------


def test_the_page_shows_the_big_numbers(admin):
    page = admin.get(PAGE).content.decode()

    assert "AI actions" in page
    assert "of 100 included · 300% used" in page
    assert "On track for" in page
    assert 'title="Usage so far plus' in page or 'title="Usage so far, spread' in page
    assert 'id="usage-chart"' in page
    assert 'id="top-actions-table"' in page
    assert f"/vendor/plotly-{PLOTLY_VERSION}.min.js" in page
    assert "/static/django_htmx/htmx-2.min.js" in page


def test_the_current_period_refreshes_every_30_seconds(admin):
    page = admin.get(PAGE).content.decode()

    assert page.count('hx-trigger="every 30s') >= 5
    assert 'hx-headers=\'{"X-CSRFToken"' in page


def test_an_earlier_period_is_shown_without_polling(admin, acme):
    PeriodUsageFactory(
        customer=acme,
        meter=MeterFactory(key="ai_action"),
        period_start=datetime(2024, 1, 1, tzinfo=UTC),
        period_end=datetime(2024, 2, 1, tzinfo=UTC),
        quantity=Decimal(4321),
    )

    page = admin.get(f"{PAGE}?period=2024-01-01").content.decode()

    assert "4.3K" in page
    assert "Period total" in page
    assert "every 30s" not in page
    assert '<option value="2024-01-01" selected>' in page


@pytest.mark.parametrize("name", sorted(PARTIALS))
def test_each_region_renders_on_its_own_for_htmx(admin, name):
    response = admin.get(f"/settings/usage/partials/{name}", **HTMX)

    assert response.status_code == 200
    body = response.content.decode()
    assert "<html" not in body
    assert f'id="{name.replace("_", "-")}"' in body


def test_a_region_without_htmx_sends_to_the_whole_page(admin):
    response = admin.get("/settings/usage/partials/summary?period=2024-01-01")

    assert response.status_code == 302
    assert response["Location"] == "/settings/usage?period=2024-01-01"


def test_an_unknown_region_is_not_found(admin):
    assert admin.get("/settings/usage/partials/secrets", **HTMX).status_code == 404


def test_a_member_region_shows_only_their_line(member):
    body = member.get("/settings/usage/partials/members", **HTMX).content.decode()

    assert "Raj Patel" not in body  # their own line is "Your usage", not a table of names
    assert 'id="my-usage"' in body
    assert "200 actions" in body


def test_wallet_and_credits_are_shown(admin, acme):
    CustomerBalanceFactory(customer=acme, wallet_balance=Decimal("12.34"))
    CreditGrantFactory(customer=acme, unit="usd", amount=Decimal(50), description="Launch promotion")

    body = admin.get("/settings/usage/partials/wallet", **HTMX).content.decode()

    assert "$12.34" in body
    assert "Launch promotion" in body


def test_the_page_reads_no_usage_event(admin):
    with CaptureQueriesContext(connection) as queries:
        admin.get(PAGE)

    assert not [q for q in queries.captured_queries if "usage_usageevent" in q["sql"]]


def test_a_customer_with_nothing_yet_gets_a_friendly_page(client):
    member = MemberFactory(role=MemberRole.ADMIN, user=UserFactory(username="newbie"))
    client.force_login(member.user)

    response = client.get(PAGE)

    assert response.status_code == 200
    assert b"No usage yet" in response.content


# --- Limits -------------------------------------------------------------------------------------


def test_limits_are_saved_inline(admin, acme):
    response = admin.post(
        "/settings/usage/limits", {"soft_limit": "50", "hard_limit": "80", "block_overage": "on"}, **HTMX
    )

    assert response.status_code == 200
    assert "usage-changed" in response["HX-Trigger"]  # the numbers refresh at once
    assert b"Limits saved" in response.content
    controls = SpendControls.objects.get(customer=acme)
    assert (controls.soft_limit, controls.hard_limit, controls.block_overage) == (50, 80, True)


def test_limits_save_without_javascript_too(admin, acme):
    response = admin.post("/settings/usage/limits", {"soft_limit": "10", "hard_limit": ""})

    assert response.status_code == 302
    assert response["Location"] == "/settings/usage?saved=limits#limits"
    controls = SpendControls.objects.get(customer=acme)
    assert (controls.soft_limit, controls.hard_limit, controls.block_overage) == (10, None, False)


def test_an_empty_hard_limit_turns_it_off(admin, acme):
    SpendControlsFactory(customer=acme, hard_limit=Decimal(100))

    admin.post("/settings/usage/limits", {"soft_limit": "", "hard_limit": ""}, **HTMX)

    assert SpendControls.objects.get(customer=acme).hard_limit is None


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"soft_limit": "100", "hard_limit": "50"}, "hard-limit-error", "at least the soft limit"),
        ({"soft_limit": "-1"}, "soft-limit-error", "zero or more"),
        ({"hard_limit": "-5"}, "hard-limit-error", "zero or more"),
        ({"hard_limit": "ten"}, "hard-limit-error", "Enter a number"),
    ],
)
def test_invalid_limits_are_explained_and_not_saved(admin, acme, data, field, message):
    SpendControlsFactory(customer=acme, soft_limit=Decimal(5))

    response = admin.post("/settings/usage/limits", data, **HTMX)

    assert response.status_code == 200  # htmx swaps only 2xx answers
    body = response.content.decode()
    assert f'id="{field}"' in body
    assert message in body
    assert SpendControls.objects.get(customer=acme).soft_limit == 5


def test_invalid_limits_without_javascript_show_the_page_again(admin):
    response = admin.post("/settings/usage/limits", {"soft_limit": "100", "hard_limit": "50"})

    assert response.status_code == 400
    assert b"<html" in response.content
    assert b"at least the soft limit" in response.content


def test_a_member_cannot_change_the_limits(member, acme):
    response = member.post("/settings/usage/limits", {"hard_limit": "1"}, **HTMX)

    assert response.status_code == 403
    assert not SpendControls.objects.filter(customer=acme, hard_limit=1).exists()


# --- Notifications ------------------------------------------------------------------------------


def test_an_admin_marks_a_notification_read(admin, acme):
    notification = NotificationFactory(customer=acme, message="Usage charges reached 100.00 USD")

    response = admin.post(f"/settings/usage/notifications/{notification.pk}/read", **HTMX)

    assert response.status_code == 200
    notification.refresh_from_db()
    assert notification.read_at is not None
    assert b"unread" not in response.content.split(b"</h2>")[0]


def test_an_admin_marks_all_notifications_read(admin, acme):
    NotificationFactory.create_batch(3, customer=acme)

    response = admin.post("/settings/usage/notifications/read-all")

    assert response.status_code == 302
    assert not acme.notifications.filter(read_at__isnull=True).exists()


def test_a_member_sees_notifications_but_cannot_mark_them(member, acme):
    notification = NotificationFactory(customer=acme, message="Hard limit reached")

    page = member.get(PAGE).content.decode()
    response = member.post(f"/settings/usage/notifications/{notification.pk}/read", **HTMX)

    assert "Hard limit reached" in page
    assert "Mark as read" not in page
    assert response.status_code == 403


# --- plotly.js ----------------------------------------------------------------------------------


def test_plotly_js_is_served_from_the_installed_package(client):
    response = client.get(f"/vendor/plotly-{PLOTLY_VERSION}.min.js", HTTP_ACCEPT_ENCODING="gzip")

    assert response.status_code == 200
    assert response["Content-Encoding"] == "gzip"
    assert "immutable" in response["Cache-Control"]
    assert b"plotly" in gzip.decompress(response.content)[:2000].lower()
    assert client.get("/vendor/plotly-0.0.1.min.js").status_code == 404


def test_plotly_css_is_the_stylesheet_plotly_would_inject(client):
    response = client.get(f"/vendor/plotly-{PLOTLY_VERSION}.css")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/css")
    assert ".js-plotly-plot .plotly .main-svg {position:absolute;" in response.content.decode()
    assert client.get("/vendor/plotly-0.0.1.css").status_code == 404


def test_the_page_has_no_inline_script_style_or_handler_for_the_policy_to_refuse(admin):
    response = admin.get(PAGE)
    page = response.content.decode()

    policy = response["Content-Security-Policy"]
    assert "script-src 'self'" in policy
    assert "style-src-elem 'self'" in policy
    # Every <script> loads a file, except the chart's data (json_script), which is not run.
    scripts = re.findall(r"<script\b[^>]*>", page)
    assert scripts
    assert all("src=" in tag or 'type="application/json"' in tag for tag in scripts), scripts
    assert "<style" not in page
    assert not re.search(r"\son[a-z]+=", page)
    # plotly.js finds its stylesheet by this id and class, and its map stylesheet's id, and injects neither.
    assert 'id="plotly.js-style-global" class="no-inline-styles"' in page
    assert re.search(r'<template id="[0-9a-f]{64}"></template>', page)


# --- The numbers against the usage API ----------------------------------------------------------


@pytest.fixture
def billed_customer(api, pro_plan, make_customer):
    """Pro ($20, 100 API calls included, then $0.10) with 250 calls through the API, a $5 grant."""
    from usage.services import credit_grant_create, wallet_top_up

    customer = make_customer("pro", "acme")
    events = [
        event(
            f"e{n}", user=("maya", "raj")[n % 2], properties={"action": ("search", "summarize")[n % 3 == 0]}
        )
        for n in range(250)
    ]
    assert api.post("/api/v1/events", {"events": events}, format="json").status_code == 200
    credit_grant_create(customer=customer, amount=Decimal(5), unit="usd", description="Welcome credit")
    wallet_top_up(customer=customer, amount=Decimal("7.50"))
    maya = customer.members.get(external_id="maya")
    maya.role, maya.name, maya.user = MemberRole.ADMIN, "Maya Chen", UserFactory(username="maya")
    maya.save()
    return customer


def test_the_page_shows_the_numbers_the_usage_api_returns(client, api, billed_customer):
    client.force_login(billed_customer.members.get(external_id="maya").user)

    usage = api.get("/api/v1/customers/acme/usage").json()
    page = client.get(PAGE).content.decode()

    (line,) = usage["meters"]
    assert line["quantity"] == "250"
    assert '250 <span class="unit">' in page.replace("</span> <span", " <span")
    assert f"{line['percent_of_included']}% used" in page
    assert format_money(Decimal(line["cost"]), "usd") in page
    assert format_money(Decimal(usage["projection"]["total"]), "usd") in page
    assert format_money(Decimal(usage["projection"]["usage_spend"]), "usd") in page
    assert format_money(Decimal(usage["spend"]["spend"]), "usd") in page
    assert format_money(Decimal(usage["wallet_balance"]), "usd") in page
    assert usage["base_fee"] == "20.00"


def test_a_hard_limit_saved_on_the_page_stops_reservations_at_once(client, api, billed_customer):
    client.force_login(billed_customer.members.get(external_id="maya").user)
    reservation = {"customer": "acme", "meter": "api_call", "quantity": 10}

    assert (
        api.post("/api/v1/reservations", {**reservation, "idempotency_key": "r1"}, format="json").status_code
        == 201
    )
    client.post("/settings/usage/limits", {"hard_limit": "1"}, **HTMX)
    refused = api.post("/api/v1/reservations", {**reservation, "idempotency_key": "r2"}, format="json")

    assert refused.status_code == 402
    assert refused.json()["error"]["code"] == "hard_limit_reached"


def test_credit_pricing_shows_credits_not_money(client, make_plan, make_customer, api):
    make_plan(
        "credits",
        prices=[{"meter": "workflow_run", "model": "per_unit", "unit": "credits", "unit_amount": "2"}],
        credit_packs=[{"price": "250.00", "credits": "50000"}],
    )
    customer = make_customer("credits", "initech")
    from usage.services import credit_grant_create

    credit_grant_create(customer=customer, amount=Decimal(1000), unit="credits")
    api.post(
        "/api/v1/events",
        {"events": [event(f"w{n}", customer="initech", meter="workflow_run") for n in range(30)]},
        format="json",
    )
    admin = MemberFactory(customer=customer, role=MemberRole.ADMIN, user=UserFactory(username="ivan"))
    client.force_login(admin.user)

    # A day later: projections and run-out dates start once the period is a day old.
    with time_machine.travel(timezone.now() + timedelta(days=1, hours=1), tick=False):
        page = client.get(PAGE).content.decode()

    assert "60 credits" in page  # 30 runs × 2 credits
    assert 'data-testid="runway-credits"' in page
