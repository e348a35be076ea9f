"""The public pricing pages: the published catalog on one screen and the pricing changelog."""

import json
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings

from plans.catalog.importing import catalog_import
from plans.models import Plan, VersionStatus
from plans.services import plan_version_publish, plan_version_retire
from tests.plans.factories import (
    CreditPackFactory,
    EntitlementFactory,
    MeterFactory,
    PlanFactory,
    PlanVersionFactory,
    PriceFactory,
    PriceTierFactory,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def demo_catalog():
    data = json.loads((Path(settings.BASE_DIR) / "catalog" / "demo.json").read_text())
    catalog_import(data=data)
    return data


def test_pricing_shows_every_published_plan_on_one_page(client, demo_catalog):
    response = client.get("/pricing")

    assert response.status_code == 200
    page = response.content.decode()
    for plan in demo_catalog["plans"]:
        assert f'id="plan-{plan["code"]}"' in page
    assert "$999.00" in page and "/ month" in page
    free = page.split('id="plan-free"')[1].split("</article>")[0]
    # A cap is said plainly on the meter's line, not as a rate of "free".
    assert "20 actions, then stops at 20 a month" in free
    assert "free" not in free.split("Included")[1]


def test_pricing_says_how_fast_a_plan_lets_a_meter_be_used(client, demo_catalog):
    page = client.get("/pricing").content.decode()

    # The demo's Free plan limits exports to 2 a minute per user: said on the exports' line, under its cap.
    free = page.split('id="plan-free"')[1].split("</article>")[0]
    exports = free.split("<h3>Exports</h3>")[1].split("</div>")[0]
    assert "5 exports, then stops at 5 a month" in exports
    assert "At most 2 requests a minute per user" in exports
    assert "a minute" not in free.split("<h3>AI actions</h3>")[1].split("</div>")[0]
    hybrid = page.split('id="plan-hybrid"')[1].split("</article>")[0]
    assert "a minute" not in hybrid


def test_a_rate_limit_of_a_meter_the_plan_does_not_price_is_listed_with_what_it_includes(client):
    version = PlanVersionFactory(plan=PlanFactory(code="metered", name="Metered", is_public=True))
    PriceFactory(plan_version=version, meter=MeterFactory(key="ai_action", name="AI actions"))
    MeterFactory(key="export", name="Exports")
    EntitlementFactory(plan_version=version, feature="export", rate_limit_per_minute=1)

    card = client.get("/pricing").content.decode().split('id="plan-metered"')[1].split("</article>")[0]

    includes = card.split("<h3>Includes</h3>")[1].split("</div>")[0]
    assert "Exports: at most 1 request a minute per account" in includes


def test_pricing_shows_included_quantities_and_posted_rates(client, demo_catalog):
    page = client.get("/pricing").content.decode()

    hybrid = page.split('id="plan-hybrid"')[1].split("</article>")[0]
    assert "100,000 actions" in hybrid
    assert "$8.00 per 1K actions" in hybrid  # $0.008 an action, posted per thousand
    assert "By model" in hybrid
    assert "claude-sonnet: $15.00 per 1M tokens" in hybrid
    assert "gpt-4o: $10.00 per 1M tokens" in hybrid  # the same scale for every rate of a price
    # LLM usage is shown to customers as money: its 5M included tokens as what they are worth by model.
    assert "$3.00–$75.00 of usage" in hybrid
    assert "5,000,000 tokens" not in hybrid


def test_pricing_shows_tiers_and_credit_packs(client, demo_catalog):
    page = client.get("/pricing").content.decode()

    pro = page.split('id="plan-pro"')[1].split("</article>")[0]
    # The free first tier is what Pro includes: said under "Included", as its description says.
    assert '<span class="muted">Included</span> 1,000 actions' in pro
    assert "first 1,000: free" not in pro
    assert "1,001–20,000: $20.00 per 1K actions" in pro
    assert "above 20,000: $12.00 per 1K actions" in pro
    credits = page.split('id="plan-credits"')[1].split("</article>")[0]
    assert "$250.00 for 50,000 credits" in credits
    # A prepaid plan is headed by its pack, not "$0.00 / month", and says usage stops.
    assert '$250.00<span class="unit"> for 50,000 credits' in credits
    assert "$0.00" not in credits
    assert "Usage stops when your credits run out" in credits
    assert "2 credits per action" in credits


def test_pricing_shows_the_latest_published_version_only(client):
    plan = PlanFactory(code="team", name="Team")
    old = PlanVersionFactory(plan=plan, base_fee=Decimal("10"))
    PriceFactory(plan_version=old, meter=MeterFactory(key="seat_call"), unit_amount=Decimal("0.50"))
    new = PlanVersionFactory(plan=plan, base_fee=Decimal("15"))
    PriceFactory(plan_version=new, meter=MeterFactory(key="seat_call"), unit_amount=Decimal("0.40"))
    PlanVersionFactory(plan=plan, draft=True, base_fee=Decimal("99"))

    page = client.get("/pricing").content.decode()

    assert "$15.00" in page
    assert "$0.40 per unit" in page
    assert "$10.00" not in page
    assert "$99.00" not in page


def test_private_and_unpublished_plans_stay_off_the_pricing_page(client):
    PlanVersionFactory(plan=PlanFactory(code="enterprise", name="Enterprise deal", is_public=False))
    PlanVersionFactory(plan=PlanFactory(code="beta", name="Beta plan"), draft=True)

    page = client.get("/pricing").content.decode()

    assert "Enterprise deal" not in page
    assert "Beta plan" not in page
    assert "No plans are published yet" in page


def test_rates_finer_than_a_cent_are_posted_exactly(client):
    version = PlanVersionFactory(plan=PlanFactory(code="odd", name="Odd"))
    PriceFactory(
        plan_version=version,
        meter=MeterFactory(key="odd_unit", unit="unit"),
        unit_amount=Decimal("0.0000123"),
    )
    graduated = PriceFactory(
        plan_version=version,
        meter=MeterFactory(key="tiered", unit="call"),
        model="graduated",
        unit_amount=None,
    )
    PriceTierFactory(price=graduated, up_to=Decimal(10), unit_amount=Decimal(0), flat_amount=Decimal(5))
    PriceTierFactory(price=graduated, up_to=None, unit_amount=Decimal("0.01"))
    CreditPackFactory(plan_version=version, amount=Decimal(10), credits=Decimal(1000))

    page = client.get("/pricing").content.decode()

    assert "$12.30 per 1M units" in page
    assert "first 10: free + $5.00 flat" in page
    assert "above 10: $0.01 per call" in page


def test_the_changelog_lists_every_published_version_with_its_effect(client, make_plan):
    first = make_plan(
        "pro", base_fee="20.00", prices=[{"meter": "api_call", "model": "per_unit", "unit_amount": "0.10"}]
    )
    second = make_plan(
        "pro", base_fee="25.00", prices=[{"meter": "api_call", "model": "per_unit", "unit_amount": "0.10"}]
    )
    plan_version_retire(plan_version=first)

    page = client.get("/pricing/changelog").content.decode()

    assert page.index(f"v{second.number}") < page.index(f"v{first.number}")  # newest first
    assert "Existing customers keep their version" in page
    assert "New plan" in page
    assert "$25.00 / month" in page
    assert "Retired" in page
    assert "25" in second.changelog_entry.summary and second.changelog_entry.summary.split("\n")[0] in page


def test_the_changelog_hides_private_plans_and_drafts(client):
    hidden = PlanVersionFactory(
        plan=PlanFactory(code="secret", name="Secret plan", is_public=False), draft=True
    )
    plan_version_publish(plan_version=hidden)
    PlanVersionFactory(plan=PlanFactory(code="later", name="Later plan"), draft=True)

    page = client.get("/pricing/changelog").content.decode()

    assert "Secret plan" not in page
    assert "Later plan" not in page
    assert Plan.objects.filter(versions__status=VersionStatus.PUBLISHED).count() == 1
