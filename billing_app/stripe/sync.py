"""Mirror the catalog, the customers and their subscriptions into Stripe, and keep the Stripe ids.

Mapping (decided with the team):
- a local meter is a Stripe billing meter with ``event_name`` = the meter key, customers mapped by
  ``stripe_customer_id``, the value under ``value``, aggregated by sum. Its values are the post-paid
  overage *money* the local engine rated, in minor units (see docs/stripe.md), whatever the meter's
  own aggregation and price model;
- a dimension value with its own rate gets its own Stripe meter (``llm_tokens.gpt-4o``,
  ``StripeDimensionMeter``) and price, so Stripe totals and bills each value apart; values priced at the
  default rate feed the meter's own Stripe meter and the dimensional price's ``stripe_price_id``;
- a plan is a product; a plan version's base fee is a licensed monthly/yearly price and each of its usage
  prices a metered price on the meter at one minor unit per unit (``AMOUNT_PRICE``). Tiers, packages,
  dimension rates and credit conversion are applied once, locally: Stripe re-rating quantities we
  already drew from allowance, credits and the wallet is what billed tiered prices twice. Credit prices
  without a credit pack never produce overage and get no Stripe price.

Every create passes an idempotency key made from the local row's id and creation time, so a retry after a
timeout, or after a crash between the call and saving the id, gets Stripe's saved answer instead of a
second object. Ids are saved one by one right after each call: there is no transaction around network
calls, and a sync that stops half-way resumes where it stopped.
"""

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import Any, TypeVar

import stripe
from django.db.models import F, Q
from django.utils import timezone

from billing_app.models import (
    MeterEventStatus,
    StripeDimensionMeter,
    StripeMeterEvent,
    StripeSubscriptionSync,
)
from billing_app.stripe.carries import usage_carries_finalize
from billing_app.stripe.client import stripe_client
from billing_app.stripe.outbox import meter_events_send, outbox_drain
from billing_app.stripe.periods import stripe_period_bounds
from core.money import round_money, to_minor_units
from customers.models import Customer, Subscription, SubscriptionStatus
from plans.models import (
    BillingInterval,
    DimensionRate,
    Meter,
    PlanVersion,
    Price,
    PriceModel,
    PricingUnit,
    VersionStatus,
)
from plans.selectors import prices_with_rates
from usage.models import OutboxStatus, StripeUsageOutbox

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Stripe's limit: event names up to 100 characters.
EVENT_NAME_MAX = 100


class StripeSyncError(Exception):
    """A local object cannot be expressed in Stripe (a base fee finer than the currency's minor unit)."""

    code = "stripe_sync_error"


def _idempotency_key(kind: str, pk: int, created: datetime, *extra: object) -> str:
    # The creation time keeps keys unique across databases that reuse ids (a reset development database
    # talking to the same Stripe test account would otherwise replay another object's answer).
    return "-".join(["billing", kind, str(pk), str(int(created.timestamp())), *map(str, extra)])


def _options(key: str) -> Any:
    return {"idempotency_key": key}


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
            _idempotency_key("base-price", version.pk, version.created_at),
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
                _idempotency_key("dimension-price", rate.pk, version.created_at),
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


def stripe_period_params(subscription: Subscription, *, now: datetime | None = None) -> dict[str, Any]:
    """Create parameters that give the Stripe subscription the local current period.

    ``backdate_start_date`` starts it when the local period started (the sync runs a little after signup,
    and usage from the first minute is dated from then); ``billing_cycle_anchor_config`` renews it on the
    local anchor's day and time of day, clamped to short months as we clamp (an anchor on the 31st renews on
    Feb 28, then Mar 31: a fixed ``billing_cycle_anchor`` of Feb 28 would drift to the 28th). The first
    period is then exactly one interval, so ``create_prorations`` bills its base fee whole.
    """
    now = now or timezone.now()
    # The period of now, which is the current one unless the local roll has not run yet: periods before it
    # cannot be opened in Stripe any more (their usage is past the anchor, raised as too old if past 35 days).
    start, _ = stripe_period_bounds(*subscription.period_containing(now))
    anchor = subscription.billing_anchor.astimezone(UTC)
    config: dict[str, int] = {
        "day_of_month": anchor.day,
        "hour": anchor.hour,
        "minute": anchor.minute,
        "second": anchor.second,
    }
    if subscription.interval == BillingInterval.YEAR:
        config["month"] = anchor.month
    params: dict[str, Any] = {
        "billing_cycle_anchor_config": config,
        "proration_behavior": "create_prorations",
    }
    if start < now.replace(microsecond=0):
        params["backdate_start_date"] = int(start.timestamp())
    return params


@dataclass(frozen=True)
class StripeItems:
    """The Stripe prices a subscription to one plan version carries: its base fee, and one usage price per
    Stripe meter. Every usage price is one minor unit per unit (``AMOUNT_PRICE``), so two versions' prices on
    the same meter bill alike: the item of a meter is kept across plan changes, never swapped."""

    base_price_id: str | None
    by_meter: dict[str, str]  # Stripe meter id -> price id


def plan_version_items(plan_version: PlanVersion) -> StripeItems:
    by_meter: dict[str, str] = {}
    prices = prices_with_rates(plan_version)
    dimension_meters = {
        (found.meter_id, found.value): found.stripe_meter_id
        for found in StripeDimensionMeter.objects.filter(meter_id__in=[price.meter_id for price in prices])
    }
    for price in prices:
        if price.model == PriceModel.DIMENSIONAL:
            for rate in price.dimension_rates.all():
                meter_id = dimension_meters.get((price.meter_id, rate.value))
                if rate.stripe_price_id and meter_id:
                    by_meter[meter_id] = rate.stripe_price_id
        if price.stripe_price_id and price.meter.stripe_meter_id:
            by_meter[price.meter.stripe_meter_id] = price.stripe_price_id
    return StripeItems(plan_version.stripe_base_price_id or None, by_meter)


def subscription_sync(*, subscription: Subscription, client: stripe.StripeClient | None = None) -> str:
    """Create the Stripe subscription with the version's prices, or bring it to the local one.

    - A plan change mid-period keeps every usage item whose meter the period has used, so Stripe invoices
      all of the period's usage at its end; the new plan's meters get items of their own, and the base fee's
      difference for the rest of the period goes on the next invoice as an invoice item (``_base_fee_settle``).
    - A migration at renewal (``pending_plan_version``) is put in Stripe as soon as it is scheduled: the base
      fee Stripe charges in advance when the next period starts is then the new plan's.
    - A local cancellation first sends all usage (and the carried fraction), then cancels in Stripe with a
      final invoice.
    """
    client = client or stripe_client()
    subscription = Subscription.objects.select_related(
        "customer", "plan_version__plan", "pending_plan_version__plan"
    ).get(pk=subscription.pk)
    versions = [subscription.plan_version]
    if subscription.pending_plan_version is not None:
        versions.append(subscription.pending_plan_version)
    for version in versions:
        if not plan_version_is_synced(version):
            plan_version_sync(plan_version=version, client=client)
            version.refresh_from_db()
    customer_id = subscription.customer.stripe_customer_id or customer_sync(
        customer=subscription.customer, client=client
    )
    version = subscription.plan_version
    wanted = plan_version_price_ids(version)
    metadata = {"subscription_id": str(subscription.pk), "plan_version": str(version.pk)}
    if not subscription.stripe_subscription_id:
        if subscription.status == SubscriptionStatus.CANCELED or not wanted:
            return ""
        params: Any = {
            "customer": customer_id,
            "items": [{"price": price_id} for price_id in wanted],
            "metadata": metadata,
            **stripe_period_params(subscription),
        }
        created = client.v1.subscriptions.create(
            params,
            _options(_idempotency_key("subscription", subscription.pk, subscription.created_at, version.pk)),
        )
        Subscription.objects.filter(pk=subscription.pk).update(stripe_subscription_id=created.id)
        _synced(
            subscription,
            base_fee_period_start=subscription.current_period_start,
            base_fee_invoiced=version.base_fee,
        )
        return created.id
    remote = client.v1.subscriptions.retrieve(subscription.stripe_subscription_id)
    if remote.status == "canceled":
        _synced(subscription)
        return remote.id
    if subscription.status == SubscriptionStatus.CANCELED:
        subscription_final_invoice(subscription=subscription, client=client)
        _synced(subscription)
        return remote.id
    items = remote["items"].data
    stripe_start = datetime.fromtimestamp(min(item.current_period_start for item in items), UTC)
    local_start, _ = stripe_period_bounds(subscription.current_period_start, subscription.current_period_end)
    if stripe_start != local_start:
        # One side has started the next period and the other not yet (Stripe renews on the anchor's second,
        # the local roll a little later, or the other way round): changing items now would bill the wrong
        # period. Try again at the next sync.
        _synced(subscription, complete=False)
        return remote.id
    base_fee = _base_fee_settle(subscription, remote, client)
    complete = _items_sync(subscription, remote, client, metadata)
    _synced(
        subscription,
        complete=complete,
        base_fee_period_start=subscription.current_period_start,
        base_fee_invoiced=base_fee,
    )
    return remote.id


def _items_sync(
    subscription: Subscription, remote: Any, client: stripe.StripeClient, metadata: dict[str, str]
) -> bool:
    """Give the Stripe subscription the items of the plan in force and of the next period's plan.

    Returns False when an item must stay until Stripe's next period: a meter the plan in force no longer
    prices, whose usage earlier in this period Stripe has still to invoice (deleting its item would drop it).
    """
    in_force = plan_version_items(subscription.plan_version)
    next_period = (
        plan_version_items(subscription.pending_plan_version)
        if subscription.pending_plan_version is not None
        else in_force
    )
    metered = {
        item.price.recurring.meter: item
        for item in remote["items"].data
        if item.price.recurring.usage_type == "metered"
    }
    licensed = [item for item in remote["items"].data if item.price.recurring.usage_type != "metered"]
    changes: list[dict[str, Any]] = []
    for meter_id, price_id in {**next_period.by_meter, **in_force.by_meter}.items():
        if meter_id not in metered:
            changes.append({"price": price_id})
    plan_covers_the_period = subscription.plan_share() == 1
    complete = True
    for meter_id, item in metered.items():
        if meter_id in in_force.by_meter or meter_id in next_period.by_meter:
            continue
        if plan_covers_the_period:
            # Every earlier plan's usage is on an invoice Stripe has made: nothing of this period on it.
            changes.append({"id": item.id, "deleted": True})
        else:
            complete = False
    # Stripe charges the base fee in advance when a period starts: the next period's plan's price goes in now,
    # and this period's is settled by ``_base_fee_settle``.
    have_base = {item.price.id: item.id for item in licensed}
    if next_period.base_price_id not in have_base:
        if licensed:
            changes.append({"id": licensed[0].id, **_price_or_delete(next_period.base_price_id)})
        elif next_period.base_price_id:
            changes.append({"price": next_period.base_price_id})
    changes += [{"id": item.id, "deleted": True} for item in licensed[1:]]
    if changes or remote.metadata.to_dict() != metadata:
        update: Any = {"items": changes, "proration_behavior": "none", "metadata": metadata}
        client.v1.subscriptions.update(remote.id, update)
    return complete


def _price_or_delete(price_id: str | None) -> dict[str, Any]:
    return {"price": price_id} if price_id else {"deleted": True}


def _base_fee_settle(subscription: Subscription, remote: Any, client: stripe.StripeClient) -> Decimal:
    """Tell Stripe the current period's base fee after a plan change; returns the exact figure Stripe now has.

    Stripe charged the base price on the subscription when the period started. After a change we owe the old
    plan's share and the new plan's for the time left (``Subscription.period_base_fee``); the difference goes on
    the next invoice as an invoice item, computed between the two figures rounded to the cent, so the items of
    any number of changes add up to the local figure rounded once.
    """
    sync = StripeSubscriptionSync.objects.filter(subscription=subscription).first()
    if sync is not None and sync.base_fee_period_start == subscription.current_period_start:
        invoiced = sync.base_fee_invoiced
    else:
        # Stripe started this period since the last sync, charging in advance the base fee the subscription
        # records as charged when the period started (the next period's price goes in before the renewal).
        invoiced = subscription.base_fee_charged
    owed = subscription.period_base_fee(subscription.plan_version.base_fee)
    currency = subscription.plan_version.currency
    difference = to_minor_units(round_money(owed, currency), currency) - to_minor_units(
        round_money(invoiced, currency), currency
    )
    if difference:
        _, end = stripe_period_bounds(subscription.current_period_start, subscription.current_period_end)
        changed_at = subscription.plan_started_at or subscription.current_period_start
        client.v1.invoice_items.create(
            {
                "customer": subscription.customer.stripe_customer_id,
                "subscription": remote.id,
                "amount": difference,
                "currency": currency,
                "description": f"Base fee after the change to {subscription.plan_version} on "
                f"{changed_at:%Y-%m-%d %H:%M} UTC",
                "period": {"start": int(changed_at.timestamp()), "end": int(end.timestamp())},
                "metadata": {"subscription_id": str(subscription.pk), "kind": "base_fee_change"},
            },
            _options(
                _idempotency_key(
                    "base-fee",
                    subscription.pk,
                    subscription.current_period_start,
                    int(changed_at.timestamp()),
                    subscription.plan_version_id,
                )
            ),
        )
    return owed


def subscription_final_invoice(*, subscription: Subscription, client: stripe.StripeClient) -> None:
    """Cancel a locally canceled subscription in Stripe with a final invoice of everything it used.

    All of the customer's usage is sent first, the carried fraction of a cent rounded, so the final invoice
    (``invoice_now``) holds it; if some of it cannot be sent yet, the cancellation waits for the next sync.
    Usage after a cancellation is refused locally (``subscription_canceled``), so nothing comes later.
    """
    customer = subscription.customer
    outbox_drain(client=client)
    usage_carries_finalize(customer=customer)
    meter_events_send(client=client)
    waiting = StripeUsageOutbox.objects.filter(customer=customer, status=OutboxStatus.PENDING).exists()
    unsent = StripeMeterEvent.objects.filter(customer=customer, status=MeterEventStatus.PENDING).exists()
    if waiting or unsent:
        raise StripeSyncError(
            f"{customer}: usage is still on its way to Stripe; the final invoice waits for it."
        )
    client.v1.subscriptions.cancel(
        subscription.stripe_subscription_id,
        {"invoice_now": True, "prorate": False},
        _options(_idempotency_key("cancel", subscription.pk, subscription.created_at)),
    )


def _synced(subscription: Subscription, *, complete: bool = True, **base_fee: Any) -> None:
    StripeSubscriptionSync.objects.update_or_create(
        subscription=subscription,
        defaults={
            "plan_version": subscription.plan_version,
            "pending_plan_version": subscription.pending_plan_version,
            "status": subscription.status,
            "complete": complete,
            **base_fee,
        },
    )


def subscriptions_out_of_sync() -> "list[Subscription]":
    """Subscriptions Stripe does not have yet, whose version, migration or status changed since the last
    sync, or whose last sync left something for Stripe's next period."""
    never = Q(stripe_subscription_id="") & ~Q(status=SubscriptionStatus.CANCELED)
    pending_changed = (
        Q(pending_plan_version__isnull=False)
        & ~Q(stripe_sync__pending_plan_version=F("pending_plan_version"))
    ) | Q(pending_plan_version__isnull=True, stripe_sync__pending_plan_version__isnull=False)
    changed = ~Q(stripe_subscription_id="") & (
        Q(stripe_sync__isnull=True)
        | ~Q(stripe_sync__plan_version=F("plan_version"))
        | ~Q(stripe_sync__status=F("status"))
        | Q(stripe_sync__complete=False)
        | pending_changed
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
