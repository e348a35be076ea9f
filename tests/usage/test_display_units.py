"""How customers see a meter: raw units, money only, or a product unit with a divisor.

The catalog says it, and the usage page, the pricing page and the usage API use it; the API keeps raw
quantities beside ``display_quantity`` and ``display_unit``.
"""

from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model

from customers.models import MemberRole
from customers.services import member_create
from plans.catalog import CatalogInvalid, catalog_parse
from plans.catalog.serialize import catalog_data
from plans.models import DisplayMode, Meter
from usage.selectors.breakdowns import usage_member_breakdown, usage_top_actions
from usage.selectors.series import usage_daily_series
from usage.views import chart_payload

pytestmark = pytest.mark.django_db

CATALOG_METERS = [
    {
        "key": "chat_tokens",
        "name": "Chat",
        "unit": "token",
        "display": {"unit": "messages", "divisor": "1000"},
    },
    {"key": "llm_tokens", "name": "LLM usage", "unit": "token", "display": "money"},
    {"key": "api_call", "name": "API calls", "unit": "call"},
]


@pytest.fixture
def display_plan(make_plan):
    """Chat at $0.00002 a token (so $0.02 a message of 1,000 tokens), 1M tokens included; LLM usage at $0.000002 a
    token with 1M tokens included ($2.00 worth); API calls at $0.01."""
    version = make_plan(
        "display",
        prices=[
            {"meter": "chat_tokens", "model": "per_unit", "unit_amount": "0.00002", "included": "1000000"},
            {"meter": "llm_tokens", "model": "per_unit", "unit_amount": "0.000002", "included": "1000000"},
            {"meter": "api_call", "model": "per_unit", "unit_amount": "0.01"},
        ],
    )
    Meter.objects.filter(key="chat_tokens").update(
        name="Chat",
        unit="token",
        display_mode=DisplayMode.UNIT,
        display_unit="messages",
        display_divisor=1000,
    )
    Meter.objects.filter(key="llm_tokens").update(
        name="LLM usage", unit="token", display_mode=DisplayMode.MONEY
    )
    Meter.objects.filter(key="api_call").update(name="API calls", unit="call")
    return version


@pytest.fixture
def acme(display_plan, make_customer, api):
    customer = make_customer("display")
    batch = [
        {"idempotency_key": "c1", "customer": "acme", "meter": "chat_tokens", "quantity": "2400000"},
        {"idempotency_key": "l1", "customer": "acme", "meter": "llm_tokens", "quantity": "2600000"},
        {"idempotency_key": "a1", "customer": "acme", "meter": "api_call", "quantity": "1500"},
    ]
    results = api.post("/api/v1/events", {"events": batch}, format="json").json()["results"]
    assert {r["status"] for r in results} == {"accepted"}
    return customer


def test_the_catalog_reads_and_writes_how_a_meter_is_shown():
    catalog = catalog_parse({"meters": CATALOG_METERS, "plans": []})
    chat, llm, calls = catalog.meters

    assert (chat.display_mode, chat.display_unit, chat.display_divisor) == ("unit", "messages", Decimal(1000))
    assert llm.display_mode == "money"
    assert calls.display_mode == "units"
    assert catalog_data(catalog)["meters"] == [
        {"key": "chat_tokens", "name": "Chat", "unit": "token", "aggregation": "sum",
         "display": {"unit": "messages", "divisor": "1000"}},
        {"key": "llm_tokens", "name": "LLM usage", "unit": "token", "aggregation": "sum", "display": "money"},
        {"key": "api_call", "name": "API calls", "unit": "call", "aggregation": "sum"},
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("display", "problem"),
    [
        ("messages", "'display' must be"),
        ({"unit": "messages", "divisor": "0"}, "'divisor' must be greater than 0"),
        ({"divisor": "1000"}, "'unit' is missing"),
        ({"unit": "messages", "per": "1000"}, "unknown key 'per'"),
    ],
)
def test_a_malformed_display_is_refused_by_the_catalog(display, problem):
    meter = {"key": "chat_tokens", "name": "Chat", "unit": "token", "display": display}
    with pytest.raises(CatalogInvalid) as refusal:
        catalog_parse({"meters": [meter], "plans": []})
    assert problem in str(refusal.value)


def test_the_usage_api_keeps_raw_quantities_and_adds_what_the_customer_sees(api, acme):
    meters = {m["key"]: m for m in api.get("/api/v1/customers/acme/usage").json()["meters"]}

    chat, llm, calls = meters["chat_tokens"], meters["llm_tokens"], meters["api_call"]
    assert (chat["quantity"], chat["display_quantity"], chat["display_unit"]) == (
        "2400000",
        "2400",
        "messages",
    )
    # 1.6M tokens past the 1M included at $0.000002: $3.20, in the currency shown.
    assert (llm["quantity"], llm["cost"]) == ("2600000", "3.20")
    assert (llm["display_quantity"], llm["display_unit"]) == ("3.20", "USD")
    assert (calls["display_quantity"], calls["display_unit"]) == ("1500", "calls")


def test_the_usage_page_shows_money_and_product_units_not_tokens(client, acme):
    user = get_user_model().objects.create_user("maya", "maya@acme.example", "maya")
    member_create(customer=acme, external_id="maya", name="Maya", role=MemberRole.ADMIN, user=user)
    client.force_login(user)

    page = client.get("/settings/usage").content.decode()

    chat = page.split('data-meter="chat_tokens"')[1].split("</article>")[0]
    assert "2.4K</span> <span" in chat and "messages" in chat
    assert "of 1,000 included" in chat  # 1M tokens included = 1,000 messages
    llm = page.split('data-meter="llm_tokens"')[1].split("</article>")[0]
    assert '$3.20</span> <span class="unit">of LLM usage' in llm
    assert "of $2.00 included" in llm  # the 1M included tokens, as money
    assert "token" not in llm
    calls = page.split('data-meter="api_call"')[1].split("</article>")[0]
    assert '1.5K</span> <span class="unit">calls' in calls
    # A limit in units is set in the meter's own units, whatever it is shown in.
    assert "(tokens this period)" in page.split('id="limits"')[1]
    # The daily numbers of a money meter are money too.
    assert (
        "<caption>LLM usage (USD)</caption>" in page and "<caption>LLM usage (tokens)</caption>" not in page
    )


def test_the_pricing_page_prices_a_product_unit_and_values_a_money_allowance(client, display_plan):
    page = client.get("/pricing").content.decode()

    card = page.split('id="plan-display"')[1].split("</article>")[0]
    assert "1,000 messages" in card
    assert "$0.02 per message" in card
    assert "$2.00 of usage" in card
    assert "1,000,000 tokens" not in card


def test_what_drives_usage_and_the_member_table_use_the_units_customers_see(acme):
    lines = {line.meter_key: line.quantity_display for line in usage_top_actions(customer=acme)}
    members = {line.meter_key: line.quantity_display for line in usage_member_breakdown(customer=acme)}

    # 2.6M tokens, 1M included: 1.6M at $0.000002 = $3.20, shown as money; 2.4M chat tokens = 2,400 messages.
    assert (
        lines == members == {"llm_tokens": "$3.20", "chat_tokens": "2.4K messages", "api_call": "1.5K calls"}
    )


def test_the_chart_draws_a_money_meter_as_money_and_a_product_unit_divided(acme):
    charts = {meter["key"]: meter for meter in chart_payload(usage_daily_series(customer=acme))["meters"]}

    llm = charts["llm_tokens"]
    assert llm["unit"] == "USD" and llm["included"] is None
    assert sum(llm["quantity"]) == pytest.approx(3.20)  # what the 1.6M tokens past the allowance cost
    assert llm["cumulativeHover"][-1].endswith("$3.20 so far this period")
    assert "token" not in " ".join(llm["hover"] + llm["cumulativeHover"])
    chat = charts["chat_tokens"]
    assert chat["unit"] == "messages" and chat["included"] == 1000
    assert sum(chat["quantity"]) == pytest.approx(2400)
    assert charts["api_call"]["unit"] == "calls"
