"""Celery tasks of the Stripe integration and the alerting jobs: take ids, call one service, retry.

Transient Stripe errors (a dropped connection, a rate limit, a 5xx) retry with exponential backoff (about
1 s, 2 s, 4 s, ... capped at five minutes, with jitter), up to 12 times; the periodic ones are run again by
beat anyway, so an outage of any length only delays them. Other errors fail the task loudly. Without
``STRIPE_API_KEY`` the Stripe tasks do nothing and the outbox keeps everything until Stripe is connected.
"""

import logging
from dataclasses import asdict
from typing import Any

import stripe
from celery import shared_task
from django.utils import timezone

from billing_app.auto_top_up import (
    auto_top_up_charge_claim,
    auto_top_up_charge_run,
    auto_top_up_pending_resume,
)
from billing_app.circuit_breaker import circuit_breaker_check
from billing_app.customer_emails import customer_emails_send, price_change_emails_send
from billing_app.idempotency import idempotency_keys_prune
from billing_app.margin_alerts import margins_negative_check
from billing_app.models import AutoTopUpCharge
from billing_app.stripe.carries import usage_carries_finalize
from billing_app.stripe.checkout import checkout_sessions_sweep
from billing_app.stripe.client import stripe_client, stripe_connected
from billing_app.stripe.outbox import outbox_drain
from billing_app.stripe.reconciliation import customer_meters_reconcile, reconciliation_run
from billing_app.stripe.sync.catalog import plan_version_sync
from billing_app.stripe.sync.pending import stripe_sync_pending
from billing_app.stripe.sync.subscriptions import customer_sync, subscription_sync
from billing_app.webhooks_out import webhook_deliveries_send
from customers.models import Customer, Subscription
from plans.models import PlanVersion
from usage.plan_migrations import plan_migrations_run

logger = logging.getLogger(__name__)

STRIPE_RETRY: dict[str, Any] = {
    "autoretry_for": (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError),
    "retry_backoff": True,
    "retry_backoff_max": 300,
    "retry_jitter": True,
    "max_retries": 12,
}
NOT_CONNECTED = {"skipped": "Stripe is not connected (STRIPE_API_KEY is empty)."}


@shared_task(bind=True, **STRIPE_RETRY)
def stripe_outbox_drain_task(self: Any) -> dict[str, Any]:
    """Send the outbox to Stripe. The task id names the drain's leases, so a retry resumes its own."""
    if not stripe_connected():
        return NOT_CONNECTED
    return asdict(outbox_drain(owner=self.request.id))


@shared_task(**STRIPE_RETRY)
def stripe_sync_task() -> dict[str, Any]:
    """Create in Stripe whatever is missing there: catalog, customers, subscriptions, plan migrations."""
    if not stripe_connected():
        return NOT_CONNECTED
    return asdict(stripe_sync_pending())


@shared_task(**STRIPE_RETRY)
def stripe_plan_version_sync_task(plan_version_id: int) -> None:
    if stripe_connected():
        plan_version_sync(plan_version=PlanVersion.objects.get(pk=plan_version_id))


@shared_task(**STRIPE_RETRY)
def stripe_customer_sync_task(customer_id: int) -> None:
    if stripe_connected():
        customer_sync(customer=Customer.objects.get(pk=customer_id))


@shared_task(**STRIPE_RETRY)
def stripe_subscription_sync_task(subscription_id: int) -> None:
    if stripe_connected():
        subscription_sync(subscription=Subscription.objects.get(pk=subscription_id))


@shared_task(**STRIPE_RETRY)
def stripe_reconcile_task() -> dict[str, Any]:
    if not stripe_connected():
        return NOT_CONNECTED
    report = reconciliation_run()
    return {"checked": report.checked, "diverged": [divergence.pk for divergence in report.diverged]}


@shared_task
def usage_carries_finalize_task() -> int:
    """Period close for Stripe: round the last fraction of each ended period (sent by the next drain)."""
    return usage_carries_finalize()


@shared_task
def spend_alerts_task() -> int:
    return customer_emails_send()


@shared_task
def price_changes_task() -> dict[str, int]:
    """Price changes that move subscribers: notices, the move at renewal, the first-invoice safety net, then
    the notices' and reminders' emails (``usage.plan_migrations``). Safe to run twice or concurrently."""
    report = asdict(plan_migrations_run())
    report["emails"] = price_change_emails_send()
    return report


@shared_task
def circuit_breaker_task() -> list[int]:
    return [customer.pk for customer in circuit_breaker_check()]


@shared_task
def margins_negative_task() -> list[int]:
    """Alert operators, once per billing period, about each customer whose margin turned negative."""
    return [alert.pk for alert in margins_negative_check()]


@shared_task
def idempotency_keys_prune_task() -> int:
    """Forget idempotency keys past their retention (``IDEMPOTENCY_KEY_RETENTION_DAYS``)."""
    return idempotency_keys_prune()


@shared_task
def auto_top_up_task(customer_id: int) -> int | None:
    """A wallet fell below its threshold: claim the charge (at most one pending per customer), then charge it.
    Returns the charge's id, or None when nothing was due."""
    if not stripe_connected():
        return None
    charge = auto_top_up_charge_claim(customer_id=customer_id)
    if charge is None:
        return None
    auto_top_up_charge_task.delay(charge.pk)
    return charge.pk


@shared_task(**STRIPE_RETRY)
def auto_top_up_charge_task(charge_id: int) -> str:
    """Charge the saved card for one pending charge; a retry sends the same idempotency key."""
    charge = AutoTopUpCharge.objects.select_related("customer", "payment_method").get(pk=charge_id)
    return auto_top_up_charge_run(charge=charge, client=stripe_client()).status


@shared_task(**STRIPE_RETRY)
def auto_top_up_resume_task() -> int:
    if not stripe_connected():
        return 0
    return auto_top_up_pending_resume(client=stripe_client())


@shared_task(**STRIPE_RETRY)
def checkout_sessions_sweep_task() -> int:
    """Settle Checkout Sessions whose webhook never came (paid: credit; expired: mark)."""
    if not stripe_connected():
        return 0
    return checkout_sessions_sweep()


@shared_task(**STRIPE_RETRY)
def customer_reconcile_task(customer_id: int) -> dict[str, Any]:
    """Reconcile one customer's Stripe meters (queued when the customer opens /settings/usage)."""
    subscription = (
        Subscription.objects.filter(customer_id=customer_id)
        .exclude(customer__stripe_customer_id="")
        .select_related("customer", "plan_version")
        .first()
    )
    if not stripe_connected() or subscription is None:
        return {"checked": 0, "diverged": []}
    report = customer_meters_reconcile(subscription=subscription, client=stripe_client(), now=timezone.now())
    return {"checked": report.checked, "diverged": [divergence.pk for divergence in report.diverged]}


@shared_task
def webhook_deliveries_send_task() -> dict[str, int]:
    """Send the webhook deliveries that are due: queued when an event is recorded, and every minute by beat
    (retries, and whatever a lost task or a dead worker left behind)."""
    return asdict(webhook_deliveries_send())
