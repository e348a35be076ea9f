"""The catalog in Stripe: a Stripe meter per meter and per priced dimension value, a product per plan, and
the base-fee and usage prices of each plan version."""

import hashlib
import logging
from typing import Any

import stripe

from billing_app.models import StripeDimensionMeter
from billing_app.stripe.client import stripe_client
from billing_app.stripe.sync import StripeSyncError, idempotency_key, request_options
from core.money import to_minor_units
from plans.models import DimensionRate, Meter, PlanVersion, Price, PriceModel, PricingUnit
from plans.selectors import prices_with_rates

logger = logging.getLogger(__name__)

# Stripe's limit: event names up to 100 characters.
EVENT_NAME_MAX = 100

# --- meters --------------------------------------------------------------------------------------------


def _meter_create(client: stripe.StripeClient, *, display_name: str, event_name: str, key: str) -> str:
    params: Any = {
        "display_name": display_name[:250],
        "event_name": event_name,
        "default_aggregation": {"formula": "sum"},
        "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
        "value_settings": {"event_payload_key": "value"},
    }
    try:
        return client.v1.billing.meters.create(params, request_options(key)).id
    except stripe.InvalidRequestError as error:
        # An event name feeds one meter only. If ours exists (created by an earlier run whose answer was
        # lost after the idempotency window), adopt it instead of failing forever.
        existing = _meter_by_event_name(client, event_name)
        if existing is None:
            raise
        logger.info("Adopting existing Stripe meter %s for %s (%s)", existing, event_name, error.user_message)
        return existing


def _meter_by_event_name(client: stripe.StripeClient, event_name: str) -> str | None:
    for meter in client.v1.billing.meters.list({"limit": 100}).auto_paging_iter():
        if meter.event_name == event_name:
            return meter.id
    return None


def meter_sync(*, meter: Meter, client: stripe.StripeClient | None = None) -> str:
    """The meter's Stripe meter id, creating the meter on first use."""
    if meter.stripe_meter_id:
        return meter.stripe_meter_id
    client = client or stripe_client()
    meter_id = _meter_create(
        client,
        display_name=meter.name,
        event_name=meter.key,
        key=idempotency_key("meter", meter.pk, meter.created_at),
    )
    Meter.objects.filter(pk=meter.pk).update(stripe_meter_id=meter_id)
    meter.stripe_meter_id = meter_id
    return meter_id


def dimension_event_name(meter: Meter, value: str) -> str:
    name = f"{meter.key}.{value}"
    if len(name) <= EVENT_NAME_MAX:
        return name
    digest = hashlib.sha256(value.encode()).hexdigest()[:16]
    return f"{meter.key[: EVENT_NAME_MAX - 17]}.{digest}"


def dimension_meter_sync(
    *, meter: Meter, value: str, client: stripe.StripeClient | None = None
) -> StripeDimensionMeter:
    """The Stripe meter of one dimension value of ``meter``, creating it on first use."""
    dimension_meter, _ = StripeDimensionMeter.objects.get_or_create(
        meter=meter, value=value, defaults={"event_name": dimension_event_name(meter, value)}
    )
    if dimension_meter.stripe_meter_id:
        return dimension_meter
    client = client or stripe_client()
    meter_id = _meter_create(
        client,
        display_name=f"{meter.name} · {value}",
        event_name=dimension_meter.event_name,
        key=idempotency_key("dimension-meter", dimension_meter.pk, meter.created_at),
    )
    StripeDimensionMeter.objects.filter(pk=dimension_meter.pk).update(stripe_meter_id=meter_id)
    dimension_meter.stripe_meter_id = meter_id
    return dimension_meter


# --- products and prices ---------------------------------------------------------------------------------


def _product_sync(client: stripe.StripeClient, version: PlanVersion) -> str:
    plan = version.plan
    if plan.stripe_product_id:
        return plan.stripe_product_id
    product = client.v1.products.create(
        {"name": plan.name, "metadata": {"plan_code": plan.code}},
        request_options(idempotency_key("product", plan.pk, version.created_at)),
    )
    type(plan).objects.filter(pk=plan.pk).update(stripe_product_id=product.id)
    plan.stripe_product_id = product.id
    return product.id


def _recurring(version: PlanVersion, stripe_meter_id: str | None = None) -> dict[str, Any]:
    recurring: dict[str, Any] = {"interval": str(version.interval)}
    if stripe_meter_id:
        recurring.update(usage_type="metered", meter=stripe_meter_id)
    else:
        recurring["usage_type"] = "licensed"
    return recurring


def _price_create(
    client: stripe.StripeClient, version: PlanVersion, product_id: str, key: str, **params: Any
) -> str:
    body: Any = {
        "currency": version.currency,
        "product": product_id,
        "metadata": {"plan_version": str(version.pk), **params.pop("metadata", {})},
        **params,
    }
    return client.v1.prices.create(body, request_options(key)).id


# A usage price in Stripe bills the money we rated, sent as meter values in minor units: one unit is one
# minor unit (a cent), whatever the local price model. Stripe never applies tiers, packages or rates to
# quantities we already drew from allowance, credits and the wallet (docs/stripe.md).
AMOUNT_PRICE: dict[str, Any] = {"billing_scheme": "per_unit", "unit_amount_decimal": "1"}


def _usage_price_params(price: Price) -> dict[str, Any] | None:
    """Stripe's fields for a usage price (or one rate of a dimensional one), or None when the price can
    never produce post-paid overage money (credits with no credit pack to convert them)."""
    if price.pricing_unit == PricingUnit.CREDITS and price.plan_version.credit_unit_amount is None:
        return None
    return dict(AMOUNT_PRICE)


def _base_fee_minor_units(version: PlanVersion) -> int:
    try:
        return to_minor_units(version.base_fee, version.currency)
    except ValueError as error:
        raise StripeSyncError(f"{version}: {error}") from error


def plan_version_sync(*, plan_version: PlanVersion, client: stripe.StripeClient | None = None) -> PlanVersion:
    """Create the product, the base-fee price and the usage prices (and their meters) of a version."""
    client = client or stripe_client()
    version = PlanVersion.objects.select_related("plan").get(pk=plan_version.pk)
    product_id = _product_sync(client, version)
    if version.base_fee > 0 and not version.stripe_base_price_id:
        price_id = _price_create(
            client,
            version,
            product_id,
            idempotency_key("base-price", version.pk, version.created_at),
            unit_amount=_base_fee_minor_units(version),
            recurring=_recurring(version),
            nickname=f"{version} base fee",
        )
        PlanVersion.objects.filter(pk=version.pk).update(stripe_base_price_id=price_id)
    for price in prices_with_rates(version):
        _usage_price_sync(client, version, product_id, price)
    version.refresh_from_db()
    return version


def _usage_price_sync(
    client: stripe.StripeClient, version: PlanVersion, product_id: str, price: Price
) -> None:
    meter = price.meter
    if price.model == PriceModel.DIMENSIONAL:
        for rate in price.dimension_rates.all():
            if rate.stripe_price_id:
                continue
            params = _usage_price_params(price)
            if params is None:
                continue
            dimension_meter = dimension_meter_sync(meter=meter, value=rate.value, client=client)
            price_id = _price_create(
                client,
                version,
                product_id,
                idempotency_key("dimension-price", rate.pk, version.created_at),
                recurring=_recurring(version, dimension_meter.stripe_meter_id),
                nickname=f"{version} {meter.key} {price.dimension}={rate.value}",
                metadata={"meter": meter.key, "dimension_value": rate.value},
                **params,
            )
            DimensionRate.objects.filter(pk=rate.pk).update(stripe_price_id=price_id)
        if price.default_rate is None:
            return
        params = _usage_price_params(price)
    else:
        params = _usage_price_params(price)
    if params is None or price.stripe_price_id:
        return
    price_id = _price_create(
        client,
        version,
        product_id,
        idempotency_key("price", price.pk, version.created_at),
        recurring=_recurring(version, meter_sync(meter=meter, client=client)),
        nickname=f"{version} {meter.key}",
        metadata={"meter": meter.key},
        **params,
    )
    Price.objects.filter(pk=price.pk).update(stripe_price_id=price_id)


def plan_version_price_ids(plan_version: PlanVersion) -> list[str]:
    """The Stripe prices a subscription to the version carries: the base fee, then the usage prices."""
    ids = [plan_version.stripe_base_price_id] if plan_version.stripe_base_price_id else []
    for price in prices_with_rates(plan_version):
        if price.model == PriceModel.DIMENSIONAL:
            ids.extend(rate.stripe_price_id for rate in price.dimension_rates.all() if rate.stripe_price_id)
        if price.stripe_price_id:
            ids.append(price.stripe_price_id)
    return ids


def plan_version_is_synced(plan_version: PlanVersion) -> bool:
    if plan_version.base_fee > 0 and not plan_version.stripe_base_price_id:
        return False
    for price in prices_with_rates(plan_version):
        if _usage_price_params(price) is None:
            continue
        if price.model == PriceModel.DIMENSIONAL:
            if any(not rate.stripe_price_id for rate in price.dimension_rates.all()):
                return False
            if price.default_rate is not None and not price.stripe_price_id:
                return False
        elif not price.stripe_price_id:
            return False
    return True
