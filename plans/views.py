"""The public pricing pages: the published catalog on one screen, and the pricing changelog.

No login: these are what a prospect or a customer reads before and after a price change. Only the
text is made here; the catalog comes from ``plans.selectors``.
"""

from dataclasses import dataclass
from decimal import Decimal

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from core.money import format_money, round_money
from plans.display import DisplayUnit, allowance_value, plural
from plans.models import (
    BillingInterval,
    ChangeEffect,
    CreditPack,
    Entitlement,
    Meter,
    OveragePolicy,
    PlanVersion,
    Price,
    PriceModel,
    PricingUnit,
    RateLimitScope,
)
from plans.selectors import price_spec, prices_with_rates, published_plans

# Token-sized rates read better per thousand or per million units, as AI consoles post them.
_RATE_SCALES = ((1, ""), (1_000, "1K"), (1_000_000, "1M"), (1_000_000_000, "1B"))


@dataclass(frozen=True)
class PriceRow:
    meter: str
    unit: str
    included: str  # "" when nothing is included
    model: str
    rates: tuple[str, ...]  # one line per tier or dimension value
    heading: str = ""  # above the rates: "By model" for a dimensional price
    cap: str = ""  # "stops at 20 a month" when the plan caps the meter
    pace: str = ""  # "at most 2 requests a minute per user" when the plan rate-limits the meter


@dataclass(frozen=True)
class PlanCard:
    code: str
    name: str
    description: str
    version: int
    base_fee: str
    interval: str
    prices: tuple[PriceRow, ...]
    credit_packs: tuple[str, ...]
    features: tuple[str, ...]
    caps: tuple[str, ...]
    # A prepaid plan (no base fee, overage blocked, credit packs) is headed by its first pack, not "$0.00".
    prepaid: bool = False
    headline: str = ""
    headline_unit: str = ""


@require_GET
def pricing(request: HttpRequest) -> HttpResponse:
    cards = []
    for plan in published_plans():
        version = plan.published_versions[0] if plan.published_versions else None  # type: ignore[attr-defined]
        if version is not None:
            cards.append(_plan_card(plan.code, plan.name, plan.description, version))
    return render(request, "plans/pricing.html", {"plans": cards})


@require_GET
def changelog(request: HttpRequest) -> HttpResponse:
    """Every version ever published (retired ones too), newest first, with its effect on customers."""
    versions = (
        PlanVersion.objects.filter(plan__is_public=True, published_at__isnull=False)
        .select_related("plan", "changelog_entry")
        .order_by("-published_at", "-number")
    )
    entries = []
    for version in versions:
        entry = getattr(version, "changelog_entry", None)
        if entry is not None:
            summary, effect = entry.summary, entry.get_effect_display()
        else:
            summary = version.changelog_note
            effect = (ChangeEffect.NEW_PLAN if version.number == 1 else ChangeEffect.GRANDFATHERED).label
        entries.append(
            {
                "plan": version.plan.name,
                "version": version.number,
                "status": version.get_status_display(),
                "published_at": version.published_at,
                "summary": summary or "Published.",
                "effect": effect,
                "base_fee": format_money(version.base_fee, version.currency),
                "interval": _interval(version),
            }
        )
    return render(request, "plans/changelog.html", {"entries": entries})


def _plan_card(code: str, name: str, description: str, version: PlanVersion) -> PlanCard:
    currency = version.currency
    interval = _interval(version)
    entitlements = list(Entitlement.objects.filter(plan_version=version))
    limits = {e.feature: e.limit for e in entitlements if e.limit is not None}
    paces = {e.feature: _pace_text(e) for e in entitlements if e.rate_limit_per_minute}
    prices = tuple(
        _price_row(
            price,
            currency,
            cap=limits.get(price.meter.key),
            interval=interval,
            pace=paces.get(price.meter.key, ""),
        )
        for price in prices_with_rates(version)
    )
    pack_rows = list(CreditPack.objects.filter(plan_version=version).order_by("amount"))
    packs = tuple(
        f"{format_money(pack.amount, currency)} for {_count(pack.credits)} credits" for pack in pack_rows
    )
    prepaid = bool(pack_rows) and version.base_fee == 0 and version.overage_policy == OveragePolicy.BLOCKED
    features = tuple(e.feature.replace("_", " ") for e in entitlements if e.enabled and e.limit is None)
    # A cap's feature is a meter key: name it as the meter is named ("AI actions: up to 20 actions").
    meters = {m.key: m for m in Meter.objects.filter(key__in=[e.feature for e in entitlements])}
    priced = {price.meter.key for price in prices_with_rates(version)}
    # Caps of priced meters are said on the meter's own line; others (a feature's quota) are listed.
    caps = tuple(
        _cap_text(e.feature, e.limit, meters.get(e.feature), interval)
        for e in entitlements
        if e.limit is not None and e.feature not in priced
    ) + tuple(
        f"{_feature_name(feature, meters)}: {pace}"
        for feature, pace in paces.items()
        if feature not in priced
    )
    return PlanCard(
        code=code,
        name=name,
        description=description,
        version=version.number,
        base_fee=format_money(version.base_fee, currency),
        interval=interval,
        prices=prices,
        credit_packs=packs,
        features=features,
        caps=caps,
        prepaid=prepaid,
        headline=format_money(pack_rows[0].amount, currency)
        if prepaid
        else format_money(version.base_fee, currency),
        headline_unit=f"for {_count(pack_rows[0].credits)} credits" if prepaid else f"/ {interval}",
    )


def _feature_name(feature: str, meters: dict[str, Meter]) -> str:
    meter = meters.get(feature)
    return meter.name if meter is not None else feature.replace("_", " ")


def _pace_text(entitlement: Entitlement) -> str:
    """A plan's rate limit as customers meet it: each call or event counts one, whatever its quantity."""
    count = entitlement.rate_limit_per_minute
    per = "user" if entitlement.rate_limit_per == RateLimitScope.USER else "account"
    return f"at most {count} {'request' if count == 1 else 'requests'} a minute per {per}"


def _cap_text(feature: str, limit: Decimal | None, meter: Meter | None, interval: str) -> str:
    if meter is None:
        return f"{feature.replace('_', ' ')}: up to {_count(limit)} per {interval}"
    display = DisplayUnit.of(meter)
    shown = display.quantity(limit) if limit is not None else None
    return f"{meter.name}: up to {_count(shown)} {display.label()} per {interval}"


def _interval(version: PlanVersion) -> str:
    return "year" if version.interval == BillingInterval.YEAR else "month"


def _price_row(
    price: Price, currency: str, *, cap: Decimal | None = None, interval: str = "month", pace: str = ""
) -> PriceRow:
    display = DisplayUnit.of(price.meter)
    # A product unit is priced per product unit ("$0.02 per message" for 1,000 tokens at $0.00002): its rates
    # and quantities are the meter's times and over the divisor. A money meter keeps its rates as they are
    # (money per tokens is what the usage costs) and shows its allowance as money.
    per_unit, unit = display.rate_basis()
    in_credits = price.pricing_unit == PricingUnit.CREDITS
    tiers = list(price.tiers.all())
    dimension_rates = list(price.dimension_rates.all())
    # One scale for all of a price's rates, so they compare at a glance ("per 1M tokens" throughout).
    amounts = [price.unit_amount, price.default_rate, *(t.unit_amount for t in tiers)]
    amounts += [rate.unit_amount for rate in dimension_rates]
    scale, label = _rate_scale([a * per_unit for a in amounts if a], currency=currency, in_credits=in_credits)

    def rate(amount: Decimal | None) -> str:
        if not amount:
            return "free"
        amount *= per_unit
        if in_credits:
            return f"{_count(amount)} credits per {unit}"
        per = f"{label} {plural(unit)}" if label else unit
        return f"{_amount(amount * scale, currency=currency, in_credits=False)} per {per}"

    rates: list[str]
    heading = ""
    included = price.included_quantity
    match price.model:
        case PriceModel.PER_UNIT:
            rates = [rate(price.unit_amount)]
        case PriceModel.GRADUATED | PriceModel.VOLUME:
            rates = []
            lower = Decimal(0)
            first = tiers[0] if tiers else None
            if (
                price.model == PriceModel.GRADUATED
                and first is not None
                and first.up_to is not None
                and not first.unit_amount
                and not first.flat_amount
            ):
                # A free first tier is an allowance: say it under "Included".
                included += first.up_to
                lower = first.up_to
                tiers = tiers[1:]
            for tier in tiers:
                if tier.up_to is None:
                    span = f"above {_count(display.quantity(lower))}"
                elif lower == 0:
                    span = f"first {_count(display.quantity(tier.up_to))}"
                else:
                    span = f"{_count(display.quantity(lower + 1))}–{_count(display.quantity(tier.up_to))}"
                text = f"{span}: {rate(tier.unit_amount)}"
                if tier.flat_amount:
                    text += f" + {_amount(tier.flat_amount, currency=currency, in_credits=in_credits)} flat"
                rates.append(text)
                lower = tier.up_to if tier.up_to is not None else lower
            if price.model == PriceModel.VOLUME:
                rates.append("All units at the rate of the tier the period's total reaches.")
        case PriceModel.PACKAGE:
            rates = [
                f"{_amount(price.package_amount or Decimal(0), currency=currency, in_credits=in_credits)} "
                f"per {_count(price.package_size or Decimal(1))} {plural(unit)} (each started package)"
            ]
        case PriceModel.DIMENSIONAL:
            heading = f"By {price.dimension}"
            rates = [f"{dr.value}: {rate(dr.unit_amount)}" for dr in dimension_rates]
            if price.default_rate is not None:
                rates.append(f"any other: {rate(price.default_rate)}")
        case _:
            rates = []
    cap_text = f"stops at {_count(display.quantity(cap))} a {interval}" if cap is not None else ""
    if cap is not None and included >= cap:
        rates = []  # nothing past the allowance can be used: no rate to show
    if display.in_money:
        low, high = allowance_value(price_spec(price), included)
        worth = (
            format_money(low, currency)
            if low == high
            else f"{format_money(low, currency)}–{format_money(high, currency)}"
        )
        included_text = f"{worth} of usage" if high > 0 and not in_credits else ""
    else:
        included_text = f"{_count(display.quantity(included))} {display.label()}" if included else ""
    return PriceRow(
        meter=price.meter.name,
        unit=display.label(),
        included=included_text,
        model=price.get_model_display(),
        rates=tuple(rates),
        heading=heading,
        cap=cap_text,
        pace=pace,
    )


def _rate_scale(amounts: list[Decimal], *, currency: str, in_credits: bool) -> tuple[int, str]:
    """The smallest of 1, 1K, 1M, 1B units at which every rate reads exactly in cents (or is >= 1)."""
    if in_credits or not amounts:
        return 1, ""
    for scale, label in _RATE_SCALES:
        if all(round_money(a * scale, currency) == a * scale or a * scale >= 1 for a in amounts):
            return scale, label
    return _RATE_SCALES[-1]


def _amount(amount: Decimal, *, currency: str, in_credits: bool) -> str:
    if in_credits:
        return f"{_count(amount)} credits"
    if round_money(amount, currency) != amount:
        return f"{amount.normalize():f} {currency.upper()}"  # finer than a cent: exact, not rounded
    return format_money(amount, currency)


def _count(value: Decimal | None) -> str:
    """1000000.000000 -> "1,000,000"; 0.5 -> "0.5"."""
    if value is None:
        return ""
    if value == value.to_integral_value():
        return f"{value.quantize(Decimal(1)):,f}"
    return f"{value.normalize():,f}"
