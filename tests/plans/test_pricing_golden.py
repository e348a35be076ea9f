"""Worked examples shaped like real pricing pages, checked to the cent (or the credit)."""

from decimal import Decimal

import pytest

from core.money import CREDITS, format_money, to_minor_units
from plans.pricing import (
    MeterUsage,
    PriceModel,
    PriceSpec,
    Tier,
    UnknownDimensionValue,
    VersionSpec,
    price_cost,
    rate_period,
)

D = Decimal


def version(base_fee, *prices, currency="usd"):
    return VersionSpec(currency=currency, base_fee=D(base_fee), prices=prices)


def usage(**quantities):
    return {meter: MeterUsage(D(quantity)) for meter, quantity in quantities.items()}


API_CALLS = PriceSpec("api_calls", PriceModel.PER_UNIT, "usd", unit_amount=D("0.10"))
TOKENS_1M_INCLUDED = PriceSpec(
    "llm_tokens", PriceModel.PER_UNIT, "usd", included=D(1_000_000), unit_amount=D("0.000005")
)  # $5 per additional 1M tokens
EMAILS = PriceSpec(
    "emails", PriceModel.PACKAGE, "usd", package_size=D(1_000), package_amount=D(5)
)  # $5 per started 1,000 emails
LLM_BY_MODEL = PriceSpec(
    "llm_1k_tokens",
    PriceModel.DIMENSIONAL,
    "usd",
    dimension="model",
    rates=(("gpt-4o", D("0.01")), ("gpt-4o-mini", D("0.0006"))),
)  # per 1K tokens, no default: an unlisted model is refused
WORKFLOWS = PriceSpec(
    "workflow_runs",
    PriceModel.DIMENSIONAL,
    CREDITS,
    dimension="complexity",
    rates=(("simple", D(1)), ("standard", D(5)), ("complex", D(20))),
)


@pytest.mark.parametrize(
    ("plan", "period_usage", "line_amounts", "subtotal", "credits_total"),
    [
        pytest.param(
            version(20, API_CALLS),
            usage(api_calls=150),
            ["20.00", "15.00"],
            "35.00",
            "0",
            id="pro-20-plus-150-calls-at-10c",
        ),
        pytest.param(
            version(29, TOKENS_1M_INCLUDED),
            usage(llm_tokens=2_500_000),
            ["29.00", "7.50"],
            "36.50",
            "0",
            id="29-with-1M-tokens-included-then-5-per-1M",
        ),
        pytest.param(
            version(29, TOKENS_1M_INCLUDED),
            usage(llm_tokens=999_999),
            ["29.00", "0.00"],
            "29.00",
            "0",
            id="29-within-the-included-tokens",
        ),
        pytest.param(
            version(0, EMAILS),
            usage(emails=2_500),
            ["0.00", "15.00"],
            "15.00",
            "0",
            id="emails-2500-is-3-packages",
        ),
        pytest.param(
            version(0, LLM_BY_MODEL),
            {"llm_1k_tokens": MeterUsage(D(6_235), {"gpt-4o": D(1_234), "gpt-4o-mini": D(5_001)})},
            ["0.00", "12.34", "3.00"],  # base fee, gpt-4o, gpt-4o-mini (3.0006)
            "15.34",
            "0",
            id="llm-by-model",
        ),
        pytest.param(
            version(49, WORKFLOWS),
            {"workflow_runs": MeterUsage(D(16), {"simple": D(10), "standard": D(4), "complex": D(2)})},
            ["49.00", "40", "10", "20"],  # base fee, then complex, simple, standard (sorted)
            "49.00",
            "70",
            id="workflow-credits-by-complexity",
        ),
        pytest.param(
            version(
                1000, PriceSpec("api_calls", PriceModel.PER_UNIT, "jpy", unit_amount=D("0.5")), currency="jpy"
            ),
            usage(api_calls=2_469),
            ["1000", "1235"],  # 1,234.5 yen rounds half up to whole yen
            "2235",
            "0",
            id="jpy-zero-decimal",
        ),
    ],
)
def test_golden_periods(plan, period_usage, line_amounts, subtotal, credits_total):
    period = rate_period(plan, usage=period_usage)
    assert [str(line.amount) for line in period.lines] == line_amounts
    assert str(period.subtotal) == subtotal
    assert str(period.credits_total) == credits_total


def test_golden_jpy_period_is_charged_and_shown_in_whole_yen():
    plan = version(
        1000, PriceSpec("api_calls", PriceModel.PER_UNIT, "jpy", unit_amount=D("0.5")), currency="jpy"
    )
    period = rate_period(plan, usage=usage(api_calls=2_469))
    assert to_minor_units(period.subtotal, period.currency) == 2235
    assert format_money(period.subtotal, period.currency) == "¥2,235"


def test_golden_usd_period_is_charged_in_cents():
    period = rate_period(version(29, TOKENS_1M_INCLUDED), usage=usage(llm_tokens=2_500_000))
    assert to_minor_units(period.subtotal, period.currency) == 3650
    assert format_money(period.subtotal, period.currency) == "$36.50"


def test_golden_unlisted_model_is_refused():
    with pytest.raises(UnknownDimensionValue):
        rate_period(
            version(0, LLM_BY_MODEL), usage={"llm_1k_tokens": MeterUsage(D(10), {"o1-preview": D(10)})}
        )


# Tiers shaped like Stripe's examples, evaluated one below, at and one above each bound.
TIERS_GRADUATED = (
    Tier(up_to=D(1_000), unit_amount=D(0)),  # first 1,000 free
    Tier(up_to=D(10_000), unit_amount=D("0.002"), flat_amount=D(5)),  # 1,001-10,000 at $0.002, $5 to enter
    Tier(up_to=None, unit_amount=D("0.001")),  # above 10,000 at $0.001
)
TIERS_VOLUME = (
    Tier(up_to=D(1_000), unit_amount=D("0.05")),
    Tier(up_to=D(10_000), unit_amount=D("0.04"), flat_amount=D(10)),
    Tier(up_to=None, unit_amount=D("0.03"), flat_amount=D(20)),
)


@pytest.mark.parametrize(
    ("quantity", "cost", "amount"),
    [
        (0, "0", "0.00"),
        (999, "0", "0.00"),
        (1_000, "0", "0.00"),
        (1_001, "5.002", "5.00"),  # enters tier 2: $5 flat + 1 x $0.002
        (9_999, "22.998", "23.00"),
        (10_000, "23.000", "23.00"),  # $5 + 9,000 x $0.002
        (10_001, "23.001", "23.00"),
        (50_000, "63.000", "63.00"),  # + 40,000 x $0.001
    ],
)
def test_golden_graduated(quantity, cost, amount):
    spec = PriceSpec("api_calls", PriceModel.GRADUATED, "usd", tiers=TIERS_GRADUATED)
    assert price_cost(spec, quantity=D(quantity)) == D(cost)
    assert str(rate_period(version(0, spec), usage=usage(api_calls=quantity)).lines[1].amount) == amount


@pytest.mark.parametrize(
    ("quantity", "cost", "amount"),
    [
        (0, "0", "0.00"),
        (1, "0.05", "0.05"),
        (999, "49.95", "49.95"),
        (1_000, "50.00", "50.00"),
        (1_001, "50.04", "50.04"),  # all 1,001 at $0.04, plus $10
        (9_999, "409.96", "409.96"),
        (10_000, "410.00", "410.00"),
        (10_001, "320.03", "320.03"),  # all 10,001 at $0.03, plus $20: cheaper than 10,000
    ],
)
def test_golden_volume(quantity, cost, amount):
    spec = PriceSpec("seats", PriceModel.VOLUME, "usd", tiers=TIERS_VOLUME)
    assert price_cost(spec, quantity=D(quantity)) == D(cost)
    assert str(rate_period(version(0, spec), usage=usage(seats=quantity)).lines[1].amount) == amount


@pytest.mark.parametrize(
    ("emails", "amount"), [(0, "0.00"), (1, "5.00"), (999, "5.00"), (1_000, "5.00"), (1_001, "10.00")]
)
def test_golden_package_rounds_up_to_started_packages(emails, amount):
    period = rate_period(version(0, EMAILS), usage=usage(emails=emails))
    assert str(period.lines[1].amount) == amount
