"""Mirror the catalog, the customers and their subscriptions into Stripe, and keep the Stripe ids.

Mapping (decided with the team):
- a local meter is a Stripe billing meter with ``event_name`` = the meter key, customers mapped by
  ``stripe_customer_id``, the value under ``value``, aggregated by sum (only overage units are sent,
  already aggregated by the local engine, whatever the meter's own aggregation);
- a dimension value with its own rate gets its own Stripe meter (``llm_tokens.gpt-4o``,
  ``StripeDimensionMeter``) and price, so Stripe totals and bills each value apart; values priced at the
  default rate feed the meter's own Stripe meter and the dimensional price's ``stripe_price_id``;
- a plan is a product; a plan version's base fee is a licensed monthly/yearly price and each of its usage
  prices a metered price on the meter. Stripe prices mirror the local price of the *billable* quantity
  (after the allowance), because only overage units are sent: per-unit and dimensional rates become
  ``unit_amount_decimal`` in minor units ("0.8" cents), graduated and volume tiers map one to one,
  packages use ``transform_quantity``. Credit-priced rates are converted at the plan's credit-pack rate.

Every create passes an idempotency key made from the local row's id and creation time, so a retry after a
timeout, or after a crash between the call and saving the id, gets Stripe's saved answer instead of a
second object. Ids are saved one by one right after each call: there is no transaction around network
calls, and a sync that stops half-way resumes where it stopped.
"""

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Context, Decimal
from functools import partial
from typing import Any, TypeVar

import stripe
from django.db.models import F, Q

from billing_app.models import StripeDimensionMeter, StripeSubscriptionSync
from billing_app.stripe.client import stripe_client
from core.money import currency_exponent, to_minor_units
from customers.models import Customer, Subscription, SubscriptionStatus
from plans.models import DimensionRate, Meter, PlanVersion, Price, PriceModel, PricingUnit, VersionStatus
from plans.selectors import prices_with_rates

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Stripe's limits: event names up to 100 characters, decimal amounts with at most 12 decimal places.
EVENT_NAME_MAX = 100
STRIPE_DECIMAL_PLACES = Decimal("1e-12")
_DECIMAL_CONTEXT = Context(prec=60, rounding=ROUND_HALF_UP)


class StripeSyncError(Exception):
    """A local object cannot be expressed in Stripe (a fractional tier bound, a base fee finer than a cent)."""

    code = "stripe_sync_error"


def _idempotency_key(kind: str, pk: int, created: datetime, *extra: object) -> str:
    # The creation time keeps keys unique across databases that reuse ids (a reset development database
    # talking to the same Stripe test account would otherwise replay another object's answer).
    return "-".join(["billing", kind, str(pk), str(int(created.timestamp())), *map(str, extra)])


def _options(key: str) -> Any:
    return {"idempotency_key": key}


# --- amounts -------------------------------------------------------------------------------------------


def minor_units_decimal(amount: Decimal, currency: str) -> str:
    """A rate in minor units as Stripe's decimal string: 0.008 USD -> "0.8" (cents), 2 JPY -> "2".

    For ``unit_amount_decimal`` and the tiers' decimal amounts, which may be finer than the minor unit.
    Whole charges go through ``core.money.to_minor_units``.
    """
    scaled = amount.scaleb(currency_exponent(currency), context=_DECIMAL_CONTEXT)
    scaled = scaled.quantize(STRIPE_DECIMAL_PLACES, context=_DECIMAL_CONTEXT)
    text = format(scaled.normalize(context=_DECIMAL_CONTEXT), "f")
    return "0" if scaled.is_zero() else text


def _money_rate(amount: Decimal, price: Price) -> Decimal | None:
    """A rate of ``price`` in the plan currency; credits convert at the credit-pack rate (None without one)."""
    if price.pricing_unit != PricingUnit.CREDITS:
        return amount
    credit_rate = price.plan_version.credit_unit_amount
    if credit_rate is None:
        return None
    return _DECIMAL_CONTEXT.multiply(amount, credit_rate)


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
        return client.v1.billing.meters.create(params, _options(key)).id
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
        key=_idempotency_key("meter", meter.pk, meter.created_at),
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
        key=_idempotency_key("dimension-meter", dimension_meter.pk, meter.created_at),
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
        _options(_idempotency_key("product", plan.pk, version.created_at)),
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
    return client.v1.prices.create(body, _options(key)).id


def _usage_price_params(price: Price, amount_rate: Decimal | None = None) -> dict[str, Any] | None:
    """Stripe's fields for a non-dimensional usage price (or one rate of a dimensional one), or None when
    the price can never produce post-paid overage (credits with no credit pack)."""
    currency = price.plan_version.currency
    model = PriceModel(price.model)
    if model in (PriceModel.PER_UNIT, PriceModel.DIMENSIONAL):
        rate = _money_rate(amount_rate if amount_rate is not None else price.unit_amount or Decimal(0), price)
        if rate is None:
            return None
        return {"billing_scheme": "per_unit", "unit_amount_decimal": minor_units_decimal(rate, currency)}
    if model == PriceModel.PACKAGE:
        package_amount = _money_rate(price.package_amount or Decimal(0), price)
        size = price.package_size or Decimal(0)
        if package_amount is None:
            return None
        if size != size.to_integral_value() or size <= 0:
            raise StripeSyncError(f"{price}: Stripe packages need a whole number of units, not {size}.")
        return {
            "billing_scheme": "per_unit",
            "unit_amount_decimal": minor_units_decimal(package_amount, currency),
            "transform_quantity": {"divide_by": int(size), "round": "up"},
        }
    tiers = []
    for tier in price.tiers.all():
        unit_rate = _money_rate(tier.unit_amount, price)
        flat = _money_rate(tier.flat_amount, price)
        if unit_rate is None or flat is None:
            return None
        if tier.up_to is not None and tier.up_to != tier.up_to.to_integral_value():
            raise StripeSyncError(f"{price}: Stripe tiers end on whole units, not {tier.up_to}.")
        tiers.append(
            {
                "up_to": "inf" if tier.up_to is None else int(tier.up_to),
                "unit_amount_decimal": minor_units_decimal(unit_rate, currency),
                "flat_amount_decimal": minor_units_decimal(flat, currency),
            }
        )
    return {"billing_scheme": "tiered", "tiers_mode": str(model), "tiers": tiers}


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
            _idempotency_key("base-price", version.pk, version.created_at),
            unit_amount=to_minor_units(version.base_fee, version.currency),
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
            params = _usage_price_params(price, rate.unit_amount)
            if params is None:
                continue
            dimension_meter = dimension_meter_sync(meter=meter, value=rate.value, client=client)
            price_id = _price_create(
                client,
                version,
                product_id,
                _idempotency_key("dimension-price", rate.pk, version.created_at),
                recurring=_recurring(version, dimension_meter.stripe_meter_id),
                nickname=f"{version} {meter.key} {price.dimension}={rate.value}",
                metadata={"meter": meter.key, "dimension_value": rate.value},
                **params,
            )
            DimensionRate.objects.filter(pk=rate.pk).update(stripe_price_id=price_id)
        if price.default_rate is None:
            return
        params = _usage_price_params(price, price.default_rate)
    else:
        params = _usage_price_params(price)
    if params is None or price.stripe_price_id:
        return
    price_id = _price_create(
        client,
        version,
        product_id,
        _idempotency_key("price", price.pk, version.created_at),
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
        if price.model == PriceModel.DIMENSIONAL:
            if any(not rate.stripe_price_id for rate in price.dimension_rates.all()):
                return False
            if price.default_rate is not None and not price.stripe_price_id:
                return False
        elif not price.stripe_price_id and _usage_price_params(price) is not None:
            return False
    return True


# --- customers and subscriptions ---------------------------------------------------------------------------


def customer_sync(*, customer: Customer, client: stripe.StripeClient | None = None) -> str:
    """Create the Stripe customer, or bring its name and email up to date. Returns its id."""
    client = client or stripe_client()
    params: Any = {
        "name": customer.name,
        "email": customer.email or "",
        "metadata": {"external_id": customer.external_id, "customer_id": str(customer.pk)},
    }
    if customer.stripe_customer_id:
        client.v1.customers.update(customer.stripe_customer_id, params)
        return customer.stripe_customer_id
    if not params["email"]:
        del params["email"]
    created = client.v1.customers.create(
        params, _options(_idempotency_key("customer", customer.pk, customer.created_at))
    )
    Customer.objects.filter(pk=customer.pk).update(stripe_customer_id=created.id)
    customer.stripe_customer_id = created.id
    return created.id


def subscription_sync(*, subscription: Subscription, client: stripe.StripeClient | None = None) -> str:
    """Create the Stripe subscription with the version's prices, or move it to the current version.

    A plan migration applied at renewal (``subscription_roll_period``) changes the local version; this swaps
    the Stripe items to the new version's prices without proration, so the next period bills at the new
    prices. A locally canceled subscription is canceled in Stripe.
    """
    client = client or stripe_client()
    subscription = Subscription.objects.select_related("customer", "plan_version__plan").get(
        pk=subscription.pk
    )
    version = subscription.plan_version
    if not plan_version_is_synced(version):
        plan_version_sync(plan_version=version, client=client)
        version.refresh_from_db()
    customer_id = subscription.customer.stripe_customer_id or customer_sync(
        customer=subscription.customer, client=client
    )
    wanted = plan_version_price_ids(version)
    metadata = {"subscription_id": str(subscription.pk), "plan_version": str(version.pk)}
    if not subscription.stripe_subscription_id:
        if subscription.status == SubscriptionStatus.CANCELED or not wanted:
            return ""
        created = client.v1.subscriptions.create(
            {
                "customer": customer_id,
                "items": [{"price": price_id} for price_id in wanted],
                "metadata": metadata,
            },
            _options(_idempotency_key("subscription", subscription.pk, subscription.created_at, version.pk)),
        )
        Subscription.objects.filter(pk=subscription.pk).update(stripe_subscription_id=created.id)
        _synced(subscription)
        return created.id
    remote = client.v1.subscriptions.retrieve(subscription.stripe_subscription_id)
    if remote.status == "canceled":
        _synced(subscription)
        return remote.id
    if subscription.status == SubscriptionStatus.CANCELED:
        client.v1.subscriptions.cancel(remote.id)
        _synced(subscription)
        return remote.id
    items = remote["items"].data
    have = {item.price.id: item.id for item in items}
    changes: list[dict[str, Any]] = [
        {"id": item_id, "deleted": True} for price_id, item_id in have.items() if price_id not in wanted
    ]
    changes += [{"price": price_id} for price_id in wanted if price_id not in have]
    if changes:
        update: Any = {"items": changes, "proration_behavior": "none", "metadata": metadata}
        client.v1.subscriptions.update(remote.id, update)
    _synced(subscription)
    return remote.id


def _synced(subscription: Subscription) -> None:
    StripeSubscriptionSync.objects.update_or_create(
        subscription=subscription,
        defaults={"plan_version": subscription.plan_version, "status": subscription.status},
    )


def subscriptions_out_of_sync() -> "list[Subscription]":
    """Subscriptions Stripe does not have yet, or whose version or status changed since the last sync."""
    never = Q(stripe_subscription_id="") & ~Q(status=SubscriptionStatus.CANCELED)
    changed = ~Q(stripe_subscription_id="") & (
        Q(stripe_sync__isnull=True)
        | ~Q(stripe_sync__plan_version=F("plan_version"))
        | ~Q(stripe_sync__status=F("status"))
    )
    return list(Subscription.objects.filter(never | changed).order_by("pk"))


@dataclass
class SyncReport:
    plan_versions: int = 0
    customers: int = 0
    subscriptions: int = 0
    errors: list[str] = field(default_factory=list)


def stripe_sync_pending(*, client: stripe.StripeClient | None = None) -> SyncReport:
    """Sync whatever is not in Stripe yet: versions in use or published, customers, subscriptions and
    their plan migrations.

    A version Stripe cannot take (a price it cannot express, or refuses) is reported, logged as an error and
    skipped, as are its subscriptions, so one bad price does not hold up everyone else. Transient Stripe
    errors propagate: the task retries.
    """
    client = client or stripe_client()
    report = SyncReport()
    versions = PlanVersion.objects.filter(
        Q(status=VersionStatus.PUBLISHED) | Q(subscriptions__isnull=False)
    ).distinct()
    for version in versions.select_related("plan"):
        if plan_version_is_synced(version):
            continue
        if (
            _sync_or_report(report, version, partial(plan_version_sync, plan_version=version, client=client))
            is not None
        ):
            report.plan_versions += 1
    for customer in Customer.objects.filter(stripe_customer_id="", subscription__isnull=False):
        customer_sync(customer=customer, client=client)
        report.customers += 1
    for subscription in subscriptions_out_of_sync():
        if _sync_or_report(
            report, subscription, partial(subscription_sync, subscription=subscription, client=client)
        ):
            report.subscriptions += 1
    return report


def _sync_or_report(report: SyncReport, subject: object, sync: Callable[[], T]) -> T | None:
    """Run one object's sync; if Stripe cannot take it, report it and return None instead of raising."""
    try:
        return sync()
    except (StripeSyncError, stripe.InvalidRequestError) as error:
        message = getattr(error, "user_message", None) or str(error)
        report.errors.append(f"{subject}: {message}")
        logger.error("Stripe sync skipped %s: %s", subject, message)
        return None
