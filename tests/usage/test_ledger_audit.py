"""``ledger_check``: each proof passes on a ledger the engine wrote, and reports each kind of damage to it.

The damage is done the way a bug or a hand-written query would: rows changed under the engine, with the
append-only trigger or a check constraint lifted for the test's transaction only (it rolls back).
"""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from plans.models import Meter
from tests.catalog_fixtures import event
from usage.ingest import usage_events_ingest
from usage.ledger_audit import (
    balance_mismatches,
    cached_total_mismatches,
    event_split_mismatches,
    ledger_mismatches,
    overage_outbox_mismatches,
    rollup_mismatches,
)
from usage.models import (
    CreditGrant,
    CreditLedgerEntry,
    DailyUsageRollup,
    LedgerEntryKind,
    Reservation,
    StripeUsageOutbox,
    UsageEvent,
)
from usage.services import credit_grant_create, reservation_create, wallet_top_up

pytestmark = pytest.mark.django_db


@pytest.fixture
def billed(make_plan, make_customer):
    """Metered: 10 calls included, then $0.10 a call. A $1 monetary grant and a $2 wallet, then 60 calls:
    10 included, $1 from the grant, $2 from the wallet and $2 of post-paid overage."""
    make_plan(
        "metered",
        prices=[{"meter": "api_call", "model": "per_unit", "unit_amount": "0.10", "included": "10"}],
    )
    customer = make_customer("metered")
    credit_grant_create(customer=customer, amount=Decimal("1"), unit="usd")
    wallet_top_up(customer=customer, amount=Decimal("2"))
    usage_events_ingest(raw_events=[event("a", quantity=10), event("b", quantity=20)])
    usage_events_ingest(raw_events=[event("c", quantity=30)])
    return customer


def sql(statement: str, params: list[object] | None = None) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement, params or [])


def rewrite_history(statement: str, params: list[object]) -> None:
    """Change a usage event or credit ledger row in place, as nothing in the app may."""
    table = "usage_usageevent" if "usage_usageevent" in statement else "usage_creditledgerentry"
    sql("SET CONSTRAINTS ALL IMMEDIATE")  # a table with deferred checks pending cannot be altered
    sql(f"ALTER TABLE {table} DISABLE TRIGGER {table}_append_only")
    sql(statement, params)
    sql(f"ALTER TABLE {table} ENABLE TRIGGER {table}_append_only")


def texts(mismatches) -> list[str]:
    return [str(mismatch) for mismatch in mismatches]


def test_a_ledger_the_engine_wrote_passes_every_proof(billed):
    assert UsageEvent.objects.filter(overage_amount__gt=0).exists()
    assert CreditLedgerEntry.objects.filter(kind=LedgerEntryKind.DRAWDOWN, grant__isnull=True).exists()
    assert CreditLedgerEntry.objects.filter(kind=LedgerEntryKind.DRAWDOWN, grant__isnull=False).exists()
    assert ledger_mismatches() == []
    call_command("ledger_check")


def test_an_event_whose_split_does_not_add_up_to_its_cost_is_reported(billed):
    last = UsageEvent.objects.get(idempotency_key="c")
    rewrite_history(
        "UPDATE usage_usageevent SET overage_amount = overage_amount - 1 WHERE id = %s", [last.pk]
    )

    assert texts(event_split_mismatches()) == [
        f"event {last.pk} split: costs 3.000000000000, credits + wallet + overage make 2.000000000000"
    ]


def test_an_event_claiming_more_wallet_than_the_wallet_rows_took_is_reported(billed):
    # The split still adds up (wallet +0.5, overage -0.5), but no wallet row took the extra 0.5.
    last = UsageEvent.objects.get(idempotency_key="c")
    rewrite_history(
        "UPDATE usage_usageevent SET wallet_amount = wallet_amount + 0.5, overage_amount = overage_amount - 0.5 "
        "WHERE id = %s",
        [last.pk],
    )

    assert texts(event_split_mismatches()) == [
        f"customer {billed.pk} write at {last.received_at.isoformat()} wallet: "
        "events say the wallet paid 1.500000000000, wallet rows took 1.000000000000"
    ]


def test_a_grant_draw_down_that_no_event_accounts_for_is_reported(billed):
    # The grant is made 0.25 larger and its cached remainder kept equal to its rows, so only the
    # events' shares disagree with the draw-downs.
    grant = CreditGrant.objects.get()
    first_write = UsageEvent.objects.get(idempotency_key="b")
    CreditLedgerEntry.objects.create(
        customer=billed,
        grant=grant,
        kind=LedgerEntryKind.DRAWDOWN,
        amount=Decimal("-0.25"),
        unit="usd",
        usage_event=first_write,
    )
    rewrite_history(
        "UPDATE usage_creditledgerentry SET amount = amount + 0.25 WHERE grant_id = %s AND kind = 'grant'",
        [grant.pk],
    )
    CreditGrant.objects.filter(pk=grant.pk).update(amount=Decimal("1.25"))

    assert cached_total_mismatches() == []
    assert texts(event_split_mismatches()) == [
        f"customer {billed.pk} write at {first_write.received_at.isoformat()} credits (usd): "
        "events say grants paid 1.000000000000, grant rows took 1.250000000000"
    ]


def test_overage_missing_from_the_stripe_outbox_is_reported(billed):
    row = StripeUsageOutbox.objects.get()
    StripeUsageOutbox.objects.filter(pk=row.pk).update(
        quantity=row.quantity - 5, amount=row.amount - Decimal("0.5")
    )
    period = f"{row.period_start:%Y-%m-%d %H:%M}"

    assert texts(overage_outbox_mismatches()) == [
        f"customer {billed.pk} meter {row.meter_id} period {period} overage units: "
        "events record 20.000000, the Stripe outbox holds 15.000000",
        f"customer {billed.pk} meter {row.meter_id} period {period} overage money: "
        "events record 2.000000000000, the Stripe outbox holds 1.500000000000",
    ]


def test_overage_queued_for_stripe_twice_is_reported(billed):
    row = StripeUsageOutbox.objects.get()
    row.pk = None
    row.save()

    assert len(overage_outbox_mismatches()) == 2


def test_a_rollup_counted_on_the_wrong_day_is_reported(billed):
    # Period totals still agree with the rollups (same period), so only the per-day proof sees it.
    rollup = DailyUsageRollup.objects.get()
    DailyUsageRollup.objects.filter(pk=rollup.pk).update(day=rollup.day - timedelta(days=1))

    assert cached_total_mismatches() == []
    mismatches = texts(rollup_mismatches())
    assert len(mismatches) == 2 * 6  # every total, on both days
    assert any(
        f"day {rollup.day} " in text and "rollup has 0, events sum to 60" in text for text in mismatches
    )


def test_a_rollup_holding_two_periods_is_reported(billed):
    # One rollup row with the period's totals, but half of its events belong to the next period.
    later = UsageEvent.objects.get(idempotency_key="c")
    next_period = later.period_start + timedelta(days=31)
    rewrite_history("UPDATE usage_usageevent SET period_start = %s WHERE id = %s", [next_period, later.pk])

    periods = {text.split(" period ")[1].split(" ")[0] for text in texts(rollup_mismatches())}
    assert periods == {f"{later.period_start:%Y-%m-%d}", f"{next_period:%Y-%m-%d}"}  # then the time


def test_a_negative_wallet_is_reported(billed):
    sql("SET CONSTRAINTS ALL IMMEDIATE")
    sql("ALTER TABLE usage_customerbalance DROP CONSTRAINT wallet_balance_non_negative")
    sql("UPDATE usage_customerbalance SET wallet_balance = -1 WHERE customer_id = %s", [billed.pk])

    assert f"customer {billed.pk} wallet: is -1.000000000000, must be at least 0" in texts(
        balance_mismatches()
    )


def hold_five_calls(customer) -> Reservation:
    reservation, _ = reservation_create(
        customer=customer, meter=Meter.objects.get(key="api_call"), quantity=Decimal(5), idempotency_key="r"
    )
    return reservation


def test_a_hold_keeping_more_than_the_wallet_has_is_reported(billed):
    wallet_top_up(customer=billed, amount=Decimal("1"))
    reservation = hold_five_calls(billed)
    assert reservation.held_wallet == Decimal("0.5")
    assert balance_mismatches() == []
    Reservation.objects.filter(pk=reservation.pk).update(held_wallet=Decimal("1.5"))

    assert texts(balance_mismatches()) == [
        f"customer {billed.pk} open holds on the wallet: keep 1.500000000000, the wallet has 1.000000000000"
    ]
    # A hold past its expiry keeps nothing, whether or not the expiry job has marked it.
    assert balance_mismatches(now=timezone.now() + timedelta(days=1)) == []


def test_a_hold_on_credits_no_usable_grant_has_is_reported(billed):
    grant, _ = credit_grant_create(customer=billed, amount=Decimal("2"), unit="usd")
    reservation = hold_five_calls(billed)
    assert reservation.held_credits == Decimal("0.5")
    # Voided under the hold (a grant's expiry waits for the holds that pin it; voiding it anyway breaks that).
    CreditGrant.objects.filter(pk=grant.pk).update(expired_at=timezone.now())

    assert texts(balance_mismatches()) == [
        f"customer {billed.pk} open holds on credit grants (usd): keep 0.500000000000, usable grants have 0"
    ]


def test_ledger_check_lists_every_mismatch_and_fails(billed):
    StripeUsageOutbox.objects.update(amount=Decimal(0))

    with pytest.raises(CommandError, match="1 ledger mismatch"):
        call_command("ledger_check")
