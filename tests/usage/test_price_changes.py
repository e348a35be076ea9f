"""A price change from data: usage percentiles for a quota, and each subscriber's bill re-rated under a new
version (API, command and the staff page)."""

from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from plans.models import Meter, Plan
from plans.services import plan_version_create
from tests.customers.factories import CustomerFactory
from usage.models import DailyUsageRollup, PeriodUsage
from usage.selectors.price_changes import migration_preview, usage_percentiles

pytestmark = pytest.mark.django_db
D = Decimal


def period_usage(customer, meter, quantity, *, months_ago, dimension_mix=None):
    """A closed period ``months_ago`` periods back (30 days each), and its rollups by dimension value."""
    today = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    end = today - timedelta(days=30 * (months_ago - 1) + 1)
    start = end - timedelta(days=30)
    PeriodUsage.objects.create(
        customer=customer, meter=meter, period_start=start, period_end=end, unit="usd", quantity=D(quantity)
    )
    for value, units in (dimension_mix or {}).items():
        DailyUsageRollup.objects.create(
            customer=customer,
            meter=meter,
            day=start.date(),
            period_start=start,
            dimension_value=value,
            quantity=D(units),
            event_count=1,
        )


def test_percentiles_of_a_known_distribution(make_plan):
    make_plan("pro", prices=[{"meter": "ai_action", "model": "per_unit", "unit_amount": "0.01"}])
    meter = Meter.objects.get(key="ai_action")
    for n in range(1, 101):  # customers whose largest period is 1, 2, ..., 100 actions
        customer = CustomerFactory(external_id=f"c{n}")
        period_usage(customer, meter, n, months_ago=1)
        period_usage(customer, meter, n // 2, months_ago=2)
    period_usage(CustomerFactory(external_id="old"), meter, 10_000, months_ago=6)  # outside 90 days

    found = usage_percentiles(meter=meter, days=90)

    assert found.customers == 100
    assert found.values == {50: D(50), 90: D(90), 95: D(95), 99: D(99)}
    assert found.covered == {50: 50, 90: 90, 95: 95, 99: 99}


@pytest.fixture
def pro_v1_and_draft(make_plan, make_customer):
    """Pro v1: $20, 100 calls included then 10c; tokens by model at 1c / 0.1c. A draft v2: $25, the first
    100 calls free then 8c (graduated); gpt-4o at 2c."""
    v1 = make_plan(
        "pro",
        base_fee="20.00",
        prices=[
            {"meter": "api_call", "model": "per_unit", "unit_amount": "0.10", "included": "100"},
            {
                "meter": "llm_tokens",
                "model": "dimensional",
                "dimension": "model",
                "rates": {"gpt-4o": "0.01", "mini": "0.001"},
                "default_rate": None,
            },
        ],
    )
    v2 = plan_version_create(
        plan=Plan.objects.get(code="pro"),
        currency="usd",
        interval="month",
        base_fee="25.00",
        prices=[
            {
                "meter": "api_call",
                "model": "graduated",
                "tiers": [{"up_to": "100", "unit_amount": "0"}, {"up_to": None, "unit_amount": "0.08"}],
            },
            {
                "meter": "llm_tokens",
                "model": "dimensional",
                "dimension": "model",
                "rates": {"gpt-4o": "0.02", "mini": "0.001"},
                "default_rate": None,
            },
        ],
        entitlements=[],
        credit_packs=[],
    )
    calls, tokens = Meter.objects.get(key="api_call"), Meter.objects.get(key="llm_tokens")
    light = make_customer("pro", "light")
    heavy = make_customer("pro", "heavy")
    for months_ago in (1, 2, 3, 4):
        period_usage(light, calls, 100, months_ago=months_ago)
        period_usage(heavy, calls, 1100, months_ago=months_ago)
        period_usage(heavy, tokens, 1000, months_ago=months_ago, dimension_mix={"gpt-4o": 300, "mini": 700})
    return v1, v2


def test_the_backtest_rates_each_subscriber_under_both_versions(pro_v1_and_draft):
    _, v2 = pro_v1_and_draft

    preview = migration_preview(version=v2)

    rows = {row.customer: row for row in preview.customers}
    # Light: 100 calls, all included on both; only the base fee moves: 3 × (25 - 20).
    assert (rows["light"].old_total, rows["light"].new_total, rows["light"].periods) == (
        D("60.00"),
        D("75.00"),
        3,
    )
    # Heavy, per period: v1 $20 + 1,000 × 10c + 300 × 1c + 700 × 0.1c = $123.70;
    # v2 $25 + 1,000 × 8c + 300 × 2c + 700 × 0.1c = $111.70.
    assert (rows["heavy"].old_total, rows["heavy"].new_total) == (D("371.10"), D("335.10"))
    assert (preview.paying_more, preview.paying_less) == (1, 1)
    assert preview.revenue_difference == D("15.00") - D("36.00")


def test_the_api_and_the_command_answer_the_same(api, pro_v1_and_draft):
    response = api.get("/api/v1/plans/pro/versions/2/migration-preview")
    assert response.status_code == 200
    body = response.json()
    assert body["summary"] == {
        "customers": 2,
        "paying_more": 1,
        "paying_less": 1,
        "revenue_difference": "-21",
    }
    assert {row["customer"]: row["difference"] for row in body["customers"]} == {
        "light": "15",
        "heavy": "-36",
    }
    assert api.get("/api/v1/plans/pro/versions/9/migration-preview").status_code == 404

    out = StringIO()
    call_command("migration_preview", "pro", "2", stdout=out)
    assert "1 pay more, 1 less" in out.getvalue() and "heavy: $371.10 -> $335.10" in out.getvalue()

    percentiles = api.get("/api/v1/meters/api_call/usage-percentiles?days=120")
    assert percentiles.status_code == 200
    assert percentiles.json()["customers"] == 2 and percentiles.json()["p99"] == "1100"
    assert api.get("/api/v1/meters/api_call/usage-percentiles?days=0").status_code == 400
    assert api.get("/api/v1/meters/nope/usage-percentiles").status_code == 404
    assert api.get("/api/v1/meters/a%00b/usage-percentiles").status_code == 400


def test_the_staff_page_shows_both_and_exports_csv(admin_client, pro_v1_and_draft):
    _, v2 = pro_v1_and_draft

    page = admin_client.get(reverse("price-research", args=[v2.pk]))
    assert page.status_code == 200
    assert "1 would pay more, 1 less" in page.content.decode()
    csv_rows = (
        admin_client.get(reverse("price-research", args=[v2.pk]) + "?format=csv")
        .content.decode()
        .splitlines()
    )
    assert csv_rows[0].startswith("customer,name,periods,old_total")
    assert len(csv_rows) == 3
    version_page = admin_client.get(reverse("admin:plans_planversion_change", args=[v2.pk])).content.decode()
    assert reverse("price-research", args=[v2.pk]) in version_page


def test_the_staff_page_is_for_staff_only(client, pro_v1_and_draft):
    _, v2 = pro_v1_and_draft
    response = client.get(reverse("price-research", args=[v2.pk]))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
