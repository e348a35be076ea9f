"""Ingest: idempotency, the consumption order, limits, rollups, the outbox, and the ledger's invariants."""

from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.core.management import call_command
from django.db import DatabaseError, transaction
from django.utils import timezone

from customers.models import Notification, NotificationKind
from customers.services import customer_create, customer_freeze, subscription_start
from tests.catalog_fixtures import event
from usage.errors import InvalidBatch
from usage.ingest import usage_events_ingest
from usage.ledger_audit import ledger_mismatches
from usage.models import (
    CreditGrant,
    CreditLedgerEntry,
    CustomerBalance,
    DailyUsageRollup,
    LedgerEntryKind,
    PeriodUsage,
    StripeUsageOutbox,
    UsageEvent,
)
from usage.services import credit_grant_create, credit_grants_expire, wallet_top_up

pytestmark = pytest.mark.django_db


def ingest(*events):
    return usage_events_ingest(raw_events=list(events))


def statuses(result):
    return [r.status for r in result.results]


def test_pro_plan_bills_overage_beyond_included(pro_plan, make_customer):
    make_customer("pro")
    ingest(*[event(f"e{i}") for i in range(250)])
    period = PeriodUsage.objects.get()
    assert period.quantity == 250
    assert period.included_quantity == 100
    assert period.cost == Decimal("15.00")  # 150 × $0.10
    assert period.overage_amount == Decimal("15.00")
    assert not ledger_mismatches()


def test_replayed_event_changes_nothing(pro_plan, make_customer):
    make_customer("pro")
    first = ingest(event("a", quantity=150), event("b", quantity=3))
    before = (
        list(PeriodUsage.objects.values()),
        list(DailyUsageRollup.objects.values()),
        StripeUsageOutbox.objects.count(),
    )

    replay = ingest(event("a", quantity=150), event("b", quantity=3))

    assert statuses(replay) == ["duplicate", "duplicate"]
    assert [r.id for r in replay.results] == [r.id for r in first.results]
    assert UsageEvent.objects.count() == 2
    after = (
        list(PeriodUsage.objects.values()),
        list(DailyUsageRollup.objects.values()),
        StripeUsageOutbox.objects.count(),
    )
    assert after == before


def test_one_batch_for_several_customers_keeps_each_ledger_apart(pro_plan, make_customer):
    """Customers of a batch are locked and read together; keys are unique per customer only."""
    acme, globex = make_customer("pro"), make_customer("pro", external_id="globex")
    ingest(event("k1", quantity=30))

    result = ingest(
        event("k1", quantity=30),  # acme's replay
        event("k1", customer="globex", quantity=5),  # the same key, another customer: new
        event("k2", quantity=80, user="ana"),
        event("k2", customer="globex", quantity=1, user="ana"),
    )

    assert statuses(result) == ["duplicate", "accepted", "accepted", "accepted"]
    assert result.results[0].id == UsageEvent.objects.get(customer=acme, idempotency_key="k1").pk
    assert PeriodUsage.objects.get(customer=acme).quantity == 110
    assert PeriodUsage.objects.get(customer=acme).overage_amount == Decimal("1.0")  # 10 past 100 included
    assert PeriodUsage.objects.get(customer=globex).quantity == 6
    assert acme.members.get().pk != globex.members.get().pk
    assert not ledger_mismatches()


def test_duplicate_key_within_a_batch_is_counted_once(pro_plan, make_customer):
    make_customer("pro")
    result = ingest(event("same", quantity=2), event("same", quantity=2))
    assert statuses(result) == ["accepted", "duplicate"]
    assert result.results[0].id == result.results[1].id
    assert PeriodUsage.objects.get().quantity == 2


def test_cached_events_are_recorded_but_never_billed(pro_plan, make_customer):
    make_customer("pro")
    ingest(event("warm", quantity=100))
    ingest(event("hit", quantity=50, properties={"cached": True}))
    period = PeriodUsage.objects.get()
    assert period.quantity == 100
    assert period.non_billable_quantity == 50
    assert period.cost == 0
    hit = UsageEvent.objects.get(idempotency_key="hit")
    assert not hit.billable and hit.cost == 0
    assert not StripeUsageOutbox.objects.exists()


def test_consumption_order_included_then_grants_by_priority_then_wallet_then_overage(pro_plan, make_customer):
    customer = make_customer("pro")
    late = timezone.now() + timedelta(days=20)
    soon = timezone.now() + timedelta(days=2)
    low_priority, _ = credit_grant_create(customer=customer, amount=Decimal("1.00"), priority=60)
    later_expiry, _ = credit_grant_create(
        customer=customer, amount=Decimal("1.00"), priority=10, expires_at=late
    )
    earlier_expiry, _ = credit_grant_create(
        customer=customer, amount=Decimal("1.00"), priority=10, expires_at=soon
    )
    wallet_top_up(customer=customer, amount=Decimal("2.00"))

    # 100 included, then 80 calls × $0.10 = $8: 3 × $1 of grants, $2 of wallet, $3 of overage.
    ingest(event("big", quantity=180))

    usage_event = UsageEvent.objects.get()
    assert usage_event.included_quantity == 100
    assert usage_event.cost == Decimal("8.00")
    assert usage_event.credits_amount == Decimal("3.00")
    assert usage_event.wallet_amount == Decimal("2.00")
    assert usage_event.overage_amount == Decimal("3.00")
    drawn_in_order = list(
        CreditLedgerEntry.objects.filter(kind=LedgerEntryKind.DRAWDOWN, grant__isnull=False)
        .order_by("id")
        .values_list("grant_id", flat=True)
    )
    assert drawn_in_order == [earlier_expiry.pk, later_expiry.pk, low_priority.pk]
    assert CustomerBalance.objects.get(customer=customer).wallet_balance == 0
    outbox = StripeUsageOutbox.objects.get()
    assert outbox.amount == Decimal("3.00")
    assert outbox.quantity == Decimal(30)  # the 30 calls that overage pays for
    assert not ledger_mismatches()


def test_grants_are_used_in_priority_order_before_expiry(pro_plan, make_customer):
    customer = make_customer("pro")
    urgent, _ = credit_grant_create(
        customer=customer, amount=Decimal("1"), priority=90, expires_at=timezone.now() + timedelta(hours=1)
    )
    preferred, _ = credit_grant_create(customer=customer, amount=Decimal("1"), priority=5)
    ingest(event("x", quantity=110))  # $1 of billable usage
    urgent.refresh_from_db()
    preferred.refresh_from_db()
    assert preferred.remaining == 0
    assert urgent.remaining == 1


def test_expired_grant_is_not_used_and_expiry_voids_the_remainder(pro_plan, make_customer):
    customer = make_customer("pro")
    grant, _ = credit_grant_create(
        customer=customer, amount=Decimal("5"), expires_at=timezone.now() + timedelta(days=1)
    )
    with time_machine.travel(timezone.now() + timedelta(days=2)):
        ingest(event("after-expiry", quantity=120))
        assert UsageEvent.objects.get().credits_amount == 0
        assert credit_grants_expire() == 1
        assert credit_grants_expire() == 0  # safe to run twice
    grant.refresh_from_db()
    assert grant.remaining == 0 and grant.expired_at is not None
    expiry = CreditLedgerEntry.objects.get(kind=LedgerEntryKind.EXPIRY)
    assert expiry.amount == Decimal("-5")
    assert not ledger_mismatches()


def test_credit_priced_dimensional_usage_draws_credits_by_complexity(credits_plan, make_customer):
    customer = make_customer("credits")
    credit_grant_create(customer=customer, amount=Decimal(100))
    result = ingest(
        event("s", meter="workflow_run", properties={"complexity": "simple"}),
        event("m", meter="workflow_run", properties={"complexity": "standard"}),
        event("c", meter="workflow_run", quantity=2, properties={"complexity": "complex"}),
    )
    assert statuses(result) == ["accepted"] * 3
    assert CreditGrant.objects.get().remaining == Decimal(100 - 1 - 5 - 40)
    by_value = dict(DailyUsageRollup.objects.values_list("dimension_value", "cost"))
    assert by_value == {"simple": Decimal(1), "standard": Decimal(5), "complex": Decimal(40)}


def test_credits_exhausted_without_overage_refuses_the_event(credits_plan, make_customer):
    customer = make_customer("credits")
    credit_grant_create(customer=customer, amount=Decimal(10))
    result = ingest(
        event("one", meter="workflow_run", properties={"complexity": "standard"}),
        event("two", meter="workflow_run", properties={"complexity": "complex"}),
    )
    assert statuses(result) == ["accepted", "refused"]
    assert result.results[1].code == "insufficient_balance"
    assert UsageEvent.objects.count() == 1


def test_unknown_dimension_value_without_default_rejects_the_batch(credits_plan, make_customer):
    make_customer("credits")
    with pytest.raises(InvalidBatch) as refused:
        ingest(
            event("ok", meter="workflow_run", properties={"complexity": "simple"}),
            event("bad", meter="workflow_run", properties={"complexity": "galactic"}),
        )
    assert refused.value.details["events"][0]["code"] == "unknown_dimension_value"
    assert refused.value.details["events"][0]["index"] == 1
    assert not UsageEvent.objects.exists()


def test_free_tier_refuses_the_21st_ai_action(free_plan, make_customer):
    make_customer("free")
    result = ingest(*[event(f"a{i}", meter="ai_action") for i in range(21)])
    assert statuses(result) == ["accepted"] * 20 + ["refused"]
    assert result.results[20].code == "entitlement_limit_reached"
    assert PeriodUsage.objects.get().quantity == 20


def test_premium_models_are_refused_on_the_free_tier(free_plan, make_customer):
    make_customer("free")
    result = ingest(event("p", meter="ai_action", properties={"feature": "premium_models"}))
    assert result.results[0].code == "not_entitled"


def test_block_overage_stops_at_included_and_credits(pro_plan, make_customer):
    customer = make_customer("pro", block_overage=True)
    credit_grant_create(customer=customer, amount=Decimal("0.50"))
    result = ingest(event("within", quantity=105), event("beyond", quantity=1))
    assert statuses(result) == ["accepted", "refused"]
    assert result.results[1].code == "insufficient_balance"
    assert not StripeUsageOutbox.objects.exists()


def test_a_plan_that_blocks_overage_refuses_past_prepaid_whatever_the_customers_switch(
    make_plan, make_customer
):
    make_plan(
        "prepaid",
        overage="blocked",
        prices=[{"meter": "api_call", "model": "per_unit", "unit_amount": "0.10", "included": "100"}],
    )
    customer = make_customer("prepaid", block_overage=False)
    wallet_top_up(customer=customer, amount=Decimal("0.50"))
    result = ingest(event("within", quantity=105), event("beyond", quantity=1))
    assert statuses(result) == ["accepted", "refused"]
    assert result.results[1].code == "insufficient_balance"
    assert not StripeUsageOutbox.objects.exists()


def test_hard_limit_refuses_usage_that_would_cross_it(pro_plan, make_customer):
    make_customer("pro", hard_limit=Decimal("5.00"))
    result = ingest(event("to-limit", quantity=150), event("over", quantity=1), event("free", quantity=0))
    assert statuses(result) == ["accepted", "refused", "accepted"]
    assert result.results[1].code == "hard_limit_reached"
    assert Notification.objects.filter(kind=NotificationKind.HARD_LIMIT_REACHED).count() == 1


def test_frozen_account_refuses_billable_usage_but_records_cache_hits(pro_plan, make_customer):
    customer = make_customer("pro")
    customer_freeze(customer=customer, reason="runaway usage", period_start=timezone.now())
    result = ingest(event("billable"), event("cached", properties={"cached": True}))
    assert statuses(result) == ["refused", "accepted"]
    assert result.results[0].code == "account_frozen"


def test_soft_limit_crossing_is_recorded_once_per_period(pro_plan, make_customer):
    make_customer("pro", soft_limit=Decimal("1.00"))
    ingest(event("a", quantity=105))
    assert not Notification.objects.exists()
    ingest(event("b", quantity=10))
    ingest(event("c", quantity=10))
    notification = Notification.objects.get()
    assert notification.kind == NotificationKind.SOFT_LIMIT_CROSSED
    assert "1.00" in notification.message


def test_rollups_are_per_member_action_and_day(pro_plan, make_customer):
    make_customer("pro")
    ingest(
        event("1", quantity=60, user="ana", properties={"action": "summarize"}),
        event("2", quantity=60, user="ana", properties={"action": "summarize"}),
        event("3", quantity=5, user="bo", properties={"action": "translate"}),
    )
    rows = {
        (r.member.external_id, r.action): (r.quantity, r.event_count, r.cost)
        for r in DailyUsageRollup.objects.select_related("member")
    }
    assert rows == {
        ("ana", "summarize"): (Decimal(120), 2, Decimal("2.00")),
        ("bo", "translate"): (Decimal(5), 1, Decimal("0.50")),
    }


def test_only_overage_reaches_the_stripe_outbox(pro_plan, make_customer):
    make_customer("pro")
    ingest(event("in", quantity=100))
    assert not StripeUsageOutbox.objects.exists()
    ingest(event("out", quantity=7))
    outbox = StripeUsageOutbox.objects.get()
    assert (outbox.quantity, outbox.amount, outbox.currency, outbox.event_count) == (
        Decimal(7),
        Decimal("0.70"),
        "usd",
        1,
    )


def test_ledger_rows_cannot_be_rewritten(pro_plan, make_customer):
    make_customer("pro")
    ingest(event("kept"))
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        UsageEvent.objects.update(quantity=99)
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        UsageEvent.objects.all().delete()


def test_ledger_check_command_passes_and_reports_tampering(pro_plan, make_customer, capsys):
    customer = make_customer("pro")
    wallet_top_up(customer=customer, amount=Decimal(3))
    ingest(event("x", quantity=130))
    call_command("ledger_check")
    CustomerBalance.objects.filter(customer=customer).update(wallet_balance=Decimal(50))
    with pytest.raises(Exception, match="mismatch"):
        call_command("ledger_check")


def test_rollup_days_are_utc_days_whatever_offset_the_client_sends(pro_plan):
    # Subscribed two days ago, so that yesterday is in the current period.
    customer = customer_create(external_id="acme", name="Acme")
    subscription_start(customer=customer, plan_version=pro_plan, at=timezone.now() - timedelta(days=2))
    moment = (timezone.now() - timedelta(days=1)).replace(hour=1, minute=30, second=0, microsecond=0)
    # 01:30 UTC, written as 20:30 the evening before in New York.
    new_york = moment.astimezone(timezone.get_fixed_timezone(-300))
    ingest(event("ny", timestamp=new_york.isoformat()))
    assert DailyUsageRollup.objects.get().day == moment.date()


def test_usage_without_a_user_adds_up_in_one_rollup_row(pro_plan, make_customer):
    make_customer("pro")
    ingest(event("first", quantity=2))
    ingest(event("second", quantity=3))
    rollup = DailyUsageRollup.objects.get()
    assert rollup.member_id is None
    assert (rollup.quantity, rollup.event_count) == (5, 2)
    assert not ledger_mismatches()
