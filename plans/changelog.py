"""What changed between two versions of a plan, in words: the lines of a pricing-changelog entry's summary.

Pure text from two `VersionContent`s (no database); `plan_version_publish` writes the entry.
"""

from decimal import Decimal

from core.money import CREDITS, format_money
from plans.catalog import CreditPackEntry, EntitlementEntry, VersionContent
from plans.pricing import PriceModel, PriceSpec


def version_changes(previous: VersionContent | None, current: VersionContent) -> list[str]:
    """One line per change from `previous` (the latest published version) to `current`."""
    currency = current.currency.upper()  # for the currency-change line
    if previous is None:
        meters = ", ".join(spec.meter for spec in current.prices) or "no metered prices"
        fee = format_money(current.base_fee, current.currency)
        return [f"New plan: {fee} per {current.interval}; prices for {meters}."]
    lines = []
    if previous.currency != current.currency:
        lines.append(f"Currency: {previous.currency.upper()} → {currency}.")
    if previous.interval != current.interval:
        lines.append(f"Billed per {current.interval} instead of per {previous.interval}.")
    if previous.base_fee != current.base_fee:
        before, after = (format_money(v.base_fee, current.currency) for v in (previous, current))
        lines.append(f"Base fee: {before} → {after} per {current.interval}.")
    if previous.overage != current.overage:
        lines.append(
            "Usage now stops when included usage, credits and wallet run out (no overage)."
            if current.overage == "blocked"
            else "Usage past included usage, credits and wallet is now billed as overage."
        )
    lines += _keyed_changes(
        "price for",
        {spec.meter: _price_text(spec) for spec in previous.prices},
        {spec.meter: _price_text(spec) for spec in current.prices},
    )
    lines += _keyed_changes(
        "entitlement",
        {entry.feature: _entitlement_text(entry) for entry in previous.entitlements},
        {entry.feature: _entitlement_text(entry) for entry in current.entitlements},
    )
    lines += _keyed_changes(
        "credit pack",
        {_pack_text(pack, previous.currency): "" for pack in previous.credit_packs},
        {_pack_text(pack, current.currency): "" for pack in current.credit_packs},
    )
    return lines or ["No pricing change."]


def _keyed_changes(label: str, before: dict[str, str], after: dict[str, str]) -> list[str]:
    lines = []
    for key in sorted(before.keys() | after.keys()):
        if key not in before:
            lines.append(f"Added {label} {key}{': ' + after[key] if after[key] else ''}.")
        elif key not in after:
            lines.append(f"Removed {label} {key}.")
        elif before[key] != after[key]:
            lines.append(f"Changed {label} {key}: {before[key]} → {after[key]}.")
    return lines


def _price_text(spec: PriceSpec) -> str:
    unit = "credits" if spec.unit == CREDITS else spec.unit.upper()
    match spec.model:
        case PriceModel.PER_UNIT:
            text = f"{_amount(spec.unit_amount)} {unit} per unit"
        case PriceModel.GRADUATED | PriceModel.VOLUME:
            tiers = ", ".join(
                ("above" if tier.up_to is None else f"up to {_amount(tier.up_to)}")
                + f" at {_amount(tier.unit_amount)}"
                + (f" + {_amount(tier.flat_amount)} flat" if tier.flat_amount else "")
                for tier in spec.tiers
            )
            text = f"{spec.model} tiers in {unit}: {tiers}"
        case PriceModel.PACKAGE:
            text = f"{_amount(spec.package_amount)} {unit} per {_amount(spec.package_size)} units"
        case PriceModel.DIMENSIONAL:
            rates = ", ".join(f"{value} {_amount(rate)}" for value, rate in spec.rates)
            other = "refused" if spec.default_rate is None else f"at {_amount(spec.default_rate)}"
            text = f"by {spec.dimension} in {unit}: {rates}; others {other}"
    return text + (f", first {_amount(spec.included)} included" if spec.included else "")


def _entitlement_text(entry: EntitlementEntry) -> str:
    if not entry.enabled:
        return "off"
    text = "on" if entry.limit is None else f"limited to {_amount(entry.limit)} per period"
    if entry.rate_limit_per_minute is not None:
        text += f", at most {entry.rate_limit_per_minute} a minute per {entry.rate_limit_per}"
    return text


def _pack_text(pack: CreditPackEntry, currency: str) -> str:
    return f"{_amount(pack.credits)} credits for {format_money(pack.price, currency)}"


def _amount(value: Decimal | None) -> str:
    return "none" if value is None else format(value.normalize(), "f")
