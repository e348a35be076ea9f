"""Reading a catalog file: decode the JSON, then validate it into a `Catalog`, reporting every problem."""

import json
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from core.errors import InvalidInput
from core.money import CREDITS
from plans.catalog.content import (
    Catalog,
    CreditPackEntry,
    EntitlementEntry,
    MeterEntry,
    MigrationEntry,
    PlanEntry,
    ServingCostEntry,
    VersionContent,
)
from plans.models import (
    MONEY,
    QUANTITY,
    RATE,
    Aggregation,
    BillingInterval,
    ChangeEffect,
    DisplayMode,
    OveragePolicy,
    PricingUnit,
    RateLimitScope,
    aggregation_refusal,
)
from plans.pricing import ZERO, PriceModel, PriceSpec, Tier, validate_price

# The keys each object may carry; anything else is a typo worth reporting ("unit_price").
_METER_KEYS = frozenset(["key", "name", "unit", "aggregation", "unique_property", "cost", "display"])
_COST_KEYS = frozenset(["unit_amount", "dimension", "rates", "effective_from"])
_DISPLAY_KEYS = frozenset(["unit", "divisor"])
_PLAN_KEYS = frozenset(
    [
        "code",
        "name",
        "description",
        "display_order",
        "is_public",
        "changelog",
        "migration",
        "currency",
        "interval",
        "base_fee",
        "overage",
        "prices",
        "entitlements",
        "credit_packs",
    ]
)
_PRICE_KEYS = frozenset(
    [
        "meter",
        "model",
        "unit",
        "pricing_unit",
        "included",
        "unit_amount",
        "tiers",
        "package_size",
        "package_amount",
        "dimension",
        "rates",
        "default_rate",
    ]
)
_TIER_KEYS = frozenset(["up_to", "unit_amount", "flat_amount"])
_ENTITLEMENT_KEYS = frozenset(["feature", "enabled", "limit", "rate_limit"])
_RATE_LIMIT_KEYS = frozenset(["per_minute", "per"])
_CREDIT_PACK_KEYS = frozenset(["price", "credits"])
# A PositiveIntegerField holds up to 2**31 - 1; no plan needs more requests a minute than a million.
MAX_RATE_LIMIT = 1_000_000
_MIGRATION_KEYS = frozenset(["effect", "date"])
# A new version of an existing plan either leaves its subscribers where they are or moves them at renewal.
_MIGRATION_EFFECTS = [ChangeEffect.GRANDFATHERED.value, ChangeEffect.MIGRATED_AT_RENEWAL.value]
_SLUG = re.compile(r"^[-a-zA-Z0-9_]+$")


class CatalogInvalid(InvalidInput):
    """The file (or the dicts given to `plan_version_create`) has problems; `errors` lists them all."""

    code = "catalog_invalid"

    def __init__(self, errors: list[str]) -> None:
        count = "1 problem" if len(errors) == 1 else f"{len(errors)} problems"
        super().__init__(f"The catalog has {count}:\n" + "\n".join(f"- {e}" for e in errors), errors=errors)
        self.errors = errors


def catalog_decode(text: str) -> Any:
    """The decoded JSON of a catalog file. Decimals are read as `Decimal`, never through float."""
    try:
        return json.loads(
            text, parse_float=Decimal, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys
        )
    except ValueError as error:  # bad JSON, or from the hooks: NaN, Infinity, a key given twice
        raise CatalogInvalid([f"Not a valid catalog file: {error}"]) from error


def catalog_parse(data: Any, *, known_meters: Iterable[str] | None = None) -> Catalog:
    """A `Catalog` from decoded JSON, or `CatalogInvalid` listing every problem found.

    With `known_meters` (the keys the database has), a price must name one of them or a meter of the file.
    """
    if not isinstance(data, dict):
        raise CatalogInvalid(["The file must hold a JSON object with 'meters' and 'plans'."])
    reader = _Reader()
    reader.check_keys(data, frozenset({"meters", "plans"}), "the catalog")
    meters = tuple(_meter_parse(reader, item, where) for item, where in reader.objects(data, "meters", ""))
    if known_meters is not None:
        reader.known_meters = {*known_meters, *(m.key for m in meters)}
    plans = tuple(_plan_parse(reader, item, where) for item, where in reader.objects(data, "plans", ""))
    for label, values in (("meter key", [m.key for m in meters]), ("plan code", [p.code for p in plans])):
        for value in sorted({v for v in values if v and values.count(v) > 1}):
            reader.errors.append(f"{label} {value!r} is given twice.")
    reader.raise_if_any()
    return Catalog(meters=meters, plans=plans)


def version_content_parse(
    data: dict[str, Any], *, where: str, known_meters: Iterable[str] | None = None
) -> VersionContent:
    """The pricing content of one plan version from the file's plan shape (`currency`, `interval`,
    `base_fee`, `prices`, `entitlements`, `credit_packs`), or `CatalogInvalid`. `where` prefixes messages."""
    reader = _Reader()
    reader.known_meters = None if known_meters is None else set(known_meters)
    content = _version_parse(reader, data, where)
    reader.raise_if_any()
    return content


def _meter_parse(reader: "_Reader", item: dict[str, Any], where: str) -> MeterEntry:
    key = reader.text(item, "key", where, slug=True)
    where = f'meter "{key}"' if key else where
    reader.check_keys(item, _METER_KEYS, where)
    aggregation = reader.choice(item, "aggregation", where, Aggregation.values, default=Aggregation.SUM)
    unique_property = reader.optional_text(item, "unique_property", where, max_length=64) or ""
    refusal = aggregation_refusal(aggregation)
    if refusal is not None:
        reader.error(where, refusal)
    cost = item.get("cost")
    if cost is not None and not isinstance(cost, dict):
        reader.error(where, '\'cost\' must be an object such as {"unit_amount": "0.002"}.')
        cost = None
    display_mode, display_unit, display_divisor = _display_parse(reader, item.get("display"), where)
    return MeterEntry(
        key=key,
        name=reader.text(item, "name", where, max_length=120),
        unit=reader.text(item, "unit", where, max_length=40),
        aggregation=aggregation,
        unique_property=unique_property,
        cost=None if cost is None else _serving_cost_parse(reader, cost, f"{where}, cost"),
        display_mode=display_mode,
        display_unit=display_unit,
        display_divisor=display_divisor,
    )


def _serving_cost_parse(reader: "_Reader", item: dict[str, Any], where: str) -> ServingCostEntry:
    """A meter's serving cost: a default `unit_amount`, and/or `rates` by the value of the property `dimension`."""
    reader.check_keys(item, _COST_KEYS, where)
    dimension = reader.optional_text(item, "dimension", where, max_length=64) or ""
    rates = item.get("rates") or {}
    if not isinstance(rates, dict):
        reader.error(where, '\'rates\' must map dimension values to rates, like {"gpt-4o": "0.0000025"}.')
        rates = {}
    if rates and not dimension:
        reader.error(where, "'rates' need a 'dimension': the event property whose value picks the rate.")
    for value in rates:
        if not 0 < len(value) <= 120:
            reader.error(where, f"the dimension value {value!r} must be 1 to 120 characters long.")
    unit_amount = reader.decimal(item, "unit_amount", where, RATE, required=False)
    parsed_rates = tuple(
        sorted((value, reader.decimal(rates, value, where, RATE) or ZERO) for value in rates)
    )
    if unit_amount is None and not parsed_rates:
        reader.error(where, "give a 'unit_amount', or a 'dimension' with 'rates', or both.")
    for label, amount in (("unit_amount", unit_amount), *parsed_rates):
        if amount is not None and amount < 0:
            reader.error(where, f"the cost of {label!r} cannot be negative.")
    return ServingCostEntry(
        unit_amount=unit_amount,
        dimension=dimension,
        rates=parsed_rates,
        effective_from=_moment_parse(reader, item.get("effective_from"), where),
    )


def _moment_parse(reader: "_Reader", value: Any, where: str) -> datetime | None:
    """`effective_from`: a date ("2025-03-01", midnight UTC) or a date and time with its offset."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            if len(value) == 10:
                return datetime.combine(date.fromisoformat(value), datetime.min.time(), tzinfo=UTC)
            moment = datetime.fromisoformat(value)
        except ValueError:
            moment = None
        if moment is not None and moment.utcoffset() is not None:
            return moment.astimezone(UTC)
    reader.error(
        where,
        f"'effective_from' must be a date such as \"2025-03-01\" or a time with its offset, not {value!r}.",
    )
    return None


def _display_parse(reader: "_Reader", value: Any, where: str) -> tuple[str, str, Decimal]:
    """`"units"` (the default), `"money"`, or a product unit `{"unit": "messages", "divisor": "1000"}`."""
    one = Decimal(1)
    if value is None or value == DisplayMode.UNITS:
        return DisplayMode.UNITS, "", one
    if value == DisplayMode.MONEY:
        return DisplayMode.MONEY, "", one
    if not isinstance(value, dict):
        reader.error(
            where, '\'display\' must be "units", "money" or {"unit": "messages", "divisor": "1000"}.'
        )
        return DisplayMode.UNITS, "", one
    at = f"{where}, display"
    reader.check_keys(value, _DISPLAY_KEYS, at)
    unit = reader.text(value, "unit", at, max_length=40)
    divisor = reader.decimal(value, "divisor", at, QUANTITY, required=False)
    if divisor is not None and divisor <= 0:
        reader.error(at, "'divisor' must be greater than 0.")
        divisor = None
    return DisplayMode.UNIT, unit, (divisor or one).normalize()


def _plan_parse(reader: "_Reader", item: dict[str, Any], where: str) -> PlanEntry:
    code = reader.text(item, "code", where, slug=True)
    where = f'plan "{code}"' if code else where
    reader.check_keys(item, _PLAN_KEYS, where)
    display_order = item.get("display_order")
    if display_order is not None and (type(display_order) is not int or display_order < 0):
        reader.error(where, "'display_order' must be a whole number, 0 or more.")
    is_public = item.get("is_public")
    if is_public is not None and not isinstance(is_public, bool):
        reader.error(where, "'is_public' must be true or false.")
    return PlanEntry(
        code=code,
        name=reader.text(item, "name", where, max_length=120),
        version=_version_parse(reader, item, where),
        description=reader.optional_text(item, "description", where),
        display_order=display_order,
        is_public=is_public,
        changelog=reader.optional_text(item, "changelog", where),
        migration=_migration_parse(reader, item.get("migration"), f"{where}, migration"),
    )


def _migration_parse(reader: "_Reader", item: Any, where: str) -> MigrationEntry | None:
    if item is None:
        return None
    if not isinstance(item, dict):
        reader.error(where, 'must be an object such as {"effect": "grandfathered"}.')
        return None
    reader.check_keys(item, _MIGRATION_KEYS, where)
    effect = reader.choice(item, "effect", where, _MIGRATION_EFFECTS)
    raw = item.get("date")
    if effect != ChangeEffect.MIGRATED_AT_RENEWAL:
        if raw is not None:
            reader.error(where, f"'date' goes with the effect {ChangeEffect.MIGRATED_AT_RENEWAL} only.")
        return MigrationEntry(effect=effect)
    if raw is None:
        return MigrationEntry(effect=effect)  # the earliest date the notice period allows
    try:
        day = date.fromisoformat(raw) if isinstance(raw, str) and len(raw) == 10 else None
    except ValueError:
        day = None
    if day is None:
        reader.error(where, f"'date' must be a day such as \"2027-03-01\", not {raw!r}.")
        return None
    return MigrationEntry(effect=effect, migrate_at=datetime.combine(day, datetime.min.time(), tzinfo=UTC))


def _version_parse(reader: "_Reader", item: dict[str, Any], where: str) -> VersionContent:
    currency = reader.text(item, "currency", where).lower()
    if currency and (len(currency) != 3 or not currency.isalpha()):
        reader.error(where, f"'currency' must be a three-letter code such as usd, not {currency!r}.")
    prices = [
        _price_parse(reader, price, at, currency) for price, at in reader.objects(item, "prices", where)
    ]
    entitlements = [
        _entitlement_parse(reader, entry, at) for entry, at in reader.objects(item, "entitlements", where)
    ]
    for label, values in (
        ("meter", [p.meter for p in prices]),
        ("entitlement", [e.feature for e in entitlements]),
    ):
        for value in sorted({v for v in values if v and values.count(v) > 1}):
            reader.error(where, f"{label} {value!r} is given twice; a version has one of each.")
    packs = [_credit_pack_parse(reader, pack, at) for pack, at in reader.objects(item, "credit_packs", where)]
    return VersionContent(
        currency=currency,
        interval=reader.choice(item, "interval", where, BillingInterval.values),
        base_fee=reader.decimal(item, "base_fee", where, MONEY) or ZERO,
        overage=reader.choice(item, "overage", where, OveragePolicy.values, default=OveragePolicy.ALLOWED),
        prices=tuple(sorted(prices, key=lambda p: p.meter)),
        entitlements=tuple(sorted(entitlements, key=lambda e: e.feature)),
        credit_packs=tuple(sorted(packs, key=lambda p: (p.price, p.credits))),
    )


def _price_parse(reader: "_Reader", item: dict[str, Any], where: str, currency: str) -> PriceSpec:
    meter = reader.text(item, "meter", where, slug=True)
    where = f"{where} ({meter})" if meter else where
    errors_before = len(reader.errors)
    if meter and reader.known_meters is not None and meter not in reader.known_meters:
        reader.error(where, f"unknown meter {meter!r}; add it to 'meters' or create it first.")
    reader.check_keys(item, _PRICE_KEYS, where)
    tiers = []
    for tier, at in reader.objects(item, "tiers", where):
        reader.check_keys(tier, _TIER_KEYS, at)
        if "up_to" not in tier:
            reader.error(at, "'up_to' is missing; use null for the last, open-ended tier.")
        tiers.append(
            Tier(
                up_to=reader.decimal(tier, "up_to", at, QUANTITY, required=False),
                unit_amount=reader.decimal(tier, "unit_amount", at, RATE, required=False) or ZERO,
                flat_amount=reader.decimal(tier, "flat_amount", at, RATE, required=False) or ZERO,
            )
        )
    rates = item.get("rates") or {}
    if not isinstance(rates, dict):
        reader.error(where, '\'rates\' must map dimension values to rates, like {"gpt-4o": "0.01"}.')
        rates = {}
    spec = PriceSpec(
        meter=meter,
        model=PriceModel(reader.choice(item, "model", where, [m.value for m in PriceModel]) or "per_unit"),
        unit=_price_unit_parse(reader, item, where, currency),
        included=reader.decimal(item, "included", where, QUANTITY, required=False) or ZERO,
        unit_amount=reader.decimal(item, "unit_amount", where, RATE, required=False),
        tiers=tuple(tiers),
        package_size=reader.decimal(item, "package_size", where, QUANTITY, required=False),
        package_amount=reader.decimal(item, "package_amount", where, RATE, required=False),
        dimension=reader.optional_text(item, "dimension", where, max_length=64) or None,
        rates=tuple(sorted((value, reader.decimal(rates, value, where, RATE) or ZERO) for value in rates)),
        default_rate=reader.decimal(item, "default_rate", where, RATE, required=False),
    )
    for value in rates:
        if not 0 < len(value) <= 120:
            reader.error(where, f"the dimension value {value!r} must be 1 to 120 characters long.")
    if len(reader.errors) == errors_before:  # the engine's checks make sense only on a well-formed price
        for message in validate_price(spec):
            reader.error(where, message)
    return spec


def _price_unit_parse(reader: "_Reader", item: dict[str, Any], where: str, currency: str) -> str:
    """The price's unit: CREDITS or the plan currency, from `unit` or its other spelling `pricing_unit`."""
    units = set()
    if "unit" in item:
        unit = item["unit"]
        if not isinstance(unit, str) or unit.lower() not in (CREDITS, currency):
            reader.error(
                where, f"'unit' must be \"credits\" or the plan currency {currency!r}, not {unit!r}."
            )
        else:
            units.add(unit.lower())
    if "pricing_unit" in item:
        pricing_unit = reader.choice(item, "pricing_unit", where, PricingUnit.values)
        units.add(CREDITS if pricing_unit == PricingUnit.CREDITS else currency)
    if len(units) > 1:
        reader.error(where, "'unit' and 'pricing_unit' disagree; give one of them.")
    return units.pop() if len(units) == 1 else currency


def _entitlement_parse(reader: "_Reader", item: dict[str, Any], where: str) -> EntitlementEntry:
    feature = reader.text(item, "feature", where, slug=True)
    where = f"{where} ({feature})" if feature else where
    reader.check_keys(item, _ENTITLEMENT_KEYS, where)
    enabled = item.get("enabled", True)
    if not isinstance(enabled, bool):
        reader.error(where, "'enabled' must be true or false.")
    limit = reader.decimal(item, "limit", where, QUANTITY, required=False)
    if limit is not None and limit < 0:
        reader.error(where, "'limit' cannot be negative.")
    per_minute, per = _rate_limit_parse(reader, item.get("rate_limit"), where)
    return EntitlementEntry(
        feature=feature,
        enabled=enabled is not False,
        limit=limit,
        rate_limit_per_minute=per_minute,
        rate_limit_per=per,
    )


def _rate_limit_parse(reader: "_Reader", value: Any, where: str) -> tuple[int | None, str]:
    """`{"per_minute": 10, "per": "customer" | "user"}` (per defaults to customer), or absent/null."""
    if value is None:
        return None, RateLimitScope.CUSTOMER
    if not isinstance(value, dict):
        reader.error(where, '\'rate_limit\' must be an object like {"per_minute": 10, "per": "customer"}.')
        return None, RateLimitScope.CUSTOMER
    at = f"{where}, rate_limit"
    reader.check_keys(value, _RATE_LIMIT_KEYS, at)
    per_minute = value.get("per_minute")
    if (
        isinstance(per_minute, bool)
        or not isinstance(per_minute, int)
        or not 0 < per_minute <= MAX_RATE_LIMIT
    ):
        reader.error(
            at, f"'per_minute' must be a whole number from 1 to {MAX_RATE_LIMIT}, not {per_minute!r}."
        )
        per_minute = None
    per = reader.choice(value, "per", at, RateLimitScope.values, default=RateLimitScope.CUSTOMER)
    return per_minute, per or RateLimitScope.CUSTOMER


def _credit_pack_parse(reader: "_Reader", item: dict[str, Any], where: str) -> CreditPackEntry:
    reader.check_keys(item, _CREDIT_PACK_KEYS, where)
    price = reader.decimal(item, "price", where, MONEY)
    credits = reader.decimal(item, "credits", where, QUANTITY)
    for key, value in (("price", price), ("credits", credits)):
        if value is not None and value <= 0:
            reader.error(where, f"{key!r} must be greater than 0.")
    return CreditPackEntry(price=price or ZERO, credits=credits or ZERO)


class _Reader:
    """Reads values out of decoded JSON, collecting every problem instead of stopping at the first.

    A value with a problem reads as a stand-in ("" or None) so that reading goes on; `raise_if_any` at the
    end makes sure nothing built from a stand-in is used.
    """

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.known_meters: set[str] | None = None  # None: do not check that meters exist

    def error(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}" if where else message)

    def raise_if_any(self) -> None:
        if self.errors:
            raise CatalogInvalid(self.errors)

    def objects(self, item: dict[str, Any], key: str, where: str) -> Iterator[tuple[dict[str, Any], str]]:
        """The objects of the list `item[key]` (absent = empty), each with where it is: `plans[2]`."""
        values = item.get(key)
        if values is not None and not isinstance(values, list):
            self.error(where, f"{key!r} must be a list.")
            return
        for index, value in enumerate(values or []):
            at = f"{where}, {key}[{index}]" if where else f"{key}[{index}]"
            if isinstance(value, dict):
                yield value, at
            else:
                self.error(at, "must be a JSON object.")

    def check_keys(self, item: dict[str, Any], allowed: frozenset[str], where: str) -> None:
        for key in sorted(set(item) - allowed):
            self.error(where, f"unknown key {key!r}; allowed: {', '.join(sorted(allowed))}.")

    def text(
        self, item: dict[str, Any], key: str, where: str, *, max_length: int | None = None, slug: bool = False
    ) -> str:
        """A required string; "" (with an error) when it is missing or wrong."""
        return self._text(item, key, where, max_length=max_length, slug=slug, required=True) or ""

    def optional_text(
        self, item: dict[str, Any], key: str, where: str, *, max_length: int | None = None
    ) -> str | None:
        """An optional string; None when absent."""
        return self._text(item, key, where, max_length=max_length, slug=False, required=False)

    def _text(
        self,
        item: dict[str, Any],
        key: str,
        where: str,
        *,
        max_length: int | None,
        slug: bool,
        required: bool,
    ) -> str | None:
        value = item.get(key)
        if value is None:
            if required:
                self.error(where, f"{key!r} is missing.")
                return ""
            return None
        if not isinstance(value, str) or (required and not value.strip()):
            self.error(where, f"{key!r} must be a {'non-empty ' if required else ''}string.")
            return ""
        if max_length is not None and len(value) > max_length:
            self.error(where, f"{key!r} is longer than {max_length} characters.")
            return ""
        if slug and not _SLUG.match(value):
            self.error(where, f"{key!r} {value!r} may only hold letters, digits, '-' and '_'.")
            return ""
        return value

    def choice(
        self, item: dict[str, Any], key: str, where: str, choices: list[str], *, default: str | None = None
    ) -> str:
        value = item.get(key, default)
        if value not in choices:
            given = "missing" if value is None else f"{value!r}"
            self.error(where, f"{key!r} is {given}; use one of: {', '.join(choices)}.")
            return ""
        return str(value)

    def decimal(
        self, item: dict[str, Any], key: str, where: str, column: dict[str, int], *, required: bool = True
    ) -> Decimal | None:
        """A decimal from a string or a JSON number (read as Decimal) that fits the database column."""
        value = item.get(key)
        if value is None:
            if required:
                self.error(where, f"{key!r} is missing.")
            return None
        if isinstance(value, bool | float):
            # A float means the JSON was decoded without parse_float=Decimal: 0.1 would not be one tenth.
            self.error(where, f'{key!r} must be a decimal string such as "0.10", not {value!r}.')
            return None
        try:
            number = Decimal(value) if isinstance(value, str | int | Decimal) else None
        except InvalidOperation:
            number = None
        if number is None or not number.is_finite():
            self.error(where, f'{key!r} must be a decimal number such as "0.10", not {value!r}.')
            return None
        places = column["decimal_places"]
        if abs(number) >= Decimal(10) ** (column["max_digits"] - places):
            self.error(where, f"{key!r} {value} is too large.")
            return None
        if number != number.quantize(Decimal(1).scaleb(-places)):
            # The column would round it, and every later import would see a change.
            self.error(where, f"{key!r} {value} has more than {places} decimal places.")
            return None
        return number


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a catalog can use.")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise ValueError(f"the key {key!r} is given twice in one object, so one of them would be lost.")
        data[key] = value
    return data
