"""Customers, products and prices: the catalog a subscription is built from."""

import re
import secrets
from decimal import Decimal

from .call import Call
from .errors import StripeError, parameter_invalid, parameter_missing, resource_missing
from .params import (
    array,
    boolean,
    check_params,
    decimal,
    integer,
    mapping,
    metadata_apply,
    present,
    string,
    text_update,
)
from .pricing import decimal_string

CUSTOMER_FIELDS = {
    "email",
    "name",
    "description",
    "phone",
    "metadata",
    "address",
    "preferred_locales",
    "shipping",
}
PRODUCT_FIELDS = {"name", "active", "description", "metadata", "unit_label", "tax_code", "images", "url"}


# Customers --------------------------------------------------------------------------------------------------


def customer_get(call: Call, customer_id: str, param: str = "id") -> dict:
    customer = call.state.get("customer", customer_id, param=param)
    if customer.get("deleted"):
        raise resource_missing("customer", customer_id, param=param)
    return customer


def customer_create(call: Call) -> dict:
    params, state = call.params, call.state
    check_params(params, CUSTOMER_FIELDS)
    customer = state.insert(
        {
            "id": state.new_id("cus"),
            "object": "customer",
            "address": mapping(params, "address"),
            "balance": 0,
            "created": state.now(),
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "description": string(params, "description"),
            "discount": None,
            "email": string(params, "email", max_length=512),
            "invoice_prefix": secrets.token_hex(4).upper(),
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": None,
                "footer": None,
                "rendering_options": None,
            },
            "livemode": False,
            "metadata": metadata_apply({}, params),
            "name": string(params, "name", max_length=256),
            "phone": string(params, "phone"),
            "preferred_locales": array(params, "preferred_locales") or [],
            "shipping": mapping(params, "shipping"),
            "tax_exempt": "none",
            "test_clock": None,
        }
    )
    return call.render(customer)


def customer_update(call: Call) -> dict:
    params = call.params
    check_params(params, CUSTOMER_FIELDS)
    customer = customer_get(call, call.args[0])
    for key in ("email", "name", "description", "phone"):
        customer[key] = text_update(params, key, customer[key])
    for key in ("address", "shipping"):
        if key in params:
            customer[key] = mapping(params, key)
    if "preferred_locales" in params:
        customer["preferred_locales"] = array(params, "preferred_locales") or []
    customer["metadata"] = metadata_apply(customer["metadata"], params)
    return call.render(customer)


def customer_delete(call: Call) -> dict:
    check_params(call.params, set())
    customer = customer_get(call, call.args[0])
    stub = {"id": customer["id"], "object": "customer", "deleted": True}
    call.state.objects[customer["id"]] = stub
    return dict(stub)


def customers_list(call: Call) -> dict:
    check_params(call.params, {"email", "limit", "starting_after", "ending_before"})
    email = string(call.params, "email")
    customers = call.state.all(
        "customer",
        lambda customer: not customer.get("deleted") and (email is None or customer["email"] == email),
    )
    return call.render_list(customers, "/v1/customers")


# Products ---------------------------------------------------------------------------------------------------


def product_create(call: Call) -> dict:
    params, state = call.params, call.state
    check_params(params, PRODUCT_FIELDS | {"id"})
    product_id = string(params, "id") or state.new_id("prod")
    if product_id in state.objects:
        raise StripeError("Product already exists.", code="resource_already_exists", param="id")
    now = state.now()
    product = state.insert(
        {
            "id": product_id,
            "object": "product",
            "active": boolean(params, "active") is not False,
            "created": now,
            "default_price": None,
            "description": string(params, "description"),
            "images": array(params, "images") or [],
            "livemode": False,
            "marketing_features": [],
            "metadata": metadata_apply({}, params),
            "name": string(params, "name", required=True),
            "package_dimensions": None,
            "shippable": None,
            "statement_descriptor": None,
            "tax_code": string(params, "tax_code"),
            "unit_label": string(params, "unit_label"),
            "updated": now,
            "url": string(params, "url"),
        }
    )
    return call.render(product)


def product_update(call: Call) -> dict:
    params = call.params
    check_params(params, PRODUCT_FIELDS)
    product = call.state.get("product", call.args[0])
    if "name" in params:
        product["name"] = string(params, "name", required=True)
    for key in ("description", "unit_label", "tax_code", "url"):
        product[key] = text_update(params, key, product[key])
    if boolean(params, "active") is not None:
        product["active"] = boolean(params, "active")
    if "images" in params:
        product["images"] = array(params, "images") or []
    product["metadata"] = metadata_apply(product["metadata"], params)
    product["updated"] = call.state.now()
    return call.render(product)


def products_list(call: Call) -> dict:
    check_params(call.params, {"active", "limit", "starting_after", "ending_before"})
    active = boolean(call.params, "active")
    products = call.state.all("product", lambda product: active is None or product["active"] == active)
    return call.render_list(products, "/v1/products")


# Prices -----------------------------------------------------------------------------------------------------


def _amount_pair(params: dict, integer_key: str, decimal_key: str, prefix: str = "") -> Decimal | None:
    """One of ``unit_amount`` / ``unit_amount_decimal`` (or the flat pair): Stripe refuses both at once."""
    if present(params, integer_key) and present(params, decimal_key):
        name = f"{prefix}[{integer_key}]" if prefix else integer_key
        raise parameter_invalid(
            name, f"You may only specify one of these parameters: {integer_key}, {decimal_key}."
        )
    whole = integer(params, integer_key, prefix, minimum=0)
    return Decimal(whole) if whole is not None else decimal(params, decimal_key, prefix)


def _amount_fields(amount: Decimal | None) -> tuple[int | None, str | None]:
    """Stripe's pair of fields for an amount: the integer (only when whole) and the decimal string."""
    if amount is None:
        return None, None
    whole = int(amount) if amount == amount.to_integral_value() else None
    return whole, decimal_string(amount)


def _price_tiers(params: dict) -> list[dict]:
    raw_tiers = array(params, "tiers", required=True) or []
    tiers: list[dict] = []
    previous_up_to = 0
    for position, raw in enumerate(raw_tiers):
        prefix = f"tiers[{position}]"
        if not isinstance(raw, dict):
            raise parameter_invalid(prefix, f"Invalid object: {prefix} must be a hash")
        check_params(
            raw, {"up_to", "unit_amount", "unit_amount_decimal", "flat_amount", "flat_amount_decimal"}, prefix
        )
        is_last = position == len(raw_tiers) - 1
        if raw.get("up_to") == "inf":
            if not is_last:
                raise parameter_invalid(f"{prefix}[up_to]", "Only the last tier can have up_to set to inf.")
            up_to = None
        else:
            up_to = integer(raw, "up_to", prefix, required=True, minimum=1)
            if is_last:
                raise parameter_invalid(f"{prefix}[up_to]", "The last tier must have up_to set to inf.")
            if up_to is not None and up_to <= previous_up_to:
                raise parameter_invalid(f"{prefix}[up_to]", "Tiers must be in ascending order of up_to.")
            previous_up_to = up_to or 0
        unit = _amount_pair(raw, "unit_amount", "unit_amount_decimal", prefix)
        flat = _amount_pair(raw, "flat_amount", "flat_amount_decimal", prefix)
        if unit is None and flat is None:
            raise parameter_missing(f"{prefix}[unit_amount]")
        unit_amount, unit_amount_decimal = _amount_fields(unit)
        flat_amount, flat_amount_decimal = _amount_fields(flat)
        tiers.append(
            {
                "flat_amount": flat_amount,
                "flat_amount_decimal": flat_amount_decimal,
                "unit_amount": unit_amount,
                "unit_amount_decimal": unit_amount_decimal,
                "up_to": up_to,
            }
        )
    return tiers


def _price_recurring(call: Call) -> dict | None:
    recurring = mapping(call.params, "recurring")
    if recurring is None:
        return None
    prefix = "recurring"
    check_params(
        recurring, {"interval", "interval_count", "usage_type", "meter", "trial_period_days"}, prefix
    )
    interval = string(recurring, "interval", prefix, required=True, choices=("day", "week", "month", "year"))
    usage_type = string(recurring, "usage_type", prefix, choices=("licensed", "metered")) or "licensed"
    meter_id = string(recurring, "meter", prefix)
    # Since the 2025-03-31 API, a metered price bills from a billing meter and nothing else.
    if usage_type == "metered" and meter_id is None:
        raise StripeError(
            "You must specify `recurring[meter]` when `recurring[usage_type]` is `metered`.",
            code="parameter_missing",
            param="recurring[meter]",
            stored=False,
        )
    if meter_id is not None:
        if usage_type != "metered":
            raise parameter_invalid(
                "recurring[meter]", "recurring[meter] can only be set for metered prices."
            )
        call.state.get("billing.meter", meter_id, label="billing meter", param="recurring[meter]")
    return {
        "interval": interval,
        "interval_count": integer(recurring, "interval_count", prefix, minimum=1) or 1,
        "meter": meter_id,
        "trial_period_days": integer(recurring, "trial_period_days", prefix, minimum=0),
        "usage_type": usage_type,
    }


def _lookup_key_claim(call: Call, lookup_key: str | None, price_id: str) -> None:
    """A lookup key names one price; ``transfer_lookup_key=true`` moves it from the price holding it."""
    if lookup_key is None:
        return
    holders = call.state.all(
        "price", lambda price: price["lookup_key"] == lookup_key and price["id"] != price_id
    )
    if holders and not boolean(call.params, "transfer_lookup_key"):
        raise StripeError(f"A price ({holders[0]['id']}) already uses that lookup key.", param="lookup_key")
    for holder in holders:
        holder["lookup_key"] = None


def price_create(call: Call) -> dict:
    params, state = call.params, call.state
    check_params(
        params,
        {
            "currency",
            "product",
            "product_data",
            "unit_amount",
            "unit_amount_decimal",
            "billing_scheme",
            "tiers",
            "tiers_mode",
            "recurring",
            "lookup_key",
            "transfer_lookup_key",
            "metadata",
            "nickname",
            "active",
            "tax_behavior",
        },
    )
    currency = (string(params, "currency", required=True) or "").lower()
    if not re.fullmatch(r"[a-z]{3}", currency):
        raise parameter_invalid("currency", f"Invalid currency: {currency}.")
    scheme = string(params, "billing_scheme", choices=("per_unit", "tiered")) or "per_unit"
    if scheme == "per_unit":
        if present(params, "tiers") or present(params, "tiers_mode"):
            raise parameter_invalid("tiers", "Tiers can only be set when billing_scheme is tiered.")
        amount = _amount_pair(params, "unit_amount", "unit_amount_decimal")
        if amount is None:
            raise parameter_missing("unit_amount")
        tiers, tiers_mode = None, None
    else:
        if present(params, "unit_amount") or present(params, "unit_amount_decimal"):
            raise parameter_invalid("unit_amount", "unit_amount cannot be set when billing_scheme is tiered.")
        amount = None
        tiers_mode = string(params, "tiers_mode", required=True, choices=("graduated", "volume"))
        tiers = _price_tiers(params)
    recurring = _price_recurring(call)
    product_id = string(params, "product")
    product_data = mapping(params, "product_data")
    if (product_id is None) == (product_data is None):
        raise parameter_missing("product")
    if product_id is not None:
        state.get("product", product_id, param="product")
    else:
        check_params(product_data or {}, {"name", "metadata", "unit_label"}, "product_data")
        string(product_data or {}, "name", "product_data", required=True)
    price_id = state.new_id("price")
    lookup_key = string(params, "lookup_key", max_length=200)
    _lookup_key_claim(call, lookup_key, price_id)
    if product_id is None:
        # Created last, once nothing else can fail, so a rejected price leaves no stray product behind.
        product_id = product_create(Call(state, product_data or {}, ()))["id"]
    unit_amount, unit_amount_decimal = _amount_fields(amount)
    price = state.insert(
        {
            "id": price_id,
            "object": "price",
            "active": boolean(params, "active") is not False,
            "billing_scheme": scheme,
            "created": state.now(),
            "currency": currency,
            "custom_unit_amount": None,
            "livemode": False,
            "lookup_key": lookup_key,
            "metadata": metadata_apply({}, params),
            "nickname": string(params, "nickname"),
            "product": product_id,
            "recurring": recurring,
            "tax_behavior": string(params, "tax_behavior", choices=("exclusive", "inclusive", "unspecified"))
            or "unspecified",
            "tiers": tiers,
            "tiers_mode": tiers_mode,
            "transform_quantity": None,
            "type": "recurring" if recurring else "one_time",
            "unit_amount": unit_amount,
            "unit_amount_decimal": unit_amount_decimal,
        }
    )
    return call.render(price)


def price_update(call: Call) -> dict:
    params = call.params
    # Amounts, tiers and recurrence are fixed once a price exists; Stripe has you create a new price instead.
    check_params(
        params, {"metadata", "active", "nickname", "lookup_key", "transfer_lookup_key", "tax_behavior"}
    )
    price = call.state.get("price", call.args[0])
    if "lookup_key" in params:
        lookup_key = string(params, "lookup_key", max_length=200)
        _lookup_key_claim(call, lookup_key, price["id"])
        price["lookup_key"] = lookup_key
    if boolean(params, "active") is not None:
        price["active"] = boolean(params, "active")
    price["nickname"] = text_update(params, "nickname", price["nickname"])
    price["metadata"] = metadata_apply(price["metadata"], params)
    return call.render(price)


def prices_list(call: Call) -> dict:
    params = call.params
    check_params(
        params,
        {"product", "active", "type", "currency", "lookup_keys", "limit", "starting_after", "ending_before"},
    )
    product = string(params, "product")
    active = boolean(params, "active")
    price_type = string(params, "type", choices=("one_time", "recurring"))
    currency = string(params, "currency")
    lookup_keys = array(params, "lookup_keys")

    def keep(price: dict) -> bool:
        return (
            (product is None or price["product"] == product)
            and (active is None or price["active"] == active)
            and (price_type is None or price["type"] == price_type)
            and (currency is None or price["currency"] == currency.lower())
            and (lookup_keys is None or price["lookup_key"] in lookup_keys)
        )

    return call.render_list(call.state.all("price", keep), "/v1/prices")
