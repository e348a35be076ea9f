"""Corrections of recorded usage: an adjusting event for the difference, re-rated and paid back exactly."""

from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.utils import timezone

from core.errors import IdempotencyKeyReused, InvalidInput
from customers.models import Customer, Notification, NotificationKind
from customers.services import subscription_roll_period
from plans.models import Meter
from tests.catalog_fixtures import event
from usage.corrections import usage_event_correct
from usage.errors import CorrectionUncovered, PeriodClosed
from usage.ingest import usage_events_ingest
from usage.ledger_audit import correction_mismatches, ledger_mismatches
from usage.models import (
    CorrectionFlag,
    CreditGrant,
    CreditLedgerEntry,
    CustomerBalance,
    DailyUsageRollup,
    PeriodUsage,
    StripeUsageOutbox,
    UsageEvent,
)
from usage.services import credit_grant_create, credit_grants_expire, wallet_top_up

pytestmark = pytest.mark.django_db

DIMENSIONAL_CREDITS = {
    "meter": "workflow_run",
    "model": "dimensional",
    "unit": "credits",
    "dimension": "complexity",
    "rates": {"simple": "1", "complex": "20"},
    "default_rate": None,
}


def record(key: str, quantity, **fields) -> UsageEvent:
    [result] = usage_events_ingest(raw_events=[event(key, quantity=str(quantity), **fields)]).results
    assert result.status == "accepted", result.message
    return UsageEvent.objects.get(pk=result.id)


def correct(target: UsageEvent, quantity, key: str = "fix-1", **options):
    return usage_event_correct(
        event_id=target.pk,
        quantity=Decimal(str(quantity)),
        reason=options.pop("reason", "double-counted retries"),
        idempotency_key=key,
        by=options.pop("by", "api_key:test backend"),
        **options,
    )


def period(meter: str = "api_call") -> PeriodUsage:
    return PeriodUsage.objects.get(meter__key=meter)


def wallet(customer: Customer) -> Decimal:
    return CustomerBalance.objects.get(customer=customer).wallet_balance


def test_a_decrease_of_overage_gives_the_overage_back(pro_plan, make_customer):
    make_customer("pro")
    record("a", 100)  # the allowance
    over = record("b", 50)  # 50 over at $0.10: $5 of overage
    assert over.overage_amount == Decimal("5")

    result = correct(over, 20)

    correction = result.correction
    assert result.created and result.corrected_quantity == 20
    assert correction.quantity == -30 and correction.corrects_id == over.pk
    assert correction.cost == Decimal("-3") and correction.overage_amount == Decimal("-3")
    assert correction.correction_reason == "double-counted retries"
    assert correction.corrected_by == "api_key:test backend"
    assert correction.timestamp == over.timestamp and correction.period_start == over.period_start
    row = period()
    assert (row.quantity, row.cost, row.overage_amount) == (120, Decimal("2"), Decimal("2"))
    assert sum(r.amount for r in StripeUsageOutbox.objects.all()) == Decimal("2")
    assert sum(r.quantity for r in StripeUsageOutbox.objects.all()) == Decimal("20")
    rollup = DailyUsageRollup.objects.get()
    assert (rollup.quantity, rollup.overage_quantity, rollup.cost) == (120, 20, Decimal("2"))
    assert not ledger_mismatches()


def test_a_decrease_of_a_wallet_share_puts_the_money_back(pro_plan, make_customer):
    customer = make_customer("pro")
    wallet_top_up(customer=customer, amount=Decimal("10"))
    record("a", 100)
    over = record("b", 50)
    assert over.wallet_amount == Decimal("5") and wallet(customer) == Decimal("5")

    correct(over, 0)

    assert wallet(customer) == Decimal("10")
    row = period()
    assert (row.quantity, row.cost, row.wallet_amount) == (100, 0, 0)
    assert not StripeUsageOutbox.objects.exists()
    assert not ledger_mismatches()


def test_a_decrease_gives_overage_back_before_the_wallet(pro_plan, make_customer):
    customer = make_customer("pro")
    wallet_top_up(customer=customer, amount=Decimal("2"))
    record("a", 100)
    over = record("b", 50)  # $5: $2 from the wallet, then $3 of overage
    assert (over.wallet_amount, over.overage_amount) == (Decimal("2"), Decimal("3"))

    correction = correct(over, 30).correction  # 20 units back: $2

    assert (correction.overage_amount, correction.wallet_amount) == (Decimal("-2"), 0)
    assert wallet(customer) == 0
    correction = correct(over, 10, key="fix-2").correction  # 20 more back: $1 of overage, then $1 of wallet

    assert (correction.overage_amount, correction.wallet_amount) == (Decimal("-1"), Decimal("-1"))
    assert wallet(customer) == Decimal("1")
    assert sum(r.amount for r in StripeUsageOutbox.objects.all()) == 0
    assert not ledger_mismatches()


def test_a_decrease_of_credits_goes_back_to_the_grant(make_plan, make_customer):
    make_plan("credits", prices=[DIMENSIONAL_CREDITS])
    customer = make_customer("credits")
    grant, _ = credit_grant_create(customer=customer, amount=Decimal(100))
    run = record("w", 10, meter="workflow_run", properties={"complexity": "simple"})
    grant.refresh_from_db()
    assert grant.remaining == 90

    correction = correct(run, 4).correction

    grant.refresh_from_db()
    assert grant.remaining == 96
    assert correction.credits_amount == -6 and correction.dimension_value == "simple"
    assert CreditLedgerEntry.objects.filter(usage_event=correction, amount=6).exists()
    assert not ledger_mismatches()


def test_credits_of_a_grant_expired_since_go_to_the_wallet(pro_plan, make_customer):
    customer = make_customer("pro")
    grant, _ = credit_grant_create(
        customer=customer, amount=Decimal("3"), expires_at=timezone.now() + timedelta(days=1)
    )
    record("a", 100)
    over = record("b", 50)  # $5: $3 of the grant, $2 of overage
    assert (over.credits_amount, over.overage_amount) == (Decimal("3"), Decimal("2"))
    with time_machine.travel(timezone.now() + timedelta(days=2)):
        credit_grants_expire()
        correction = correct(over, 0).correction

    assert correction.overage_amount == Decimal("-2")
    # The grant cannot take its credits back once voided: its money goes to the wallet, and the split says so.
    assert (correction.credits_amount, correction.wallet_amount) == (0, Decimal("-3"))
    assert wallet(customer) == Decimal("3")
    grant.refresh_from_db()
    assert grant.remaining == 0
    assert not ledger_mismatches()


def test_a_decrease_within_the_allowance_gives_the_allowance_back(pro_plan, make_customer):
    make_customer("pro")
    inside = record("a", 80)

    correction = correct(inside, 50).correction

    assert (correction.quantity, correction.included_quantity, correction.cost) == (-30, -30, 0)
    row = period()
    assert (row.quantity, row.included_quantity) == (50, 50)
    later = record("b", 60)  # the allowance given back is used again: 50 of 100 were left
    assert (later.included_quantity, later.overage_amount) == (50, Decimal("1"))
    assert not ledger_mismatches()


def test_a_decrease_gives_billable_units_back_before_the_allowance(pro_plan, make_customer):
    make_customer("pro")
    both = record("a", 130)  # 100 in the allowance, 30 over: $3

    correction = correct(both, 90).correction  # 40 back: the 30 billable, then 10 of the allowance

    assert (correction.included_quantity, correction.overage_amount) == (-10, Decimal("-3"))
    assert (period().included_quantity, period().cost) == (90, 0)
    assert not ledger_mismatches()


def test_an_increase_is_drawn_like_new_usage(pro_plan, make_customer):
    customer = make_customer("pro")
    wallet_top_up(customer=customer, amount=Decimal("1"))
    under = record("a", 90)

    result = correct(under, 130)  # 40 more: 10 in the allowance, 30 billable ($3): $1 wallet, $2 overage

    correction = result.correction
    assert result.flags == ()
    assert (correction.quantity, correction.included_quantity, correction.cost) == (40, 10, Decimal("3"))
    assert (correction.wallet_amount, correction.overage_amount) == (Decimal("1"), Decimal("2"))
    assert wallet(customer) == 0
    assert sum(r.amount for r in StripeUsageOutbox.objects.all()) == Decimal("2")
    assert not ledger_mismatches()


def test_an_increase_past_the_cap_is_recorded_and_flagged(free_plan, make_customer):
    make_customer("free")
    capped = record("a", 20, meter="ai_action")

    result = correct(capped, 26)

    assert result.correction.quantity == 6
    assert result.flags == (CorrectionFlag.ENTITLEMENT_LIMIT,)
    assert result.correction.correction_flags == "entitlement_limit"
    assert period("ai_action").quantity == 26
    assert not ledger_mismatches()


def test_an_increase_past_the_hard_limit_and_blocked_overage_is_billed_as_overage_and_flagged(
    pro_plan, make_customer
):
    customer = make_customer("pro", hard_limit=Decimal("1.00"), block_overage=True)
    under = record("a", 100)

    result = correct(under, 150)  # $5 the customer's switch would have refused

    assert set(result.flags) == {CorrectionFlag.HARD_LIMIT, CorrectionFlag.OVERAGE_BLOCKED}
    assert result.correction.overage_amount == Decimal("5")
    assert sum(r.amount for r in StripeUsageOutbox.objects.all()) == Decimal("5")
    # The crossing of the hard limit is told as usage's are.
    assert Notification.objects.filter(customer=customer, kind=NotificationKind.HARD_LIMIT_REACHED).exists()
    assert not ledger_mismatches()


def test_credits_nothing_can_pay_for_are_refused_naming_the_credit_grant(make_plan, make_customer):
    make_plan("credits", prices=[DIMENSIONAL_CREDITS])
    customer = make_customer("credits")
    credit_grant_create(customer=customer, amount=Decimal(10))
    run = record("w", 10, meter="workflow_run", properties={"complexity": "simple"})

    with pytest.raises(CorrectionUncovered, match="Grant the customer credits"):
        correct(run, 12)

    assert UsageEvent.objects.count() == 1


def test_credit_packs_let_the_wallet_pay_for_credits_and_take_them_back(make_plan, make_customer):
    make_plan("packs", prices=[DIMENSIONAL_CREDITS], credit_packs=[{"credits": "100", "price": "10.00"}])
    customer = make_customer("packs")
    wallet_top_up(customer=customer, amount=Decimal("5"))
    run = record("w", 20, meter="workflow_run", properties={"complexity": "simple"})  # 20 credits: $2
    assert run.wallet_money == Decimal("2") and wallet(customer) == Decimal("3")

    correction = correct(run, 5).correction

    assert correction.wallet_amount == -15 and correction.wallet_money == Decimal("-1.5")
    assert wallet(customer) == Decimal("4.5")
    correct(run, 60, key="fix-2")  # 55 more credits: $5.50, the wallet's $4.50 then overage
    assert wallet(customer) == 0
    assert not ledger_mismatches()


def test_graduated_tiers_re_rate_the_period_from_the_top(make_plan, make_customer):
    tiers = [{"up_to": "10", "unit_amount": "1.00"}, {"up_to": None, "unit_amount": "0.50"}]
    make_plan("tiers", prices=[{"meter": "render", "model": "graduated", "tiers": tiers}])
    make_customer("tiers")
    first = record("a", 10, meter="render")  # $10 in the first tier
    record("b", 10, meter="render")  # $5 in the second

    correct(first, 0)

    # Ten units in all: the period costs what the plan charges for ten, $10.
    assert (period("render").quantity, period("render").cost) == (10, Decimal("10"))
    assert not ledger_mismatches()


def test_volume_tiers_re_rate_the_period_even_when_fewer_units_cost_more(make_plan, make_customer):
    tiers = [{"up_to": "10", "unit_amount": "1.00"}, {"up_to": None, "unit_amount": "0.50"}]
    make_plan("volume", prices=[{"meter": "render", "model": "volume", "tiers": tiers}])
    make_customer("volume")
    record("a", 8, meter="render")  # $8
    extra = record("b", 4, meter="render")  # 12 units at $0.50: $6, so $2 given back

    correction = correct(extra, 0).correction

    assert correction.cost == Decimal("2")  # 8 units at $1.00 again
    assert (period("render").quantity, period("render").cost) == (8, Decimal("8"))
    assert not ledger_mismatches()


def test_dimensional_price_corrects_at_the_events_own_rate(make_plan, make_customer):
    tokens = {
        "meter": "llm_tokens",
        "model": "dimensional",
        "dimension": "model",
        "rates": {"small": "0.001", "large": "0.01"},
    }
    make_plan("tokens", prices=[tokens])
    make_customer("tokens")
    record("s", 1000, meter="llm_tokens", properties={"model": "small"})
    large = record("l", 1000, meter="llm_tokens", properties={"model": "large"})

    correction = correct(large, 400).correction

    assert (correction.cost, correction.dimension_value) == (Decimal("-6"), "large")
    assert period("llm_tokens").cost == Decimal("5")
    assert not ledger_mismatches()


def test_a_dry_run_answers_the_charges_before_and_after_and_writes_nothing(pro_plan, make_customer):
    make_customer("pro")
    record("a", 100)
    over = record("b", 50)
    tables = (UsageEvent, CreditLedgerEntry, CreditGrant, PeriodUsage, DailyUsageRollup, StripeUsageOutbox)
    counts = [model.objects.count() for model in tables]
    totals = (period().cost, DailyUsageRollup.objects.get().cost)

    result = correct(over, 20, dry_run=True)

    assert result.dry_run and result.correction.pk is None and result.correction.quantity == -30
    assert [line.amount for line in result.before.lines] == [Decimal("20.00"), Decimal("5.00")]
    assert [line.amount for line in result.after.lines] == [Decimal("20.00"), Decimal("2.00")]
    assert (result.before.total, result.after.total) == (Decimal("25.00"), Decimal("22.00"))
    assert [model.objects.count() for model in tables] == counts
    assert (period().cost, DailyUsageRollup.objects.get().cost) == totals
    # The key is still free: the real correction runs.
    assert correct(over, 20).created


def test_a_correction_in_an_ended_period_is_refused_with_the_way_to_a_credit(pro_plan, make_customer):
    customer = make_customer("pro")
    old = record("a", 150)
    with time_machine.travel(customer.subscription.current_period_end + timedelta(hours=1)):
        subscription_roll_period(subscription=customer.subscription)
        with pytest.raises(PeriodClosed, match=r"POST /api/v1/customers/\{id\}/credits"):
            correct(old, 100)
    assert UsageEvent.objects.count() == 1


def test_the_same_correction_sent_again_changes_nothing(pro_plan, make_customer):
    make_customer("pro")
    over = record("b", 150)
    first = correct(over, 120)

    again = correct(over, 120)

    assert not again.created and again.correction.pk == first.correction.pk
    assert again.corrected_quantity == 120
    assert UsageEvent.objects.filter(corrects=over).count() == 1
    with pytest.raises(IdempotencyKeyReused):
        correct(over, 110)
    assert period().quantity == 120


def test_correcting_to_the_quantity_it_has_writes_nothing(pro_plan, make_customer):
    make_customer("pro")
    over = record("b", 150)

    result = correct(over, 150)

    assert result.correction is None and not result.created and result.corrected_quantity == 150
    assert UsageEvent.objects.count() == 1


def test_two_corrections_of_one_event_count_from_each_other(pro_plan, make_customer):
    make_customer("pro")
    over = record("b", 150)
    correct(over, 120, key="one")

    second = correct(over, 130, key="two")

    assert second.correction.quantity == 10 and second.corrected_quantity == 130
    assert period().quantity == 130
    assert not ledger_mismatches()


@pytest.mark.parametrize(
    ("quantity", "param"), [("-1", "quantity"), ("1.0000001", "quantity"), ("NaN", "quantity")]
)
def test_bad_quantities_are_refused(pro_plan, make_customer, quantity, param):
    make_customer("pro")
    over = record("b", 150)
    with pytest.raises(InvalidInput) as refused:
        correct(over, quantity)
    assert refused.value.details["param"] == param


def test_a_correction_needs_a_reason(pro_plan, make_customer):
    make_customer("pro")
    over = record("b", 150)
    with pytest.raises(InvalidInput, match="reason"):
        correct(over, 100, reason="  ")


def test_a_correction_of_a_correction_is_refused(pro_plan, make_customer):
    make_customer("pro")
    over = record("b", 150)
    correction = correct(over, 120).correction
    with pytest.raises(InvalidInput, match=f"correct that event|event {over.pk}"):
        usage_event_correct(
            event_id=correction.pk, quantity=Decimal(0), reason="x", idempotency_key="k", by="test"
        )


def test_a_cache_hit_is_corrected_without_charge(pro_plan, make_customer):
    make_customer("pro")
    hit = record("c", 5, properties={"cached": True})

    correction = correct(hit, 2).correction

    assert (correction.billable, correction.quantity, correction.cost) == (False, -3, 0)
    assert period().non_billable_quantity == 2
    assert not ledger_mismatches()


def test_ledger_check_finds_an_event_corrected_below_zero(pro_plan, make_customer):
    make_customer("pro")
    over = record("b", 150)
    # Written past the service, as a bug or a hand-written query could.
    UsageEvent.objects.create(
        customer=over.customer,
        meter=over.meter,
        idempotency_key="by-hand",
        quantity=Decimal(-151),
        timestamp=over.timestamp,
        received_at=over.received_at,
        period_start=over.period_start,
        corrects=over,
    )

    found = [str(mismatch) for mismatch in correction_mismatches()]

    assert found == [f"event {over.pk} with its corrections: counts -1.000000, must count at least 0"]


def test_the_usage_page_lists_corrections_with_their_reason(client, pro_plan, make_customer):
    from customers.models import Member, MemberRole
    from tests.customers.factories import UserFactory

    make_customer("pro")
    mine = record("m", 150, user="maya")
    theirs = record("r", 10, user="raj")
    correct(mine, 120, key="one", reason="retries were counted twice")
    correct(theirs, 12, key="two", reason="a late export")
    correct(theirs, 12, key="three", reason="nothing to change", dry_run=True)
    Member.objects.filter(external_id="maya").update(user=UserFactory(username="maya"), role=MemberRole.ADMIN)

    client.force_login(Member.objects.get(external_id="maya").user)
    page = client.get("/settings/usage").content.decode()

    assert 'id="corrections-list"' in page
    assert "30 units removed, −$3.00. Reason: retries were counted twice" in page
    assert "2 units added, +$0.20. Reason: a late export" in page
    assert "nothing to change" not in page  # a dry run tells no one
    # Customers' words in their notifications, never emailed.
    assert Notification.objects.filter(kind=NotificationKind.USAGE_CORRECTED).count() == 2


def test_a_correction_notice_names_a_meter_called_usage_once(pro_plan, make_customer):
    make_customer("pro")
    event = record("m", 150)
    Meter.objects.filter(pk=event.meter_id).update(name="LLM usage")

    correct(event, 120, key="one", reason="retries were counted twice")

    [notice] = Notification.objects.filter(kind=NotificationKind.USAGE_CORRECTED)
    assert notice.message.startswith(
        f"LLM usage of {event.timestamp:%b} {event.timestamp.day} corrected: 30 units"
    )


def test_an_increase_past_the_customers_own_meter_limit_is_recorded_and_flagged(pro_plan, make_customer):
    from customers.services import spend_controls_update

    customer = make_customer("pro")
    spend_controls_update(
        customer=customer,
        soft_limit=None,
        hard_limit=None,
        block_overage=False,
        meter_limits={"api_call": Decimal(120)},
    )
    under = record("a", 110)

    result = correct(under, 130)

    assert result.flags == (CorrectionFlag.METER_LIMIT,)
    assert period().quantity == 130
    assert not ledger_mismatches()
