"""The margin report and the negative-margin alert, against numbers worked out by hand."""

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import time_machine
from django.core import mail

from billing_app.margin_alerts import margins_negative_check
from billing_app.models import OperatorAlert, OperatorAlertKind, WebhookEvent
from billing_app.tasks import margins_negative_task
from billing_app.webhooks_out import webhook_endpoint_create
from customers.events import CustomerEventType
from plans.models import Meter, MeterServingCost
from plans.services import SERVING_COST_SINCE_ALWAYS
from tests.billing_app.test_alerts import slack  # noqa: F401 - the Slack-compatible receiver fixture
from tests.catalog_fixtures import event
from usage.ingest import usage_events_ingest
from usage.selectors.margins import (
    InvalidPeriod,
    MarginGroup,
    margin_report,
    report_period_parse,
)

pytestmark = pytest.mark.django_db

MARCH = datetime(2025, 3, 1, tzinfo=UTC)
IN_MARCH = datetime(2025, 3, 10, tzinfo=UTC)
D = Decimal


def rate(meter_key: str, value: str, amount: str) -> None:
    MeterServingCost.objects.create(
        meter=Meter.objects.get(key=meter_key),
        dimension_value=value,
        unit_amount=D(amount),
        currency="usd",
        effective_from=SERVING_COST_SINCE_ALWAYS,
    )


@pytest.fixture
def usage(make_plan, make_customer):
    """Three customers in March 2025, every number chosen to be worked out by hand:

    - alpha (usd, tokens at $0.00001 on gpt-4o and $0.000001 on mini; they cost us $0.000004 and $0.000002):
      110,000 gpt-4o tokens, 10,000 of them in an event that cost us $0.50 (``properties.cost``): revenue
      $1.10, cost $0.40 + $0.50 = $0.90; 50,000 mini tokens: revenue $0.05, cost $0.10; 10,000 cached mini
      tokens: revenue 0, cost $0.02.
    - beta (credits: 2 credits an action, $10 for 1,000 credits, so $0.02 an action; an action costs us
      $0.005): 100 actions, revenue $2.00, cost $0.50.
    - gamma (eur, €0.05 an action): 10 actions, revenue €0.50, cost $0.05, no margin across currencies.
    """
    with time_machine.travel(MARCH, tick=False):
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
        make_plan(
            "credits",
            prices=[{"meter": "ai_action", "model": "per_unit", "unit": "credits", "unit_amount": "2"}],
            credit_packs=[{"price": "10.00", "credits": "1000"}],
        )
        make_plan(
            "euro",
            currency="eur",
            prices=[{"meter": "ai_action", "model": "per_unit", "unit_amount": "0.05"}],
        )
        Meter.objects.filter(key="llm_tokens").update(serving_cost_dimension="model")
        rate("llm_tokens", "gpt-4o", "0.000004")
        rate("llm_tokens", "mini", "0.000002")
        rate("ai_action", "", "0.005")
        customers = {
            code: make_customer(plan, code)
            for code, plan in (("alpha", "tokens"), ("beta", "credits"), ("gamma", "euro"))
        }
    with time_machine.travel(IN_MARCH, tick=False):
        at = "2025-03-05T10:00:00Z"
        usage_events_ingest(
            raw_events=[
                event(
                    "a1",
                    customer="alpha",
                    meter="llm_tokens",
                    quantity=100_000,
                    timestamp=at,
                    properties={"model": "gpt-4o"},
                ),
                event(
                    "a2",
                    customer="alpha",
                    meter="llm_tokens",
                    quantity=10_000,
                    timestamp=at,
                    properties={"model": "gpt-4o", "cost": "0.5"},
                ),
                event(
                    "a3",
                    customer="alpha",
                    meter="llm_tokens",
                    quantity=50_000,
                    timestamp=at,
                    properties={"model": "mini"},
                ),
                event(
                    "a4",
                    customer="alpha",
                    meter="llm_tokens",
                    quantity=10_000,
                    timestamp=at,
                    properties={"model": "mini", "cached": True},
                ),
                event("b1", customer="beta", meter="ai_action", quantity=100, timestamp=at),
                event("g1", customer="gamma", meter="ai_action", quantity=10, timestamp=at),
            ]
        )
    return customers


def table(report):
    return [
        (row.key, row.currency, row.revenue, row.cost, row.margin, row.margin_percent) for row in report.rows
    ]


def test_by_customer_least_profitable_first(usage):
    report = margin_report(period=report_period_parse("2025-03"), group_by=MarginGroup.CUSTOMER)

    assert report.cost_currency == "usd"
    assert table(report) == [
        # alpha: revenue 1.10 + 0.05 = 1.15; cost 0.90 + 0.10 + 0.02 = 1.02; margin 0.13 = 11.30 % of 1.15
        ("alpha", "usd", D("1.15"), D("1.02"), D("0.13"), D("11.30")),
        ("beta", "usd", D("2.00"), D("0.50"), D("1.50"), D("75.00")),  # 200 credits at $0.01
        ("gamma", "eur", D("0.50"), D("0.05"), None, None),  # euros against dollars: no margin
    ]
    assert [(t.key, t.revenue, t.cost, t.margin, t.margin_percent) for t in report.totals] == [
        ("eur", D("0.50"), D("0.05"), None, None),
        ("usd", D("3.15"), D("1.52"), D("1.63"), D("51.75")),  # 1.63 / 3.15 = 51.746 %
    ]


def test_by_meter_keeps_currencies_apart(usage):
    report = margin_report(period=report_period_parse("2025-03"), group_by=MarginGroup.METER, sort="label")

    assert [(row.key, row.currency, row.revenue, row.cost, row.margin) for row in report.rows] == [
        ("ai_action", "eur", D("0.50"), D("0.05"), None),
        ("ai_action", "usd", D("2.00"), D("0.50"), D("1.50")),
        ("llm_tokens", "usd", D("1.15"), D("1.02"), D("0.13")),
    ]


def test_by_model_shows_which_model_loses_money(usage):
    report = margin_report(period=report_period_parse("2025-03"), group_by=MarginGroup.DIMENSION)

    assert table(report) == [
        ("llm_tokens:mini", "usd", D("0.05"), D("0.10"), D("-0.05"), D("-100.00")),
        # Cache hits are never rated, so the rollups keep them without a model: their cost shows apart.
        ("llm_tokens:", "usd", D("0"), D("0.02"), D("-0.02"), None),
        ("llm_tokens:gpt-4o", "usd", D("1.10"), D("0.90"), D("0.20"), D("18.18")),
        ("ai_action:", "usd", D("2.00"), D("0.50"), D("1.50"), D("75.00")),
        ("ai_action:", "eur", D("0.50"), D("0.05"), None, None),
    ]


def test_the_current_period_is_each_customers_billing_period_and_other_months_are_empty(usage):
    with time_machine.travel(IN_MARCH, tick=False):
        current = margin_report(period=report_period_parse(None), group_by=MarginGroup.CUSTOMER)
    april = margin_report(period=report_period_parse("2025-04"), group_by=MarginGroup.CUSTOMER)

    assert current.period.label == "current"
    assert [row.key for row in current.rows] == ["alpha", "beta", "gamma"]
    assert april.rows == [] and april.totals == []


@pytest.mark.parametrize("raw", ["2025-13", "2025-3", "March", "2025-03-01", "1969-12"])
def test_a_period_that_is_not_a_month_is_refused(raw):
    with pytest.raises(InvalidPeriod):
        report_period_parse(raw)


# --- the API ---------------------------------------------------------------------------------------------


def test_the_api_reports_margins_as_exact_decimal_strings(api, usage):
    response = api.get("/api/v1/reports/margins", {"period": "2025-03", "group_by": "customer"})

    assert response.status_code == 200
    body = response.json()
    assert body["period"] == {"label": "2025-03", "start": "2025-03-01", "end": "2025-04-01"}
    assert body["group_by"] == "customer"
    assert body["cost_currency"] == "usd"
    assert body["rows"][0] == {
        "key": "alpha",
        "label": "Alpha",
        "revenue": "1.15",
        "cost": "1.02",
        "margin": "0.13",
        "margin_percent": "11.3",
        "currency": "usd",
    }
    assert body["rows"][2]["margin"] is None
    assert [total["key"] for total in body["totals"]] == ["eur", "usd"]


@pytest.mark.parametrize(
    ("query", "code", "param"),
    [
        ({"period": "2025-13"}, "invalid_period", "period"),
        ({"group_by": "plan"}, "invalid_group_by", "group_by"),
        ({"perod": "2025-03"}, "invalid_request", "perod"),
    ],
)
def test_the_api_refuses_a_bad_query_with_a_named_400(api, query, code, param):
    response = api.get("/api/v1/reports/margins", query)

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param)


# --- the negative-margin alert ---------------------------------------------------------------------------


def test_a_negative_margin_is_alerted_once_per_period_by_email_and_slack(
    settings,
    slack,  # noqa: F811
    usage,
    django_capture_on_commit_callbacks,
):
    settings.OPERATOR_EMAILS = ["ops@example.com"]
    settings.OPERATOR_SLACK_WEBHOOK_URL = slack.url
    with time_machine.travel(IN_MARCH, tick=False):
        assert margins_negative_check() == []  # every margin in the operator's currency is positive
        # A loss-making burst: 200,000 mini tokens bring $0.20 and cost us the $0.40 the event says.
        usage_events_ingest(
            raw_events=[
                event(
                    "a5",
                    customer="alpha",
                    meter="llm_tokens",
                    quantity=200_000,
                    properties={"model": "mini", "cost": "0.4"},
                )
            ]
        )
        with django_capture_on_commit_callbacks(execute=True):
            first = margins_negative_task()
            again = margins_negative_task()

    [alert] = OperatorAlert.objects.filter(kind=OperatorAlertKind.MARGIN_NEGATIVE)
    assert first == [alert.pk] and again == []
    assert alert.customer == usage["alpha"]
    # revenue 1.15 + 0.20 = 1.35; cost 1.02 + 0.40 = 1.42; margin -0.07
    assert alert.data["margin"] == "-0.070000000000"
    assert len(mail.outbox) == 1
    assert "Alpha" in mail.outbox[0].subject and "margin -$0.07" in mail.outbox[0].body
    assert len(slack.received) == 1 and "Negative margin: Alpha" in slack.received[0]["text"]


@pytest.fixture
def hybrid(make_plan, make_customer):
    """delta pays a $20 base fee for 1,000 included actions, then $0.05 each; an action costs us $0.005.
    In March they use 600 actions: all included, so no usage charge, and $3.00 of serving cost."""
    with time_machine.travel(MARCH, tick=False):
        make_plan(
            "hybrid",
            base_fee="20",
            prices=[{"meter": "ai_action", "model": "per_unit", "unit_amount": "0.05", "included": "1000"}],
        )
        rate("ai_action", "", "0.005")
        customer = make_customer("hybrid", "delta")
    with time_machine.travel(IN_MARCH, tick=False):
        usage_events_ingest(raw_events=[event("d1", customer="delta", meter="ai_action", quantity=600)])
    return customer


def test_the_current_period_counts_the_base_fee_that_pays_for_the_allowance(hybrid):
    with time_machine.travel(IN_MARCH, tick=False):
        by_customer = margin_report(period=report_period_parse(None), group_by=MarginGroup.CUSTOMER)
        by_meter = margin_report(period=report_period_parse(None), group_by=MarginGroup.METER, sort="label")
        assert margins_negative_check() == []

    assert table(by_customer) == [("delta", "usd", D("20"), D("3.000"), D("17.000"), D("85.00"))]
    # Grouped by meter, the base fee belongs to no meter: it is a row of its own, and the totals agree.
    assert [(row.key, row.revenue, row.cost) for row in by_meter.rows] == [
        ("ai_action", D("0"), D("3.000")),
        ("base_fee", D("20"), D("0")),
    ]
    assert [(t.revenue, t.cost) for t in by_meter.totals] == [(D("20"), D("3.000"))]
    # A calendar month holds the usage charges only.
    month = margin_report(period=report_period_parse("2025-03"), group_by=MarginGroup.CUSTOMER)
    assert table(month) == [("delta", "usd", D("0"), D("3.000"), D("-3.000"), None)]


def test_a_negative_margin_is_sent_to_the_operators_webhooks_once(usage):
    webhook_endpoint_create(url="http://127.0.0.1:9/hooks", events=[CustomerEventType.MARGIN_NEGATIVE])
    with time_machine.travel(IN_MARCH, tick=False):
        usage_events_ingest(
            raw_events=[
                event(
                    "a5",
                    customer="alpha",
                    meter="llm_tokens",
                    quantity=200_000,
                    properties={"model": "mini", "cost": "0.4"},
                )
            ]
        )
        margins_negative_check()
        margins_negative_check()

    [sent] = [json.loads(row.body) for row in WebhookEvent.objects.filter(type="margin.negative")]
    assert sent["customer"] == "alpha"
    assert sent["data"] | {"period_start": None} == {
        "customer": "alpha",
        "period_start": None,
        "revenue": "1.35",
        "cost": "1.42",
        "margin": "-0.07",
        "currency": "usd",
    }
