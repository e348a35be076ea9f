"""Properties of the rating engine. Worked examples from real pricing pages are in test_pricing_golden.py."""

from dataclasses import replace
from decimal import ROUND_HALF_UP, Decimal

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from core.money import CREDITS
from plans.pricing import (
    InvalidPrice,
    LineKind,
    MeterUsage,
    PriceModel,
    PriceSpec,
    Tier,
    UnknownDimensionValue,
    VersionSpec,
    billable_quantity,
    dimension_rate,
    marginal_cost,
    price_cost,
    rate_period,
    split_included,
    validate_price,
    validate_version,
)

D = Decimal

# --- Strategies ---
# Quantities with a fractional part (GB-hours), rates finer than a cent (tokens).


def decimals(low, high, places):
    return st.decimals(min_value=low, max_value=high, places=places, allow_nan=False, allow_infinity=False)


quantities = decimals(0, 100_000, 3)
rates = decimals(0, 10, 6)
flat_amounts = decimals(0, 100, 2)
included_quantities = st.one_of(st.just(D(0)), decimals(0, 20_000, 2))
DIMENSION_VALUES = ("gpt-4o", "gpt-4o-mini", "o1", "claude")


tier_bounds = decimals(D("0.01"), 50_000, 2)


@st.composite
def tier_lists(draw, bounds=tier_bounds):
    """1 to 4 tiers with strictly ascending bounds, the last open-ended."""
    ups = sorted(draw(st.sets(bounds, min_size=0, max_size=3)))
    tiers = [Tier(up_to=up, unit_amount=draw(rates), flat_amount=draw(flat_amounts)) for up in ups]
    return (*tiers, Tier(up_to=None, unit_amount=draw(rates), flat_amount=draw(flat_amounts)))


@st.composite
def price_specs(draw, model, unit="usd"):
    included = draw(included_quantities)
    match model:
        case PriceModel.PER_UNIT:
            return PriceSpec("m", model, unit, included=included, unit_amount=draw(rates))
        case PriceModel.GRADUATED | PriceModel.VOLUME:
            return PriceSpec("m", model, unit, included=included, tiers=draw(tier_lists()))
        case PriceModel.PACKAGE:
            return PriceSpec(
                "m",
                model,
                unit,
                included=included,
                package_size=draw(decimals(D("0.01"), 5_000, 2)),
                package_amount=draw(flat_amounts),
            )
        case PriceModel.DIMENSIONAL:
            given_rates = draw(st.dictionaries(st.sampled_from(DIMENSION_VALUES), rates, min_size=1))
            return PriceSpec(
                "m",
                model,
                unit,
                included=included,
                dimension="model",
                rates=tuple(given_rates.items()),
                default_rate=draw(st.one_of(st.none(), rates)),
            )


@st.composite
def priced_values(draw, spec):
    """A dimension value the price accepts: a known one, or anything when there is a default rate."""
    known = [value for value, _ in spec.rates]
    if spec.default_rate is None:
        return draw(st.sampled_from(known))
    return draw(st.one_of(st.sampled_from(known), st.just("unlisted"), st.none()))


ALL_MODELS = list(PriceModel)
NON_DIMENSIONAL = [m for m in PriceModel if m != PriceModel.DIMENSIONAL]
MONOTONE_MODELS = [PriceModel.PER_UNIT, PriceModel.GRADUATED, PriceModel.PACKAGE, PriceModel.DIMENSIONAL]


def cost(spec, *, before, add, value):
    return marginal_cost(spec, before=before, add=add, dimension_value=value)


# --- Monotonicity ---


@pytest.mark.parametrize("model", [m for m in MONOTONE_MODELS if m != PriceModel.DIMENSIONAL])
@given(data=st.data(), a=quantities, b=quantities)
def test_period_cost_never_decreases_with_quantity(model, data, a, b):
    spec = data.draw(price_specs(model))
    low, high = sorted((a, b))
    assert price_cost(spec, quantity=low) <= price_cost(spec, quantity=high)


@pytest.mark.parametrize("model", MONOTONE_MODELS)
@given(data=st.data(), before=quantities, add=quantities)
def test_adding_units_never_lowers_the_bill(model, data, before, add):
    spec = data.draw(price_specs(model))
    value = data.draw(priced_values(spec)) if model == PriceModel.DIMENSIONAL else None
    assert cost(spec, before=before, add=add, value=value) >= 0


def test_volume_cost_is_not_monotone_and_its_marginal_cost_can_be_negative():
    # 10,000 units at $0.002 = $20; one more and all 10,001 fall in the $0.001 tier.
    spec = PriceSpec(
        "api_calls",
        PriceModel.VOLUME,
        "usd",
        tiers=(Tier(up_to=D(10_000), unit_amount=D("0.002")), Tier(up_to=None, unit_amount=D("0.001"))),
    )
    assert price_cost(spec, quantity=D(10_000)) == D(20)
    assert price_cost(spec, quantity=D(10_001)) == D("10.001")
    assert marginal_cost(spec, before=D(10_000), add=D(1)) == D("-9.999")


# --- Additivity ---


@pytest.mark.parametrize("model", ALL_MODELS)
@given(data=st.data(), a=quantities, b=quantities)
def test_marginal_costs_add_up_exactly(model, data, a, b):
    spec = data.draw(price_specs(model))
    value = data.draw(priced_values(spec)) if model == PriceModel.DIMENSIONAL else None
    low, high = sorted((a, b))
    first = cost(spec, before=D(0), add=low, value=value)
    second = cost(spec, before=low, add=high - low, value=value)
    assert first + second == cost(spec, before=D(0), add=high, value=value)


@pytest.mark.parametrize("model", NON_DIMENSIONAL)
@given(data=st.data(), events=st.lists(decimals(-500, 5_000, 3), max_size=20))
def test_marginal_costs_of_a_period_s_events_sum_to_its_cost(model, data, events):
    """Events arrive one by one, corrections (negative) included; the ledger's sum is the period's price."""
    spec = data.draw(price_specs(model))
    assume(sum(events, D(0)) >= 0)
    total, charged = D(0), D(0)
    for add in events:
        charged += marginal_cost(spec, before=total, add=add)
        total += add
    assert charged == price_cost(spec, quantity=total)


def test_sub_cent_rates_stay_exact_over_large_quantities():
    spec = PriceSpec("llm_tokens", PriceModel.PER_UNIT, "usd", unit_amount=D("0.000002"))
    assert price_cost(spec, quantity=D(123_456_789)) == D("246.913578")
    assert marginal_cost(spec, before=D(123_456_789), add=D("0.5")) == D("0.000001")


# --- Tier boundaries ---
# Against a unit-by-unit oracle on whole quantities: unit k (1, 2, ...) falls in the first tier with k <= up_to.


def tier_of(tiers, k):
    return next(tier for tier in tiers if tier.up_to is None or k <= tier.up_to)


def graduated_oracle(tiers, quantity):
    reached = {id(tier_of(tiers, k)): tier_of(tiers, k) for k in range(1, quantity + 1)}
    per_unit = sum((tier_of(tiers, k).unit_amount for k in range(1, quantity + 1)), D(0))
    return per_unit + sum((tier.flat_amount for tier in reached.values()), D(0))


def volume_oracle(tiers, quantity):
    if quantity == 0:
        return D(0)
    tier = tier_of(tiers, quantity)
    return quantity * tier.unit_amount + tier.flat_amount


whole_tiers = tier_lists(bounds=st.integers(1, 60).map(D))


@given(tiers=whole_tiers)
def test_tiers_price_at_one_below_and_one_above_each_bound(tiers):
    graduated = PriceSpec("m", PriceModel.GRADUATED, "usd", tiers=tiers)
    volume = PriceSpec("m", PriceModel.VOLUME, "usd", tiers=tiers)
    for tier in tiers[:-1]:
        for quantity in (int(tier.up_to) - 1, int(tier.up_to), int(tier.up_to) + 1):
            assert price_cost(graduated, quantity=D(quantity)) == graduated_oracle(tiers, quantity)
            assert price_cost(volume, quantity=D(quantity)) == volume_oracle(tiers, quantity)


@given(tiers=whole_tiers, quantity=st.integers(0, 80))
def test_tiers_match_the_unit_by_unit_oracle(tiers, quantity):
    graduated = PriceSpec("m", PriceModel.GRADUATED, "usd", tiers=tiers)
    volume = PriceSpec("m", PriceModel.VOLUME, "usd", tiers=tiers)
    assert price_cost(graduated, quantity=D(quantity)) == graduated_oracle(tiers, quantity)
    assert price_cost(volume, quantity=D(quantity)) == volume_oracle(tiers, quantity)


def test_a_tier_s_flat_amount_is_charged_once_the_quantity_enters_it():
    tiers = (
        Tier(up_to=D(10), unit_amount=D(1)),
        Tier(up_to=None, unit_amount=D(2), flat_amount=D(50)),
    )
    graduated = PriceSpec("gb_hours", PriceModel.GRADUATED, "usd", tiers=tiers)
    assert price_cost(graduated, quantity=D(10)) == D(10)  # ends on the bound: tier 2 not entered
    assert price_cost(graduated, quantity=D("10.5")) == D(10) + D(1) + D(50)  # half a unit in: flat charged
    assert price_cost(graduated, quantity=D(0)) == D(0)  # nothing used: not even tier 1's flat


# --- Included allowance ---


@pytest.mark.parametrize("model", NON_DIMENSIONAL)
@given(data=st.data(), quantity=quantities)
def test_the_allowance_is_taken_off_before_the_price_applies(model, data, quantity):
    spec = data.draw(price_specs(model))
    without_allowance = replace(spec, included=D(0))
    billable = max(D(0), quantity - spec.included)
    assert price_cost(spec, quantity=quantity) == price_cost(without_allowance, quantity=billable)
    if quantity <= spec.included:
        assert price_cost(spec, quantity=quantity) == 0


def test_dimensional_allowance_is_shared_by_all_values_in_event_order():
    spec = PriceSpec(
        "llm_tokens",
        PriceModel.DIMENSIONAL,
        "usd",
        included=D(100),
        dimension="model",
        rates=(("gpt-4o", D("0.01")), ("gpt-4o-mini", D("0.001"))),
    )
    assert marginal_cost(spec, before=D(0), add=D(80), dimension_value="gpt-4o") == 0
    # 20 of these 50 are still free, 30 are billable at the mini rate.
    assert marginal_cost(spec, before=D(80), add=D(50), dimension_value="gpt-4o-mini") == D("0.030")
    assert marginal_cost(spec, before=D(130), add=D(10), dimension_value="gpt-4o") == D("0.10")


@pytest.mark.parametrize(
    ("included", "total", "billable"),
    [
        (0, 5, 5),
        (100, 0, 0),
        (100, 99, 0),
        (100, 100, 0),
        (100, 101, 1),
        (100, "100.25", "0.25"),
        (10, -5, 0),
    ],
)
def test_billable_quantity(included, total, billable):
    assert billable_quantity(included=D(included), total=D(total)) == D(billable)


@pytest.mark.parametrize(
    ("included", "before", "add", "within", "billable"),
    [
        (100, 0, 30, 30, 0),  # all free
        (100, 80, 50, 20, 30),  # straddles the allowance
        (100, 100, 5, 0, 5),  # allowance used up exactly before
        (100, 150, 10, 0, 10),  # long past it
        (0, 0, 7, 0, 7),  # no allowance
        (100, 150, -100, -50, -50),  # a correction gives back billable units first
        ("0.5", "0.25", "0.5", "0.25", "0.25"),  # fractional units
    ],
)
def test_split_included(included, before, add, within, billable):
    assert split_included(included=D(included), before=D(before), add=D(add)) == (D(within), D(billable))


@given(included=included_quantities, before=decimals(-1_000, 50_000, 3), add=decimals(-1_000, 50_000, 3))
def test_split_included_parts_add_up_and_respect_the_allowance(included, before, add):
    within, billable = split_included(included=included, before=before, add=add)
    assert within + billable == add
    if add >= 0:
        assert billable >= 0
    if add >= 0 and before >= 0:
        assert 0 <= within <= max(D(0), included - before)


# --- Dimensions ---


def llm_price(default_rate=None):
    return PriceSpec(
        "llm_tokens",
        PriceModel.DIMENSIONAL,
        "usd",
        dimension="model",
        rates=(("gpt-4o", D("0.01")),),
        default_rate=default_rate,
    )


def test_an_unknown_dimension_value_without_default_is_refused_with_a_stable_code():
    with pytest.raises(UnknownDimensionValue) as raised:
        marginal_cost(llm_price(), before=D(0), add=D(1), dimension_value="gpt-5")
    assert raised.value.code == "unknown_dimension_value"
    assert (raised.value.dimension, raised.value.value) == ("model", "gpt-5")
    assert "gpt-5" in str(raised.value)


def test_an_unknown_or_missing_dimension_value_takes_the_default_rate():
    spec = llm_price(default_rate=D("0.002"))
    assert dimension_rate(spec, "gpt-4o") == D("0.01")
    assert dimension_rate(spec, "gpt-5") == D("0.002")
    assert dimension_rate(spec, None) == D("0.002")


def test_price_cost_refuses_dimensional_prices():
    with pytest.raises(ValueError, match="dimension"):
        price_cost(llm_price(), quantity=D(1))


# --- Periods ---


def test_credit_lines_are_exact_and_money_lines_are_rounded():
    version = VersionSpec(
        currency="usd",
        base_fee=D("9.999"),
        prices=(
            PriceSpec("agent_steps", PriceModel.PER_UNIT, CREDITS, unit_amount=D("0.125")),
            PriceSpec("api_calls", PriceModel.PER_UNIT, "usd", unit_amount=D("0.0125")),
        ),
    )
    period = rate_period(version, usage={"agent_steps": MeterUsage(D(3)), "api_calls": MeterUsage(D(3))})
    base, steps, calls = period.lines
    assert (base.kind, base.amount) == (LineKind.BASE_FEE, D("10.00"))
    assert (steps.unit, steps.amount) == (CREDITS, D("0.375"))  # not 0.38
    assert (calls.unit, calls.amount) == ("usd", D("0.04"))  # 0.0375 rounds half up
    assert period.subtotal == D("10.04")
    assert period.credits_total == D("0.375")


def test_credit_amounts_are_normalized_without_exponent_notation():
    version = VersionSpec(
        currency="usd",
        base_fee=D(0),
        prices=(PriceSpec("runs", PriceModel.PER_UNIT, CREDITS, unit_amount=D("2.50")),),
    )
    period = rate_period(version, usage={"runs": MeterUsage(D(40))})
    assert str(period.lines[1].amount) == "100"
    assert str(period.credits_total) == "100"


@pytest.mark.parametrize("model", NON_DIMENSIONAL)
@given(data=st.data(), quantity=quantities)
def test_a_period_line_is_the_rounded_period_cost(model, data, quantity):
    spec = data.draw(price_specs(model))
    period = rate_period(
        VersionSpec(currency="usd", base_fee=D(20), prices=(spec,)), usage={"m": MeterUsage(quantity)}
    )
    line = period.lines[1]
    # Half-up, as on an invoice (Decimal.quantize alone would round half to even: 0.105 -> 0.10).
    assert line.amount == price_cost(spec, quantity=quantity).quantize(D("0.01"), rounding=ROUND_HALF_UP)
    assert line.amount.as_tuple().exponent == -2
    assert line.included_quantity + line.billable_quantity == quantity
    assert period.subtotal == D(20) + line.amount


def test_every_price_gets_a_line_even_without_usage():
    version = VersionSpec(
        currency="usd",
        base_fee=D(0),
        prices=(
            PriceSpec("api_calls", PriceModel.PER_UNIT, "usd", unit_amount=D("0.1")),
            llm_price(),
        ),
    )
    period = rate_period(version, usage={})
    assert [(line.meter, line.amount) for line in period.lines] == [
        (None, D("0.00")),
        ("api_calls", D("0.00")),
        ("llm_tokens", D("0.00")),
    ]


def test_a_dimensional_period_shows_the_allowance_then_each_value():
    spec = replace(llm_price(default_rate=D("0.001")), included=D(100))
    period = rate_period(
        VersionSpec(currency="usd", base_fee=D(0), prices=(spec,)),
        usage={"llm_tokens": MeterUsage(D(150), {"gpt-4o": D(30), "other": D(20)})},
    )
    assert [
        (line.dimension_value, line.quantity, line.included_quantity, line.billable_quantity, line.amount)
        for line in period.lines[1:]
    ] == [
        (None, D(100), D(100), D(0), D("0.00")),
        ("gpt-4o", D(30), D(0), D(30), D("0.30")),
        ("other", D(20), D(0), D(20), D("0.02")),
    ]
    assert period.subtotal == D("0.32")


def test_dimensional_billable_quantities_must_add_up_to_the_meter_s_billable_total():
    version = VersionSpec(currency="usd", base_fee=D(0), prices=(llm_price(),))
    with pytest.raises(ValueError, match="adds up to 5"):
        rate_period(version, usage={"llm_tokens": MeterUsage(D(10), {"gpt-4o": D(5)})})


def test_a_price_in_another_currency_is_refused():
    version = VersionSpec(
        currency="usd",
        base_fee=D(0),
        prices=(PriceSpec("api_calls", PriceModel.PER_UNIT, "eur", unit_amount=D(1)),),
    )
    with pytest.raises(ValueError, match="eur"):
        rate_period(version, usage={})
    assert validate_version(version) == [
        "api_calls: priced in 'eur', but the version is in 'usd' (or credits)."
    ]


def test_an_invalid_price_is_never_rated():
    spec = PriceSpec("api_calls", PriceModel.PER_UNIT, "usd")
    with pytest.raises(InvalidPrice) as raised:
        price_cost(spec, quantity=D(1))
    assert raised.value.code == "invalid_price"
    assert raised.value.errors == ("A per-unit price needs a unit amount.",)


# --- Validation ---


def tiered(*tiers, model=PriceModel.GRADUATED, **fields):
    return PriceSpec("m", model, "usd", tiers=tiers, **fields)


@pytest.mark.parametrize(
    ("spec", "errors"),
    [
        (
            PriceSpec("", PriceModel.PER_UNIT, "usd", unit_amount=D(1)),
            ["A price needs a meter."],
        ),
        (
            PriceSpec("m", PriceModel.PER_UNIT, "usd", included=D(-1), unit_amount=D(-1)),
            ["Included quantity cannot be negative.", "Unit amount cannot be negative."],
        ),
        (
            PriceSpec("m", PriceModel.PER_UNIT, "usd", unit_amount=0.1),
            ["Unit amount must be a finite Decimal, not 0.1."],
        ),
        (
            PriceSpec("m", PriceModel.PER_UNIT, "usd", unit_amount=D("NaN")),
            ["Unit amount must be a finite Decimal, not Decimal('NaN')."],
        ),
        (
            tiered(),
            ["A graduated price needs at least one tier."],
        ),
        (
            tiered(Tier(D(10), D(1)), Tier(D(10), D(1)), Tier(None, D(1))),
            ["Tier 2: the upper bound 10 must be greater than the previous one, 10."],
        ),
        (
            tiered(Tier(D(10), D(1)), Tier(D(5), D(1)), Tier(None, D(1)), model=PriceModel.VOLUME),
            ["Tier 2: the upper bound 5 must be greater than the previous one, 10."],
        ),
        (
            tiered(Tier(D(0), D(1)), Tier(None, D(1))),
            ["Tier 1: the upper bound 0 must be greater than 0."],
        ),
        (
            tiered(Tier(None, D(1)), Tier(D(10), D(1))),
            [
                "Tier 1: only the last tier can be open-ended.",
                "Tier 2: the last tier must be open-ended (no upper bound).",
            ],
        ),
        (
            tiered(Tier(D(10), D(1))),
            ["Tier 1: the last tier must be open-ended (no upper bound)."],
        ),
        (
            tiered(Tier(D(10), D(-1)), Tier(None, D(1), D(-5))),
            ["Tier 1: unit amount cannot be negative.", "Tier 2: flat amount cannot be negative."],
        ),
        (
            PriceSpec("m", PriceModel.PACKAGE, "usd", package_size=D(0), package_amount=D(5)),
            ["Package size must be a number greater than 0."],
        ),
        (
            PriceSpec("m", PriceModel.PACKAGE, "usd"),
            ["A package price needs a package size.", "A package price needs a package amount."],
        ),
        (
            PriceSpec("m", PriceModel.DIMENSIONAL, "usd"),
            [
                "A dimensional price needs a dimension (the event property to price by).",
                "A dimensional price needs at least one rate or a default rate.",
            ],
        ),
        (
            PriceSpec(
                "m",
                PriceModel.DIMENSIONAL,
                "usd",
                dimension="model",
                rates=(("a", D(1)), ("a", D(-2))),
                default_rate=D(-1),
            ),
            [
                "The rate for 'a' is given twice.",
                "The rate for 'a' cannot be negative.",
                "Default rate cannot be negative.",
            ],
        ),
        (
            PriceSpec("m", PriceModel.PER_UNIT, "usd", unit_amount=D(1), tiers=(Tier(None, D(1)),)),
            ["tiers is not used by a per_unit price; remove it or change the model."],
        ),
    ],
)
def test_validate_price_explains_each_problem(spec, errors):
    assert validate_price(spec) == errors


@pytest.mark.parametrize("model", ALL_MODELS)
@given(data=st.data())
def test_generated_prices_are_valid(model, data):
    assert validate_price(data.draw(price_specs(model))) == []


def test_validate_version_prefixes_messages_with_the_meter_and_refuses_a_meter_priced_twice():
    version = VersionSpec(
        currency="usd",
        base_fee=D(-1),
        prices=(
            PriceSpec("api_calls", PriceModel.PER_UNIT, "usd", unit_amount=D(1)),
            PriceSpec("api_calls", PriceModel.PER_UNIT, CREDITS),
        ),
    )
    assert validate_version(version) == [
        "Base fee cannot be negative.",
        "api_calls: the meter is priced twice.",
        "api_calls: A per-unit price needs a unit amount.",
    ]
