"""Rules with one home: the units overage pays for, and which spend limits a change in spend crosses."""

from decimal import Decimal

import pytest
from django.db.models import Sum

from customers.models import NotificationKind, SpendControls
from customers.spend_limits import LimitCrossing, spend_limit_crossings
from tests.catalog_fixtures import event
from usage.ingest import usage_events_ingest
from usage.models import DailyUsageRollup, StripeUsageOutbox, UsageEvent
from usage.overage import overage_quantity, overage_quantity_sql
from usage.services import wallet_top_up

D = Decimal


@pytest.mark.django_db
def test_the_outbox_and_the_rollups_count_the_same_overage_units(pro_plan, make_customer):
    customer = make_customer("pro")
    wallet_top_up(customer=customer, amount=D("0.25"))  # pays for part of the first billable units
    usage_events_ingest(
        raw_events=[event("in-allowance", quantity=97), event("split", quantity=6), event("over", quantity=7)]
    )

    for row in UsageEvent.objects.annotate(in_sql=overage_quantity_sql()):
        in_python = overage_quantity(
            quantity=row.quantity,
            included_quantity=row.included_quantity,
            cost=row.cost,
            overage_amount=row.overage_amount,
        )
        assert row.in_sql == in_python
    outbox = StripeUsageOutbox.objects.aggregate(total=Sum("quantity"))["total"]
    assert outbox == DailyUsageRollup.objects.aggregate(total=Sum("overage_quantity"))["total"]
    assert outbox == D("7.5")  # half of the 3 split units (the wallet paid $0.25 of $0.30), and all 7


def controls(soft: str | None, hard: str | None) -> SpendControls:
    return SpendControls(
        soft_limit=D(soft) if soft is not None else None, hard_limit=D(hard) if hard is not None else None
    )


SOFT, HARD = NotificationKind.SOFT_LIMIT_CROSSED, NotificationKind.HARD_LIMIT_REACHED


@pytest.mark.parametrize(
    ("before", "after", "limits", "crossed"),
    [
        (D("0.50"), D("1.00"), ("1.00", "5.00"), [(SOFT, "1.00")]),  # reaching a limit crosses it
        (D("1.00"), D("2.00"), ("1.00", "5.00"), []),  # already at it before: crossed earlier
        (D("0.50"), D("6.00"), ("1.00", "5.00"), [(SOFT, "1.00"), (HARD, "5.00")]),
        (D("0.50"), D("0.99"), ("1.00", None), []),
        (None, D("3.00"), ("2.50", "3.00"), [(SOFT, "2.50"), (HARD, "3.00")]),  # a sweep: no before
        (None, D("3.00"), (None, None), []),
    ],
)
def test_a_limit_is_crossed_when_spend_reaches_it(before, after, limits, crossed):
    found = spend_limit_crossings(before=before, after=after, controls=controls(*limits))

    assert found == [LimitCrossing(kind, D(limit)) for kind, limit in crossed]
