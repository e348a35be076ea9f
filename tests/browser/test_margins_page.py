"""The margin report in the admin, as staff read it: who and which model is profitable, and its CSV."""

import csv
import io
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import Page, expect

from plans.models import Meter, MeterServingCost
from plans.services import SERVING_COST_SINCE_ALWAYS
from tests.catalog_fixtures import event
from usage.ingest import usage_events_ingest

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def margins(make_plan, make_customer):
    """Tokens at $0.00001 (gpt-4o) and $0.000001 (mini), costing us $0.000004 and $0.000002:
    alpha uses 100,000 gpt-4o tokens (revenue $1.00, cost $0.40, margin $0.60, 60 %);
    beta 50,000 mini tokens (revenue $0.05, cost $0.10, margin -$0.05, -100 %)."""
    make_plan(
        "tokens",
        prices=[
            {
                "meter": "llm_tokens",
                "model": "dimensional",
                "dimension": "model",
                "rates": {"gpt-4o": "0.00001", "mini": "0.000001"},
                "default_rate": None,
            }
        ],
    )
    meter = Meter.objects.get(key="llm_tokens")
    meter.serving_cost_dimension = "model"
    meter.save()
    for value, amount in (("gpt-4o", "0.000004"), ("mini", "0.000002")):
        MeterServingCost.objects.create(
            meter=meter,
            dimension_value=value,
            unit_amount=Decimal(amount),
            currency="usd",
            effective_from=SERVING_COST_SINCE_ALWAYS,
        )
    make_customer("tokens", "alpha")
    make_customer("tokens", "beta")
    usage_events_ingest(
        raw_events=[
            event(
                "a", customer="alpha", meter="llm_tokens", quantity=100_000, properties={"model": "gpt-4o"}
            ),
            event("b", customer="beta", meter="llm_tokens", quantity=50_000, properties={"model": "mini"}),
        ]
    )
    get_user_model().objects.create_superuser("staff", "staff@example.com", "staff")


def cells(page: Page, key: str) -> list[str]:
    return page.locator(f'#margins tr[data-key="{key}"] td').all_inner_texts()


def test_staff_open_the_margin_report_sort_it_and_download_it(page: Page, live_server, margins, artifacts):
    page.goto(f"{live_server.url}/admin/login/")
    page.get_by_label("Username").fill("staff")
    page.get_by_label("Password").fill("staff")
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("link", name="Margins").click()

    expect(page.locator("#margins tbody tr")).to_have_count(2)
    # Least profitable first.
    assert page.locator("#margins tbody tr").first.get_attribute("data-key") == "beta"
    assert cells(page, "beta") == ["Beta", "$0.05", "$0.10", "-$0.05", "-100.00 %", "USD"]
    assert cells(page, "alpha") == ["Alpha", "$1.00", "$0.40", "$0.60", "60.00 %", "USD"]
    assert page.locator('tr[data-key="total-usd"] td').all_inner_texts() == [
        "$1.05",
        "$0.50",
        "$0.55",
        "52.38 %",
        "USD",
    ]

    page.get_by_role("link", name="Margin", exact=True).click()  # now most profitable first
    expect(page.locator("#margins tbody tr").first).to_have_attribute("data-key", "alpha")

    page.get_by_label("By").select_option("dimension")
    page.get_by_role("button", name="Show").click()
    expect(page.locator('#margins tr[data-key="llm_tokens:mini"] td').nth(3)).to_have_text("-$0.05")
    page.screenshot(path=str(artifacts / "margins.png"), full_page=True)

    href = page.locator("#margins-csv").get_attribute("href") or ""
    download = page.request.get(f"{live_server.url}/admin/margins/{href}", fail_on_status_code=True)
    assert download.headers["content-type"] == "text/csv"
    rows = list(csv.reader(io.StringIO(download.text())))
    assert rows[0] == [
        "key",
        "label",
        "currency",
        "revenue",
        "cost",
        "cost_currency",
        "margin",
        "margin_percent",
    ]
    assert ["llm_tokens:mini", "Llm Tokens: mini", "usd", "0.05", "0.1", "usd", "-0.05", "-100"] in rows
    assert ["usd", "Total", "usd", "1.05", "0.5", "usd", "0.55", "52.38"] in rows
