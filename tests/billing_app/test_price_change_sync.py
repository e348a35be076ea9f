"""A price change's move at renewal in Stripe: the bulk move sets the pending version, the existing sync does the
rest (checked by what the fake Stripe holds)."""

from datetime import timedelta

import pytest
import time_machine

from billing_app.stripe.client import stripe_client
from billing_app.stripe.sync.pending import stripe_sync_pending
from customers.models import Subscription
from tests.usage.test_price_change_notice import draft, notify
from usage.plan_migrations import plan_migrations_run

pytestmark = pytest.mark.django_db


def test_the_move_reaches_stripe_through_the_existing_sync(stripe_on, make_plan, make_customer):
    """The bulk move only sets ``pending_plan_version``; the Stripe sync puts the new base price on the
    subscription before Stripe's own renewal, as for any change at renewal."""
    make_plan(
        "pro", base_fee="10.00", prices=[{"meter": "api_call", "model": "per_unit", "unit_amount": "0.10"}]
    )
    customer = make_customer("pro", "acme")
    stripe_sync_pending()
    v2 = draft(
        "pro", base_fee="12.00", prices=[{"meter": "api_call", "model": "per_unit", "unit_amount": "0.08"}]
    )
    migration = notify(v2)

    with time_machine.travel(migration.migrate_at + timedelta(hours=1), tick=False):
        plan_migrations_run()
        report = stripe_sync_pending()

    assert report.subscriptions == 1
    v2.refresh_from_db()
    subscription = Subscription.objects.get(customer=customer)
    assert subscription.pending_plan_version_id == v2.pk
    remote = stripe_client().v1.subscriptions.retrieve(subscription.stripe_subscription_id)
    assert v2.stripe_base_price_id in [item.price.id for item in remote["items"].data]
