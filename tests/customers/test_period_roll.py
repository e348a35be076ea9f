from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from customers.models import Subscription
from customers.tasks import subscriptions_roll_periods_task
from tests.catalog_fixtures import event
from usage.errors import InvalidBatch
from usage.ingest import usage_events_ingest
from usage.models import PeriodUsage

pytestmark = pytest.mark.django_db


def test_period_close_rolls_the_subscription_and_starts_a_fresh_allowance(pro_plan, make_customer):
    make_customer("pro")
    usage_events_ingest(raw_events=[event("old", quantity=150)])
    first = Subscription.objects.get()

    with time_machine.travel(first.current_period_end + timedelta(hours=1)):
        assert subscriptions_roll_periods_task() == 1
        assert subscriptions_roll_periods_task() == 0  # safe to run twice
        usage_events_ingest(raw_events=[event("new", quantity=150)])

    rolled = Subscription.objects.get()
    assert rolled.current_period_start == first.current_period_end
    periods = list(PeriodUsage.objects.order_by("period_start").values_list("quantity", "overage_amount"))
    # Each period has its own 100 included calls: 50 × $0.10 over in each.
    assert [(q, o) for q, o in periods] == [(150, 5), (150, 5)]


def test_events_in_a_closed_period_are_refused(pro_plan, make_customer):
    make_customer("pro")
    start = Subscription.objects.get().current_period_end
    with time_machine.travel(start + timedelta(days=1)):
        subscriptions_roll_periods_task()
        with pytest.raises(InvalidBatch, match="invalid"):
            usage_events_ingest(
                raw_events=[event("late", timestamp=(timezone.now() - timedelta(days=2)).isoformat())]
            )
