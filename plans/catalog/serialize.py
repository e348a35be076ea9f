"""Writing a catalog file, and the content hash that comes from the same canonical form."""

import hashlib
import json
from decimal import Decimal
from typing import Any

from core.money import CREDITS, currency_exponent
from plans.catalog.content import Catalog, EntitlementEntry, MeterEntry, PlanEntry, VersionContent
from plans.pricing import PriceModel, PriceSpec, Tier


def catalog_dumps(catalog: Catalog) -> str:
    """The file's text: a price, tier or meter that fits on a line is written on one, for readable diffs."""
    return _json_text(catalog_data(catalog), indent="") + "\n"


def _json_text(value: Any, *, indent: str, width: int = 110) -> str:
    flat = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    if len(indent) + len(flat) <= width or not isinstance(value, dict | list) or not value:
        return flat
    inner = indent + "  "
    if isinstance(value, list):
        items = [inner + _json_text(item, indent=inner, width=width) for item in value]
        return "[\n" + ",\n".join(items) + "\n" + indent + "]"
    items = [
        f"{inner}{json.dumps(key, ensure_ascii=False)}: {_json_text(item, indent=inner, width=width)}"
        for key, item in value.items()
    ]
    return "{\n" + ",\n".join(items) + "\n" + indent + "}"


def catalog_data(catalog: Catalog) -> dict[str, Any]:
    """The catalog as the JSON-ready structure of the file format (decimals as strings)."""
    return {
        "meters": [_meter_data(meter) for meter in catalog.meters],
        "plans": [_plan_data(plan) for plan in catalog.plans],
    }


def version_content_data(content: VersionContent) -> dict[str, Any]:
    """A version's pricing content in the file's plan shape (without the plan's own keys)."""
    currency = content.currency
    # "overage" appears only when it is not the default, so a version stored before the policy existed keeps
    # its content hash (and catalog_import does not see every plan as changed).
    overage = {"overage": content.overage} if content.overage != "allowed" else {}
    return {
        "currency": currency,
        "interval": content.interval,
        "base_fee": _decimal_text(content.base_fee, _money_places(currency)),
        **overage,
        "prices": [_price_data(spec) for spec in content.prices],
        "entitlements": [_entitlement_data(entry) for entry in content.entitlements],
        "credit_packs": [
            {
                "price": _decimal_text(pack.price, _money_places(currency)),
                "credits": _decimal_text(pack.credits),
            }
            for pack in content.credit_packs
        ],
    }


def content_hash(content: VersionContent) -> str:
    """SHA-256 of the canonical JSON of a version's pricing content: equal prices, equal hash."""
    canonical = json.dumps(version_content_data(content), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _meter_data(meter: MeterEntry) -> dict[str, Any]:
    data: dict[str, Any] = {
        "key": meter.key,
        "name": meter.name,
        "unit": meter.unit,
        "aggregation": meter.aggregation,
    }
    if meter.unique_property:
        data["unique_property"] = meter.unique_property
    if meter.cost is not None:
        cost: dict[str, Any] = {}
        if meter.cost.unit_amount is not None:
            cost["unit_amount"] = _decimal_text(meter.cost.unit_amount)
        if meter.cost.dimension:
            cost["dimension"] = meter.cost.dimension
        if meter.cost.rates:
            cost["rates"] = {value: _decimal_text(rate) for value, rate in meter.cost.rates}
        if meter.cost.effective_from is not None:
            cost["effective_from"] = meter.cost.effective_from.isoformat()
        data["cost"] = cost
    if meter.display_mode == "money":
        data["display"] = "money"
    elif meter.display_mode == "unit":
        data["display"] = {"unit": meter.display_unit, "divisor": _decimal_text(meter.display_divisor)}
    return data


def _plan_data(plan: PlanEntry) -> dict[str, Any]:
    data: dict[str, Any] = {"code": plan.code, "name": plan.name}
    for key in ("description", "display_order", "is_public", "changelog"):
        if getattr(plan, key) is not None:
            data[key] = getattr(plan, key)
    return data | version_content_data(plan.version)


def _price_data(spec: PriceSpec) -> dict[str, Any]:
    """A price as the file writes it: only the keys that are set, amounts to the unit's minor places."""
    places = 0 if spec.unit == CREDITS else _money_places(spec.unit)
    data: dict[str, Any] = {"meter": spec.meter, "model": str(spec.model)}
    if spec.unit == CREDITS:
        data["unit"] = CREDITS
    if spec.included:
        data["included"] = _decimal_text(spec.included)
    if spec.unit_amount is not None:
        data["unit_amount"] = _decimal_text(spec.unit_amount, places)
    if spec.tiers:
        data["tiers"] = [_tier_data(tier, places) for tier in spec.tiers]
    if spec.package_size is not None:
        data["package_size"] = _decimal_text(spec.package_size)
    if spec.package_amount is not None:
        data["package_amount"] = _decimal_text(spec.package_amount, places)
    if spec.model == PriceModel.DIMENSIONAL or spec.dimension or spec.rates:
        data["dimension"] = spec.dimension
        data["rates"] = {value: _decimal_text(rate, places) for value, rate in spec.rates}
    if spec.model == PriceModel.DIMENSIONAL or spec.default_rate is not None:
        data["default_rate"] = None if spec.default_rate is None else _decimal_text(spec.default_rate, places)
    return data


def _tier_data(tier: Tier, places: int) -> dict[str, Any]:
    data = {
        "up_to": None if tier.up_to is None else _decimal_text(tier.up_to),
        "unit_amount": _decimal_text(tier.unit_amount, places),
    }
    if tier.flat_amount:
        data["flat_amount"] = _decimal_text(tier.flat_amount, places)
    return data


def _entitlement_data(entry: EntitlementEntry) -> dict[str, Any]:
    data: dict[str, Any] = {"feature": entry.feature}
    if entry.limit is None or not entry.enabled:
        data["enabled"] = entry.enabled
    if entry.limit is not None:
        data["limit"] = _decimal_text(entry.limit)
    # Only when set, so that a version stored before rate limits existed keeps its content hash.
    if entry.rate_limit_per_minute is not None:
        data["rate_limit"] = {"per_minute": entry.rate_limit_per_minute, "per": entry.rate_limit_per}
    return data


def _money_places(currency: str) -> int:
    try:
        return currency_exponent(currency)
    except ValueError:
        return 0


def _decimal_text(value: Decimal, min_places: int = 0) -> str:
    """Plain notation, no trailing zeros beyond `min_places`: 20.0000 -> "20.00" (2), 0.000010 -> "0.00001".

    A function of the value only, not of how it was written, which `content_hash` relies on.
    """
    text = format(value.normalize(), "f")
    if len(text.partition(".")[2]) < min_places:
        text = format(value.quantize(Decimal(1).scaleb(-min_places)), "f")
    return text
