"""The periodic pass that syncs whatever is not in Stripe yet, and its report of what Stripe could not take."""

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

import stripe
from django.db.models import Q

from billing_app.stripe.client import stripe_client
from billing_app.stripe.sync import StripeSyncError
from billing_app.stripe.sync.catalog import plan_version_is_synced, plan_version_sync
from billing_app.stripe.sync.subscriptions import customer_sync, subscription_sync, subscriptions_out_of_sync
from customers.models import Customer
from plans.models import PlanVersion, VersionStatus

logger = logging.getLogger(__name__)
T = TypeVar("T")


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
