"""Customers and their subscriptions in Stripe: create them, bring them to the local plan (mid-period changes,
migrations at renewal), and cancel with a final invoice."""

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

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
from billing_app.stripe.sync import StripeSyncError, idempotency_key, request_options
from billing_app.stripe.sync.catalog import plan_version_is_synced, plan_version_price_ids, plan_version_sync
from core.money import round_money, to_minor_units
from customers.models import Customer, Subscription, SubscriptionStatus
from plans.models import BillingInterval, PlanVersion, PriceModel
from plans.selectors import prices_with_rates
from usage.models import OutboxStatus, StripeUsageOutbox


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
        params, request_options(idempotency_key("customer", customer.pk, customer.created_at))
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
            request_options(
                idempotency_key("subscription", subscription.pk, subscription.created_at, version.pk)
            ),
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
            request_options(
                idempotency_key(
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
        request_options(idempotency_key("cancel", subscription.pk, subscription.created_at)),
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
