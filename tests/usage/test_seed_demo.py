"""``manage.py seed_demo``: the demo it builds, a correction included, built once; and it refuses to run
outside development, since it makes known passwords."""

from io import StringIO
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from customers.models import Customer, Notification, Subscription
from usage.management.commands.seed_demo import CORRECTION_REASON
from usage.models import CreditLedgerEntry, PeriodUsage, UsageEvent

pytestmark = pytest.mark.django_db


def seed_demo() -> None:
    call_command("seed_demo", stdout=StringIO())


@pytest.fixture
def demo(settings: Any) -> None:
    settings.DEBUG = True
    seed_demo()


def test_the_demo_holds_a_correction_the_usage_page_lists_with_its_reason(demo: None, client: Any) -> None:
    (correction,) = UsageEvent.objects.filter(corrects__isnull=False).select_related("corrects")
    corrected = correction.corrects
    assert corrected is not None and corrected.customer.external_id == "acme"
    assert correction.correction_reason == CORRECTION_REASON
    assert correction.quantity == -(corrected.quantity / 2)  # the retries had doubled it
    subscription = Subscription.objects.get(customer__external_id="acme")
    assert correction.period_start == subscription.current_period_start

    client.force_login(get_user_model().objects.get(username="demo"))
    page = client.get("/settings/usage").content.decode()

    assert 'id="corrections-list"' in page
    assert f"Reason: {CORRECTION_REASON}" in page
    call_command("ledger_check", stdout=StringIO())


def test_seeding_the_demo_again_changes_nothing(demo: None) -> None:
    def state() -> tuple[object, ...]:
        return (
            list(UsageEvent.objects.order_by("pk").values_list("pk", "quantity", "corrects_id")),
            CreditLedgerEntry.objects.count(),
            Notification.objects.count(),
            sorted(PeriodUsage.objects.values_list("customer_id", "meter_id", "period_start", "quantity")),
        )

    before = state()

    seed_demo()

    assert state() == before


def test_seed_demo_refuses_to_run_without_debug(settings: Any) -> None:
    settings.DEBUG = False

    with pytest.raises(CommandError, match="DEBUG=true"):
        call_command("seed_demo")

    assert not get_user_model().objects.filter(username="admin").exists()
    assert not Customer.objects.exists()
