"""Fixtures of the Stripe integration tests: the app's Stripe settings aimed at the fake, synced customers."""

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.utils import timezone

from billing_app.stripe.sync.pending import stripe_sync_pending
from customers.models import Customer
from tests.catalog_fixtures import event
from tests.stripe_fake import FakeStripe
from usage.ingest import IngestResult, usage_events_ingest


@pytest.fixture
def stripe_on(settings: Any, fake_stripe: FakeStripe) -> FakeStripe:
    """Stripe connected: the app's one client talks to the fake (no SDK retries, so faults surface at once)."""
    settings.STRIPE_API_KEY = "sk_test_billing"
    settings.STRIPE_API_BASE = fake_stripe.url
    settings.STRIPE_MAX_NETWORK_RETRIES = 0
    settings.STRIPE_TIMEOUT_SECONDS = 2
    return fake_stripe


@pytest.fixture
def synced_customer(stripe_on: FakeStripe, pro_plan: Any, make_customer: Callable[..., Customer]) -> Customer:
    """Acme on Pro (100 calls included, then $0.10), with its catalog, customer and subscription in Stripe."""
    customer = make_customer("pro")
    stripe_sync_pending()
    customer.refresh_from_db()
    return customer


@pytest.fixture
def mid_hour(synced_customer: Customer) -> Iterator[None]:
    """Half past the next hour (ticking), so usage recorded "now" cannot straddle an hour's end."""
    moment = (timezone.now() + timedelta(hours=1)).replace(minute=30, second=0, microsecond=0)
    with time_machine.travel(moment, tick=True):
        yield


def ingest(*events: dict[str, Any]) -> IngestResult:
    return usage_events_ingest(raw_events=list(events))


def calls(prefix: str, count: int, *, customer: str = "acme", quantity: int = 1) -> list[dict[str, Any]]:
    return [event(f"{prefix}-{i}", customer=customer, quantity=quantity) for i in range(count)]
