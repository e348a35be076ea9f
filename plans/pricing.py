"""The rating engine: quantities in, priced lines out.

Pure functions on `Decimal`, no Django and no database, so the math is property-tested on its own
(tests/plans/test_pricing.py). The catalog turns a plan version into a `VersionSpec`; the ledger asks
`marginal_cost` what each event adds and `rate_period` for the lines of a period.

Units, everywhere in this module:
- quantities (`quantity`, `included`, `up_to`, `package_size`, `before`, `add`) are in the meter's units:
  tokens, API calls, GB-hours. They may be fractional.
- rates and amounts (`unit_amount`, `flat_amount`, `package_amount`, `rates`, `base_fee`) are in the
  price's unit: major units of the plan currency (dollars, not cents), or credits when the unit is
  `CREDITS`. Rates may be finer than a cent ($0.000005 a token).

Costs are computed exactly (an inexact step raises `decimal.Inexact` rather than drifting) and rounded only
when a period becomes lines, one line at a time, in `rate_period`. Credits are never rounded.

Tiers follow Stripe: `up_to` is the inclusive upper bound of a tier, in billable units; the last tier is
open-ended. With tiers (up to 1,000 at $0; up to 10,000 at $0.002; above at $0.001):
- graduated prices each unit at the tier it falls in:
  12,000 units = 1,000 * 0 + 9,000 * 0.002 + 2,000 * 0.001 = $20.
  A tier's flat amount is charged once the quantity enters the tier (some of it falls in the tier), as
  Stripe does; a quantity that ends exactly on a bound has not entered the next tier.
- volume prices all units at the tier the total falls in, plus that tier's flat amount:
  12,000 units = 12,000 * 0.001 = $12.
  So a larger total can cost less (10,000 units = $20, 10,001 = $10.001): volume cost is not monotone,
  and the marginal cost of an event that crosses into a cheaper tier is negative. That is the price the
  customer agreed to.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import (
    ROUND_HALF_UP,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    localcontext,
)
from enum import StrEnum
from functools import lru_cache

from core.money import CREDITS, round_money

ZERO = Decimal(0)

# Costs are sums and products of catalog decimals, so with enough digits they are exact. Trapping Inexact
# turns the impossible-in-practice case (a result needing more than 60 significant digits) into an error
# instead of a silently rounded invoice, and keeps marginal costs exactly additive, which the ledger needs.
_EXACT = Context(prec=60, rounding=ROUND_HALF_UP, traps=[InvalidOperation, DivisionByZero, Overflow, Inexact])


class PriceModel(StrEnum):
    PER_UNIT = "per_unit"
    GRADUATED = "graduated"
    VOLUME = "volume"
    PACKAGE = "package"
    DIMENSIONAL = "dimensional"


class LineKind(StrEnum):
    BASE_FEE = "base_fee"
    USAGE = "usage"


class UnknownDimensionValue(Exception):
    """An event's dimension value has no rate and the price has no default rate."""

    code = "unknown_dimension_value"

    def __init__(self, dimension: str, value: str | None) -> None:
        self.dimension = dimension
        self.value = value
        super().__init__(f"No rate for {dimension}={value!r} and the price has no default rate.")


class InvalidPrice(ValueError):
    """A price was used for rating although `validate_price` rejects it."""

    code = "invalid_price"

    def __init__(self, meter: str, errors: Iterable[str]) -> None:
        self.meter = meter
        self.errors = tuple(errors)
        super().__init__(f"Price for meter {meter!r} is invalid: {' '.join(self.errors)}")


@dataclass(frozen=True)
class Tier:
    """One tier of a graduated or volume price."""

    up_to: (
        Decimal | None
    )  # inclusive upper bound in billable meter units; None = open-ended, the last tier only
    unit_amount: Decimal = ZERO  # per meter unit, in the price's unit
    flat_amount: Decimal = ZERO  # once per period when the tier is reached, in the price's unit


@dataclass(frozen=True)
class PriceSpec:
    """How one meter is priced in a plan version. Which fields matter depends on `model`."""

    meter: str  # meter key, e.g. "llm_tokens"
    model: PriceModel
    unit: str  # the plan currency ("usd") or CREDITS
    included: Decimal = ZERO  # free allowance per period, in meter units
    unit_amount: Decimal | None = None  # per_unit: per meter unit
    tiers: tuple[Tier, ...] = ()  # graduated / volume
    package_size: Decimal | None = None  # package: meter units per package
    package_amount: Decimal | None = None  # package: per started package
    dimension: str | None = None  # dimensional: event property name, e.g. "model"
    rates: tuple[tuple[str, Decimal], ...] = ()  # dimensional: (value, rate per meter unit)
    default_rate: Decimal | None = None  # dimensional: for values not in `rates`; None = refuse them


@dataclass(frozen=True)
class VersionSpec:
    """A plan version as the engine sees it."""

    currency: str
    base_fee: Decimal  # per period, in major units of `currency`
    prices: tuple[PriceSpec, ...]


@dataclass(frozen=True)
class MeterUsage:
    """A meter's usage in one period, as the ledger knows it.

    `quantity` is the meter total. For a dimensional price the caller also gives the billable quantity per
    dimension value: which units fell past the allowance depends on the order of events, which only the
    ledger knows. They must add up to the billable quantity of the total (they do when each event is split
    with `split_included`). Other prices ignore them.
    """

    quantity: Decimal
    billable_by_dimension: Mapping[str, Decimal] = field(default_factory=dict)


@dataclass(frozen=True)
class Line:
    """One priced line of a period. `amount` is rounded to the minor unit for money, exact for credits."""

    kind: LineKind
    meter: str | None
    dimension_value: str | None
    description: str
    quantity: Decimal  # meter units
    included_quantity: Decimal  # of `quantity`, covered by the allowance
    billable_quantity: Decimal  # of `quantity`, priced
    unit: str  # the currency or CREDITS
    amount: Decimal


@dataclass(frozen=True)
class RatedPeriod:
    currency: str
    lines: tuple[Line, ...]
    subtotal: Decimal  # sum of the lines in `currency`, base fee included
    credits_total: Decimal  # sum of the lines in CREDITS


# --- Quantities ---


def billable_quantity(*, included: Decimal, total: Decimal) -> Decimal:
    """Meter units of a period total that are past the free allowance: max(0, total - included)."""
    with localcontext(_EXACT):
        return max(ZERO, total - included)


def split_included(*, included: Decimal, before: Decimal, add: Decimal) -> tuple[Decimal, Decimal]:
    """Split `add` meter units, arriving after `before` units this period, into (within allowance, billable).

    The two parts sum to `add`. A negative `add` (a correction) gives back billable units first, then
    allowance, mirroring how they were used. Units that only bring an over-corrected (negative) total back
    to zero are not billable either, so they count as within.
    """
    with localcontext(_EXACT):
        billable = billable_quantity(included=included, total=before + add) - billable_quantity(
            included=included, total=before
        )
        return add - billable, billable


# --- Costs ---


def price_cost(spec: PriceSpec, *, quantity: Decimal) -> Decimal:
    """Unrounded cost, in the price's unit, of a period total of `quantity` meter units, allowance applied.

    For every model but dimensional, whose cost depends on which units had which value (see `marginal_cost`).
    """
    _require_valid(spec)
    with localcontext(_EXACT):
        billable = billable_quantity(included=spec.included, total=quantity)
        match spec.model:
            case PriceModel.PER_UNIT:
                return billable * _given(spec.unit_amount)
            case PriceModel.GRADUATED:
                return _graduated_cost(spec.tiers, billable)
            case PriceModel.VOLUME:
                return _volume_cost(spec.tiers, billable)
            case PriceModel.PACKAGE:
                return _packages(billable, _given(spec.package_size)) * _given(spec.package_amount)
            case PriceModel.DIMENSIONAL:
                raise ValueError(
                    "A dimensional price costs per dimension value; use marginal_cost or rate_period."
                )


def marginal_cost(
    spec: PriceSpec, *, before: Decimal, add: Decimal, dimension_value: str | None = None
) -> Decimal:
    """Unrounded cost, in the price's unit, of adding `add` meter units to a period that already has `before`.

    cost(before + add) - cost(before), so the marginal costs of consecutive events add up exactly to the
    period's cost. Negative for volume pricing when the total crosses into a cheaper tier. For a dimensional
    price, `dimension_value` is the event's value (None when the event lacks the property: the default rate
    applies); other models ignore it.
    """
    with localcontext(_EXACT):
        if spec.model == PriceModel.DIMENSIONAL:
            _require_valid(spec)
            _, billable = split_included(included=spec.included, before=before, add=add)
            return dimension_rate(spec, dimension_value) * billable
        return price_cost(spec, quantity=before + add) - price_cost(spec, quantity=before)


def billable_cost(
    spec: PriceSpec, *, billable_before: Decimal, billable_add: Decimal, dimension_value: str | None = None
) -> Decimal:
    """Unrounded cost, in the price's unit, of `billable_add` units past the allowance, arriving after
    `billable_before` such units this period.

    For the consumption engine, which counts the allowance apart, in units taken: open reservations pin
    allowance and may settle in any order, so "the allowance is the first N units of the period" does not
    hold for them. Tiers apply to billable units only, as in `price_cost`; with no holds, this equals
    `marginal_cost` for the same event.
    """
    with localcontext(_EXACT):
        if spec.model == PriceModel.DIMENSIONAL:
            _require_valid(spec)
            return dimension_rate(spec, dimension_value) * billable_add
        start = spec.included + billable_before
        return price_cost(spec, quantity=start + billable_add) - price_cost(spec, quantity=start)


def dimension_rate(spec: PriceSpec, value: str | None) -> Decimal:
    """Rate per meter unit of a dimensional price for `value`: its own rate, else the default, else refuse."""
    for known, rate in spec.rates:
        if known == value:
            return rate
    if spec.default_rate is None:
        raise UnknownDimensionValue(spec.dimension or "", value)
    return spec.default_rate


def _graduated_cost(tiers: tuple[Tier, ...], billable: Decimal) -> Decimal:
    """Each unit at the rate of the tier it falls in, plus the flat amount of each tier it enters."""
    cost = ZERO
    lower = ZERO  # the previous tier's upper bound
    for tier in tiers:
        if billable <= lower:
            break  # the quantity ends below this tier: it is not reached
        upper = billable if tier.up_to is None else min(billable, tier.up_to)
        cost += (upper - lower) * tier.unit_amount + tier.flat_amount
        if tier.up_to is None:
            break
        lower = tier.up_to
    return cost


def _volume_cost(tiers: tuple[Tier, ...], billable: Decimal) -> Decimal:
    """All units at the rate of the tier the total falls in, plus that tier's flat amount."""
    if billable <= 0:
        return ZERO
    tier = next(t for t in tiers if t.up_to is None or billable <= t.up_to)  # the last tier is open-ended
    return billable * tier.unit_amount + tier.flat_amount


def _packages(billable: Decimal, package_size: Decimal) -> Decimal:
    """Number of started packages: ceil(billable / package_size), computed without an inexact division."""
    if billable <= 0:
        return ZERO
    whole, rest = divmod(billable, package_size)
    return whole + 1 if rest else whole


# --- A period ---


def rate_period(version: VersionSpec, *, usage: Mapping[str, MeterUsage]) -> RatedPeriod:
    """Price a period: the base fee, then each price of the version in order, against `usage` keyed by meter.

    Every price gets at least one line, zero when the meter had no usage. A dimensional price gets one line
    per dimension value in `billable_by_dimension` (sorted), after a line for the units its allowance covered
    when it has one.
    Money lines are rounded to the currency's minor unit here and only here, one line at a time; credit lines
    are exact.
    """
    currency = version.currency.lower()
    lines = [
        Line(
            kind=LineKind.BASE_FEE,
            meter=None,
            dimension_value=None,
            description="Base fee",
            quantity=Decimal(1),
            included_quantity=ZERO,
            billable_quantity=Decimal(1),
            unit=currency,
            amount=round_money(version.base_fee, currency),
        )
    ]
    for spec in version.prices:
        unit = _line_unit(spec, currency)
        meter_usage = usage.get(spec.meter, MeterUsage(quantity=ZERO))
        if spec.model == PriceModel.DIMENSIONAL:
            lines.extend(_dimensional_lines(spec, meter_usage, unit))
        else:
            lines.append(_usage_line(spec, meter_usage.quantity, unit))

    with localcontext(_EXACT):
        subtotal = sum((line.amount for line in lines if line.unit == currency), ZERO)
        credits_total = sum((line.amount for line in lines if line.unit == CREDITS), ZERO)
    return RatedPeriod(
        currency=currency, lines=tuple(lines), subtotal=subtotal, credits_total=_exact(credits_total)
    )


def _usage_line(spec: PriceSpec, quantity: Decimal, unit: str) -> Line:
    billable = billable_quantity(included=spec.included, total=quantity)
    return Line(
        kind=LineKind.USAGE,
        meter=spec.meter,
        dimension_value=None,
        description=spec.meter,
        quantity=quantity,
        included_quantity=_included_used(spec, quantity),
        billable_quantity=billable,
        unit=unit,
        amount=_line_amount(price_cost(spec, quantity=quantity), unit),
    )


def _dimensional_lines(spec: PriceSpec, meter_usage: MeterUsage, unit: str) -> list[Line]:
    _require_valid(spec)
    by_value = meter_usage.billable_by_dimension
    with localcontext(_EXACT):
        billable = billable_quantity(included=spec.included, total=meter_usage.quantity)
        given = sum(by_value.values(), ZERO)
    if given != billable:
        raise ValueError(
            f"Billable {spec.meter} by {spec.dimension} adds up to {given}, but {meter_usage.quantity} used "
            f"with {spec.included} included leaves {billable} billable."
        )
    lines = []
    included_used = _included_used(spec, meter_usage.quantity)
    if spec.included > 0 or not by_value:
        lines.append(
            Line(
                kind=LineKind.USAGE,
                meter=spec.meter,
                dimension_value=None,
                description=f"{spec.meter}: included allowance",
                quantity=included_used,
                included_quantity=included_used,
                billable_quantity=ZERO,
                unit=unit,
                amount=_line_amount(ZERO, unit),
            )
        )
    for value in sorted(by_value):
        quantity = by_value[value]
        with localcontext(_EXACT):
            cost = dimension_rate(spec, value) * quantity
        lines.append(
            Line(
                kind=LineKind.USAGE,
                meter=spec.meter,
                dimension_value=value,
                description=f"{spec.meter} ({spec.dimension}={value})",
                quantity=quantity,
                included_quantity=ZERO,
                billable_quantity=quantity,
                unit=unit,
                amount=_line_amount(cost, unit),
            )
        )
    return lines


def _included_used(spec: PriceSpec, quantity: Decimal) -> Decimal:
    """Meter units of a period total that the allowance covered."""
    return max(ZERO, min(quantity, spec.included))


def _line_unit(spec: PriceSpec, currency: str) -> str:
    unit = spec.unit.lower()
    if unit not in (currency, CREDITS):
        raise ValueError(
            f"Price for {spec.meter} is in {spec.unit!r}; the version is in {currency!r} or credits."
        )
    return unit


def _line_amount(cost: Decimal, unit: str) -> Decimal:
    """A line's amount: money rounded to the minor unit, credits exact."""
    if unit == CREDITS:
        return _exact(cost)
    return round_money(cost, unit)


def _exact(value: Decimal) -> Decimal:
    """`value` without trailing zeros, whole numbers without an exponent: 20.000 -> 20, 0.50 -> 0.5."""
    with localcontext(_EXACT):
        if value == value.to_integral_value():
            return value.quantize(Decimal(1))
        return value.normalize()


# --- Validation ---


def validate_price(spec: PriceSpec) -> list[str]:
    """Every problem with a price, as messages for the admin and the catalog import; empty when usable."""
    errors: list[str] = []
    if not spec.meter.strip():
        errors.append("A price needs a meter.")
    errors += _amount_errors("Included quantity", spec.included)

    match spec.model:
        case PriceModel.PER_UNIT:
            if spec.unit_amount is None:
                errors.append("A per-unit price needs a unit amount.")
            else:
                errors += _amount_errors("Unit amount", spec.unit_amount)
        case PriceModel.GRADUATED | PriceModel.VOLUME:
            errors += _tier_errors(spec)
        case PriceModel.PACKAGE:
            if spec.package_size is None:
                errors.append("A package price needs a package size.")
            elif not _is_decimal(spec.package_size) or not spec.package_size > 0:
                errors.append("Package size must be a number greater than 0.")
            if spec.package_amount is None:
                errors.append("A package price needs a package amount.")
            else:
                errors += _amount_errors("Package amount", spec.package_amount)
        case PriceModel.DIMENSIONAL:
            if not (spec.dimension or "").strip():
                errors.append("A dimensional price needs a dimension (the event property to price by).")
            if not spec.rates and spec.default_rate is None:
                errors.append("A dimensional price needs at least one rate or a default rate.")
            seen: set[str] = set()
            for value, rate in spec.rates:
                if value in seen:
                    errors.append(f"The rate for {value!r} is given twice.")
                seen.add(value)
                errors += _amount_errors(f"The rate for {value!r}", rate)
            if spec.default_rate is not None:
                errors += _amount_errors("Default rate", spec.default_rate)
        case _:
            errors.append(f"Unknown price model {spec.model!r}.")

    errors += _unused_field_errors(spec)
    return errors


def validate_version(version: VersionSpec) -> list[str]:
    """Every problem with a plan version: base fee, currency, each price, one price per meter, units."""
    errors = _amount_errors("Base fee", version.base_fee)
    currency = version.currency.lower()
    if len(currency) != 3 or not currency.isalpha():
        errors.append(f"{version.currency!r} is not a three-letter currency code.")
    seen: set[str] = set()
    for spec in version.prices:
        if spec.meter in seen:
            errors.append(f"{spec.meter}: the meter is priced twice.")
        seen.add(spec.meter)
        if spec.unit.lower() not in (currency, CREDITS):
            errors.append(
                f"{spec.meter}: priced in {spec.unit!r}, but the version is in {currency!r} (or credits)."
            )
        errors += [f"{spec.meter}: {error}" for error in validate_price(spec)]
    return errors


def _tier_errors(spec: PriceSpec) -> list[str]:
    if not spec.tiers:
        return [f"A {spec.model.replace('_', '-')} price needs at least one tier."]
    errors: list[str] = []
    previous: Decimal = ZERO
    last = len(spec.tiers)
    for number, tier in enumerate(spec.tiers, start=1):
        errors += _amount_errors(f"Tier {number}: unit amount", tier.unit_amount)
        errors += _amount_errors(f"Tier {number}: flat amount", tier.flat_amount)
        if tier.up_to is None:
            if number != last:
                errors.append(f"Tier {number}: only the last tier can be open-ended.")
            continue
        if not _is_decimal(tier.up_to):
            errors.append(f"Tier {number}: the upper bound must be a finite Decimal.")
            continue
        if number == last:
            errors.append(f"Tier {number}: the last tier must be open-ended (no upper bound).")
        if not tier.up_to > previous:
            if number == 1:
                errors.append(f"Tier 1: the upper bound {tier.up_to} must be greater than 0.")
            else:
                errors.append(
                    f"Tier {number}: the upper bound {tier.up_to} must be greater than the previous one, "
                    f"{previous}."
                )
        previous = max(previous, tier.up_to)
    return errors


def _unused_field_errors(spec: PriceSpec) -> list[str]:
    """Fields set for a model that ignores them: usually a price imported under the wrong model."""
    used_by = {
        "unit_amount": (spec.unit_amount is not None, {PriceModel.PER_UNIT}),
        "tiers": (bool(spec.tiers), {PriceModel.GRADUATED, PriceModel.VOLUME}),
        "package_size": (spec.package_size is not None, {PriceModel.PACKAGE}),
        "package_amount": (spec.package_amount is not None, {PriceModel.PACKAGE}),
        "dimension": (spec.dimension is not None, {PriceModel.DIMENSIONAL}),
        "rates": (bool(spec.rates), {PriceModel.DIMENSIONAL}),
        "default_rate": (spec.default_rate is not None, {PriceModel.DIMENSIONAL}),
    }
    return [
        f"{name} is not used by a {spec.model} price; remove it or change the model."
        for name, (is_set, models) in used_by.items()
        if is_set and spec.model not in models
    ]


def _amount_errors(label: str, value: Decimal) -> list[str]:
    if not _is_decimal(value):
        return [f"{label} must be a finite Decimal, not {value!r}."]
    if value < 0:
        return [f"{label} cannot be negative."]
    return []


def _is_decimal(value: object) -> bool:
    # Floats (from a JSON import, say) are refused rather than converted: 0.1 is not one tenth.
    return isinstance(value, Decimal) and value.is_finite()


def _given(value: Decimal | None) -> Decimal:
    """A field `_require_valid` has already checked is set; narrows its type."""
    if value is None:
        raise ValueError("A required price field is missing.")
    return value


def _require_valid(spec: PriceSpec) -> None:
    try:
        errors = _validated(spec)
    except TypeError:  # an unhashable field (a signaling NaN): validate without the cache
        errors = tuple(validate_price(spec))
    if errors:
        raise InvalidPrice(spec.meter, list(errors))


@lru_cache(maxsize=4096)
def _validated(spec: PriceSpec) -> tuple[str, ...]:
    """`validate_price`, remembered per spec: ingest rates thousands of events against the same few prices."""
    return tuple(validate_price(spec))
