from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.money import CREDITS, currency_exponent, format_money, round_money, to_minor_units


@pytest.mark.parametrize(
    ("currency", "exponent"),
    [
        *[("usd", 2), ("USD", 2), ("eur", 2), ("sek", 2)],
        *[("jpy", 0), ("JPY", 0), ("krw", 0), ("xpf", 0)],
        *[("kwd", 3), ("BHD", 3), ("tnd", 3)],
    ],
)
def test_currency_exponent_knows_zero_and_three_decimal_currencies(currency, exponent):
    assert currency_exponent(currency) == exponent


@pytest.mark.parametrize("not_a_currency", [CREDITS, "us", "dollars", "u$d", ""])
def test_currency_exponent_refuses_what_is_not_a_currency_code(not_a_currency):
    with pytest.raises(ValueError):
        currency_exponent(not_a_currency)


@pytest.mark.parametrize(
    ("amount", "currency", "rounded"),
    [
        ("0.125", "usd", "0.13"),
        ("0.124999", "usd", "0.12"),
        ("-0.125", "usd", "-0.13"),  # halves go away from zero, refunds included
        ("1234.5", "jpy", "1235"),
        ("1234.49", "jpy", "1234"),
        ("1.2345", "kwd", "1.235"),
        ("7.500000", "usd", "7.50"),
        ("0.000002", "usd", "0.00"),
    ],
)
def test_round_money_rounds_half_up_to_the_minor_unit(amount, currency, rounded):
    result = round_money(Decimal(amount), currency)
    assert result == Decimal(rounded)
    assert str(result) == rounded  # quantized to the minor unit, not just equal in value


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        ("12.34", "usd", 1234),
        ("12.3", "usd", 1230),
        ("7.500000", "usd", 750),  # trailing zeros carry no precision
        ("-5.00", "usd", -500),
        ("1235", "jpy", 1235),
        ("1235.0", "JPY", 1235),
        ("1.234", "kwd", 1234),
        ("0", "kwd", 0),
    ],
)
def test_to_minor_units_converts_exactly(amount, currency, minor):
    assert to_minor_units(Decimal(amount), currency) == minor


@pytest.mark.parametrize(
    ("amount", "currency"), [("0.125", "usd"), ("12.5", "jpy"), ("1.2345", "kwd"), ("0.000002", "usd")]
)
def test_to_minor_units_refuses_unrounded_amounts(amount, currency):
    with pytest.raises(ValueError, match="round_money"):
        to_minor_units(Decimal(amount), currency)


def test_to_minor_units_refuses_floats_and_non_numbers():
    with pytest.raises(TypeError):
        to_minor_units(12.34, "usd")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        to_minor_units(Decimal("NaN"), "usd")
    with pytest.raises(ValueError):
        to_minor_units(Decimal("Infinity"), "usd")


@given(
    amount=st.decimals(min_value=-(10**9), max_value=10**9, places=6, allow_nan=False, allow_infinity=False),
    currency=st.sampled_from(["usd", "jpy", "kwd"]),
)
def test_rounded_amounts_always_convert_and_back(amount, currency):
    rounded = round_money(amount, currency)
    minor = to_minor_units(rounded, currency)
    assert Decimal(minor).scaleb(-currency_exponent(currency)) == rounded
    assert abs(rounded - amount) <= Decimal("0.5").scaleb(-currency_exponent(currency))


@pytest.mark.parametrize(
    ("amount", "currency", "text"),
    [
        ("1234.5", "usd", "$1,234.50"),
        ("1234.5", "jpy", "¥1,235"),
        ("3", "eur", "€3.00"),
        ("-3", "eur", "-€3.00"),
        ("0.999", "gbp", "£1.00"),
        ("-0.001", "usd", "$0.00"),  # rounds to zero: no "-$0.00"
        ("12", "sek", "12.00 SEK"),
        ("1234567.891", "KWD", "1,234,567.891 KWD"),
    ],
)
def test_format_money(amount, currency, text):
    assert format_money(Decimal(amount), currency) == text
