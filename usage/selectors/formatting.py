"""Display helpers: the same text on the page and in the API's labels."""

from decimal import ROUND_FLOOR, Decimal

from core.money import CREDITS, format_money
from plans.display import plural
from usage.selectors.units import QUANTITY_PLACES


def format_quantity(value: Decimal) -> str:
    """Exact, with thousands separators and no trailing zeros: 1234567.500000 -> "1,234,567.5"."""
    if value == value.to_integral_value():
        return f"{value.quantize(Decimal(1)):,f}"
    return f"{value.quantize(QUANTITY_PLACES).normalize():,f}"


def format_quantity_short(value: Decimal) -> str:
    """Compact for big numbers: 1234567 -> "1.2M", 12500 -> "12.5K", 950 -> "950"."""
    magnitude = abs(value)
    for threshold, suffix in ((Decimal(10) ** 9, "B"), (Decimal(10) ** 6, "M"), (Decimal(10) ** 3, "K")):
        if magnitude >= threshold:
            scaled = (value / threshold).quantize(Decimal("0.1"), rounding=ROUND_FLOOR)
            return f"{scaled.normalize():f}{suffix}"
    return format_quantity(value.quantize(Decimal("0.01")) if value != value.to_integral_value() else value)


def unit_label(unit: str, quantity: Decimal | None = None) -> str:
    """The meter's unit, plural unless exactly one: "token" -> "tokens"; "GB-hours" stays."""
    return plural(unit, quantity)


def format_amount(amount: Decimal, unit: str) -> str:
    """Money with its symbol ("$12.30"), credits as a counted number ("1,250 credits")."""
    if unit == CREDITS:
        return f"{format_quantity(amount.quantize(Decimal('0.01')))} credits"
    return format_money(amount, unit)
