"""Stripe's arithmetic: what a price charges for a quantity, and where a billing period ends.

Written independently of the app's rating engine on purpose: the fake is the oracle the app is checked
against, so it must not share the code under test.
"""

import calendar
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

SECONDS_PER_DAY = 86_400


def decimal_string(value: Decimal) -> str:
    """Stripe's decimal-string form: ``"1000"``, ``"0.25"``, never ``"1E+3"``."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def price_amount(price: dict, quantity: int) -> int:
    """The line amount in minor units for ``quantity`` units, rounded half-up once for the whole line.

    A negative period total bills as zero, as Stripe does for meters. A tier's flat fee is charged only when
    at least one unit falls in that tier, so an idle period on a tiered price costs nothing.
    """
    units = Decimal(max(quantity, 0))
    if price["billing_scheme"] == "per_unit":
        exact = units * Decimal(price["unit_amount_decimal"])
    elif price["tiers_mode"] == "graduated":
        exact = _graduated(price["tiers"], units)
    else:
        exact = _volume(price["tiers"], units)
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _tier_unit(tier: dict) -> Decimal:
    return Decimal(tier["unit_amount_decimal"] or 0)


def _tier_flat(tier: dict) -> Decimal:
    return Decimal(tier["flat_amount_decimal"] or 0)


def _graduated(tiers: list[dict], units: Decimal) -> Decimal:
    """Each tier prices only the units that fall inside it: 1..up_to of tier 1, then the next slice, ..."""
    total = Decimal(0)
    lower = Decimal(0)
    for tier in tiers:
        upper = units if tier["up_to"] is None else min(units, Decimal(tier["up_to"]))
        in_tier = upper - lower
        if in_tier <= 0:
            break
        total += in_tier * _tier_unit(tier) + _tier_flat(tier)
        lower = upper
    return total


def _volume(tiers: list[dict], units: Decimal) -> Decimal:
    """All units are priced at the one tier the total falls in."""
    if units == 0:
        return Decimal(0)
    for tier in tiers:
        if tier["up_to"] is None or units <= tier["up_to"]:
            return units * _tier_unit(tier) + _tier_flat(tier)
    raise ValueError("tiers must end with an up_to=inf tier")


def period_end(
    *, anchor: int, start: int, interval: str, interval_count: int, day_of_month: int | None = None
) -> int:
    """When the period that begins at ``start`` ends, in Unix seconds (UTC).

    Monthly and yearly periods keep the anchor's day of month (or ``billing_cycle_anchor_config``'s
    ``day_of_month``), clamped to short months: a subscription anchored on Jan 31 renews on Feb 28 (or 29),
    then Mar 31.
    """
    if interval == "day":
        return start + interval_count * SECONDS_PER_DAY
    if interval == "week":
        return start + interval_count * 7 * SECONDS_PER_DAY
    months = interval_count * (12 if interval == "year" else 1)
    begin = datetime.fromtimestamp(start, UTC)
    anchor_day = day_of_month or datetime.fromtimestamp(anchor, UTC).day
    year, month_index = divmod(begin.month - 1 + months, 12)
    year += begin.year
    month = month_index + 1
    day = min(anchor_day, calendar.monthrange(year, month)[1])
    return int(begin.replace(year=year, month=month, day=day).timestamp())


def anchor_next(*, config: dict[str, int], now: int) -> int:
    """The next moment after ``now`` matching ``billing_cycle_anchor_config`` (day of month, clamped to short
    months, at hour:minute:second UTC, in ``month`` when given), as Stripe sets ``billing_cycle_anchor``."""
    moment = datetime.fromtimestamp(now, UTC)
    for offset in range(25):
        year, month_index = divmod(moment.month - 1 + offset, 12)
        year, month = moment.year + year, month_index + 1
        if config.get("month") not in (None, month):
            continue
        day = min(config["day_of_month"], calendar.monthrange(year, month)[1])
        candidate = datetime(
            year,
            month,
            day,
            config.get("hour", 0),
            config.get("minute", 0),
            config.get("second", 0),
            tzinfo=UTC,
        )
        if candidate.timestamp() > now:
            return int(candidate.timestamp())
    raise ValueError("no matching anchor within two years")
