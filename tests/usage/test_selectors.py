"""The reads behind /settings/usage and the usage API, on exact numbers written straight to the rollups.

The clock stands at Saturday 2025-03-15 12:00 UTC; the subscription's period is March (31 days), so
14 whole days are behind, 16.5 days ahead.
"""

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext

from core.errors import InvalidInput
from customers.models import MemberRole
from plans.models import BillingInterval, Entitlement, PriceModel, PricingUnit
from tests.customers.factories import MemberFactory, SpendControlsFactory, SubscriptionFactory
from tests.plans.factories import (
    CreditPackFactory,
    DimensionRateFactory,
    MeterFactory,
    PlanVersionFactory,
    PriceFactory,
)
from tests.usage.factories import (
    CreditGrantFactory,
    CreditLedgerEntryFactory,
    CustomerBalanceFactory,
    DailyUsageRollupFactory,
    NotificationFactory,
    PeriodUsageFactory,
)
from usage.api.serializers import UsageSummaryOutput
from usage.models import LedgerEntryKind, PeriodUsage, Reservation, ReservationStatus
from usage.selectors import (
    PROJECTION_DECAY,
    NoBillingPeriod,
    PeriodNotFound,
    UsageLevel,
    format_quantity,
    format_quantity_short,
    usage_daily_series,
    usage_member_breakdown,
    usage_notifications,
    usage_period_summary,
    usage_periods,
    usage_top_actions,
    usage_wallet,
)

NOW = datetime(2025, 3, 15, 12, tzinfo=UTC)
MARCH = datetime(2025, 3, 1, tzinfo=UTC)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def frozen():
    with time_machine.travel(NOW, tick=False):
        yield NOW


@pytest.fixture
def version():
    """$20 a month; AI actions: 100 included, then $0.10 each."""
    version = PlanVersionFactory(base_fee=Decimal("20"))
    meter = MeterFactory(key="ai_action", name="AI actions", unit="action")
    PriceFactory(
        plan_version=version, meter=meter, unit_amount=Decimal("0.10"), included_quantity=Decimal(100)
    )
    return version


@pytest.fixture
def customer(version):
    return SubscriptionFactory(plan_version=version, billing_anchor=MARCH).customer


def record(customer, meter_key, per_day, *, rate="0.10", included=100, cached=0, action="", member=None):
    """Write what ingest would have: daily rollups (``per_day`` maps a day of March to units) and the
    period total. ``cached`` units of the period were cache hits (in the rollups, not billed)."""
    meter = MeterFactory(key=meter_key)
    period = customer.subscription
    row, _ = PeriodUsage.objects.get_or_create(
        customer=customer,
        meter=meter,
        period_start=period.current_period_start,
        defaults={"period_end": period.current_period_end},
    )
    used = row.quantity
    for day, quantity in sorted(per_day.items()):
        quantity = Decimal(quantity)
        past = max(used + quantity - included, Decimal(0)) - max(used - included, Decimal(0))
        DailyUsageRollupFactory(
            customer=customer,
            meter=meter,
            member=member,
            action=action,
            day=date(2025, 3, day),
            quantity=quantity,
            billable_quantity=past,
            cost=past * Decimal(rate),
        )
        used += quantity
    row.quantity = used - cached
    row.non_billable_quantity += cached
    row.cost = max(row.quantity - included, Decimal(0)) * Decimal(rate)
    row.overage_amount = row.cost
    row.save()
    return row


def steady_march(customer, per_day=10, today=5):
    """``per_day`` units on each whole day so far (March 1-14), ``today`` units today."""
    return record(customer, "ai_action", {**{day: per_day for day in range(1, 15)}, 15: today})


# --- The summary ---------------------------------------------------------------------------------


def test_summary_shows_the_period_so_far_per_meter(customer):
    steady_march(customer)

    summary = usage_period_summary(customer=customer)

    (line,) = summary.meters
    assert (line.key, line.unit, line.unit_plural) == ("ai_action", "action", "actions")
    assert line.quantity == 145
    assert line.included == 100
    assert line.percent_of_included == 145
    assert line.bar_percent == 100
    assert line.level == UsageLevel.OVER
    assert line.cost == Decimal("4.5")
    assert summary.period.start == MARCH
    assert summary.period.is_current
    assert summary.days_in_period == 31
    assert summary.days_remaining == Decimal("16.5")


def test_steady_usage_projects_the_same_daily_rate_over_the_days_left(customer):
    steady_march(customer)

    summary = usage_period_summary(customer=customer)

    # 145 so far + 10 a day × 16.5 days = 310 actions; 210 past the 100 included at $0.10.
    (line,) = summary.meters
    assert line.projected_quantity == 310
    assert line.projected_cost == Decimal("21")
    assert summary.projection.usage_spend == Decimal("21")
    assert summary.projection.total == Decimal("41")
    assert summary.projection.daily_rate_window_days == 7
    assert "16.5 days left" in summary.projection.method
    assert "yesterday counts most" in summary.projection.method


def test_the_rate_weighs_recent_days_more(customer):
    record(customer, "ai_action", {14: 100})  # only yesterday

    summary = usage_period_summary(customer=customer)

    weights = [PROJECTION_DECAY**age for age in range(7)]
    rate = Decimal(100) * weights[0] / sum(weights)
    assert summary.meters[0].projected_quantity == 100 + (rate * Decimal("16.5")).quantize(
        Decimal("0.000001")
    )


def test_a_quiet_week_after_a_busy_one_projects_low(customer):
    record(customer, "ai_action", {day: 100 for day in range(1, 8)})  # busy, then nothing for a week

    summary = usage_period_summary(customer=customer)

    assert summary.meters[0].projected_quantity == 700


def test_cache_hits_are_recorded_but_not_projected_as_billable(customer):
    # 10 units a day recorded, a quarter of the period's units were cache hits.
    record(customer, "ai_action", {day: 10 for day in range(1, 15)}, cached=35)

    line = usage_period_summary(customer=customer).meters[0]

    assert line.quantity == 105
    assert line.non_billable_quantity == 35
    assert line.projected_quantity == 105 + Decimal("7.5") * Decimal("16.5")


def _new_customer(version, *, age: timedelta, used: int):
    customer = SubscriptionFactory(plan_version=version, billing_anchor=NOW - age).customer
    row = PeriodUsageFactory(customer=customer, meter=MeterFactory(key="ai_action"), quantity=Decimal(used))
    DailyUsageRollupFactory(customer=customer, meter=row.meter, day=NOW.date(), quantity=Decimal(used))
    return customer


def test_in_the_first_minutes_there_is_no_projection_only_usage_so_far(version):
    # 150 calls in 25 seconds once read "on track for 18,150".
    customer = _new_customer(version, age=timedelta(seconds=25), used=150)

    summary = usage_period_summary(customer=customer)

    assert not summary.projection.available
    assert summary.meters[0].projected_quantity == 150
    assert summary.projection.usage_spend == summary.spend.spend
    assert "No projection yet" in summary.projection.method


def test_a_projection_starts_once_the_period_is_a_day_old(version):
    customer = _new_customer(version, age=timedelta(hours=23, minutes=59), used=20)
    assert not usage_period_summary(customer=customer).projection.available

    customer = _new_customer(version, age=timedelta(days=1, hours=6), used=20)
    summary = usage_period_summary(customer=customer)

    # 20 over 1.25 days is 16 a day, for the 29.75 days to April 15, 06:00 minus a day.
    assert summary.projection.available
    assert summary.projection.daily_rate_window_days == 0
    assert summary.meters[0].projected_quantity == 20 + 16 * summary.days_remaining


def test_on_the_last_day_the_projection_adds_what_is_left_of_it(customer):
    record(customer, "ai_action", {day: 10 for day in range(1, 31)})

    with time_machine.travel(datetime(2025, 3, 31, 18, tzinfo=UTC), tick=False):
        summary = usage_period_summary(customer=customer)

    # Ten a day, for the quarter of a day left.
    assert summary.days_remaining == Decimal("0.25")
    assert summary.projection.available
    assert summary.meters[0].projected_quantity == summary.meters[0].quantity + Decimal("2.5")


def test_a_projection_never_passes_a_cap(customer, version):
    Entitlement.objects.create(plan_version=version, feature="ai_action", enabled=True, limit=Decimal(150))
    steady_march(customer)  # 145 so far, 10 a day: 310 at this rate

    line = usage_period_summary(customer=customer).meters[0]

    assert line.quantity == 145
    assert line.projected_quantity == 150


def test_a_dimensional_price_projects_at_the_average_rate_billed_so_far(customer, version):
    tokens = MeterFactory(key="llm_tokens", unit="token")
    price = PriceFactory(
        plan_version=version, meter=tokens, model=PriceModel.DIMENSIONAL, unit_amount=None, dimension="model"
    )
    DimensionRateFactory(price=price, value="small", unit_amount=Decimal("0.01"))
    DimensionRateFactory(price=price, value="large", unit_amount=Decimal("0.03"))
    row = record(customer, "llm_tokens", {day: 10 for day in range(1, 15)}, included=0, rate="0.02")

    line = next(line for line in usage_period_summary(customer=customer).meters if line.key == "llm_tokens")

    assert row.cost == Decimal("2.8")
    assert line.projected_cost == Decimal("2.8") + 165 * Decimal("0.02")


def test_an_ended_period_shows_its_final_numbers(customer):
    february = datetime(2025, 2, 1, tzinfo=UTC)
    PeriodUsageFactory(
        customer=customer,
        meter=MeterFactory(key="ai_action"),
        period_start=february,
        period_end=MARCH,
        quantity=Decimal(250),
        cost=Decimal(15),
    )

    summary = usage_period_summary(customer=customer, period_start="2025-02-01")

    assert not summary.period.is_current
    assert summary.days_remaining == 0
    assert summary.meters[0].projected_quantity == 250
    assert summary.projection.total == Decimal(35)
    assert summary.runways == ()
    assert "ended" in summary.projection.method


def test_periods_list_the_current_one_then_earlier_ones_with_usage(customer):
    PeriodUsageFactory(
        customer=customer,
        meter=MeterFactory(key="ai_action"),
        period_start=datetime(2025, 2, 1, tzinfo=UTC),
        period_end=MARCH,
    )

    periods = usage_periods(customer=customer)

    assert [(p.key, p.is_current) for p in periods] == [("2025-03-01", True), ("2025-02-01", False)]
    assert periods[0].label == "Mar 1 – Mar 31, 2025 (current)"


def test_a_period_is_named_by_its_start_date(customer):
    with pytest.raises(PeriodNotFound):
        usage_period_summary(customer=customer, period_start="2025-01-01")
    with pytest.raises(InvalidInput):
        usage_period_summary(customer=customer, period_start="last month")
    assert usage_period_summary(customer=customer, period_start="").period.start == MARCH
    assert usage_period_summary(customer=customer, period_start=date(2025, 3, 1)).period.start == MARCH


def test_a_customer_without_subscription_or_usage_has_no_period():
    from tests.customers.factories import CustomerFactory

    with pytest.raises(NoBillingPeriod):
        usage_period_summary(customer=CustomerFactory())


@pytest.mark.parametrize(
    ("soft", "hard", "level"),
    [
        (None, None, UsageLevel.OK),
        ("5", None, UsageLevel.OK),
        ("4", None, UsageLevel.WARN),
        ("4", "4.5", UsageLevel.OVER),
    ],
)
def test_spend_is_compared_with_the_limits(customer, soft, hard, level):
    steady_march(customer)  # $4.50 of usage charges
    SpendControlsFactory(
        customer=customer,
        soft_limit=Decimal(soft) if soft else None,
        hard_limit=Decimal(hard) if hard else None,
    )

    spend = usage_period_summary(customer=customer).spend

    assert spend.spend == Decimal("4.5")
    assert spend.level == level


def test_reservations_in_flight_count_as_held(customer):
    steady_march(customer)
    Reservation.objects.create(
        customer=customer,
        meter=MeterFactory(key="ai_action"),
        idempotency_key="r1",
        quantity=Decimal(10),
        unit="usd",
        held_cost=Decimal("1.25"),
        status=ReservationStatus.HELD,
        expires_at=NOW + timedelta(minutes=5),
        created_at=NOW,
    )

    spend = usage_period_summary(customer=customer).spend

    assert spend.held == Decimal("1.25")


def test_the_day_a_hard_limit_will_stop_usage_is_projected(customer):
    steady_march(customer)  # $4.50 so far, $1 a day from here
    SpendControlsFactory(customer=customer, hard_limit=Decimal(10))

    projection = usage_period_summary(customer=customer).projection

    assert projection.hard_limit_reached_on == date(2025, 3, 21)


def test_a_hard_limit_caps_the_projection_where_usage_will_be_refused(customer):
    steady_march(customer)  # $4.50 so far, $21 projected
    SpendControlsFactory(customer=customer, hard_limit=Decimal(10))

    projection = usage_period_summary(customer=customer).projection

    assert projection.limited_by == "hard_limit"
    assert projection.usage_spend == 10
    assert projection.total == 30


def test_past_the_hard_limit_nothing_more_is_projected(customer):
    steady_march(customer)
    SpendControlsFactory(customer=customer, hard_limit=Decimal(4))

    projection = usage_period_summary(customer=customer).projection

    assert projection.usage_spend == Decimal("4.5")
    assert projection.hard_limit_reached_on is None


def test_blocked_overage_projects_only_what_prepaid_money_covers(customer):
    steady_march(customer)
    SpendControlsFactory(customer=customer, block_overage=True)
    CustomerBalanceFactory(customer=customer, wallet_balance=Decimal(3))

    projection = usage_period_summary(customer=customer).projection

    assert projection.limited_by == "block_overage"
    assert projection.usage_spend == Decimal("7.5")
    assert projection.billed == Decimal("24.5")  # base fee + the $4.50 of overage already billed


def test_credits_run_out_on_the_day_the_projected_rate_uses_them_up(make_credits_customer):
    customer = make_credits_customer(grant=100)

    summary = usage_period_summary(customer=customer)

    (runway,) = summary.runways
    assert runway.source == "credits"
    assert runway.remaining == 100
    assert runway.daily_burn == 10
    assert runway.runs_out_on == date(2025, 3, 25)
    assert summary.credits_remaining == 100


def test_credits_that_expire_first_run_out_sooner(make_credits_customer):
    customer = make_credits_customer(grant=100, expires_at=NOW + timedelta(days=3))

    (runway,) = usage_period_summary(customer=customer).runways

    assert runway.runs_out_on == date(2025, 3, 18)


def test_prepaid_money_is_drawn_after_grants_and_reduces_the_invoice(customer):
    steady_march(customer)  # $4.50 of overage so far, $1 a day from here
    CustomerBalanceFactory(customer=customer, wallet_balance=Decimal("5.5"))
    CreditGrantFactory(customer=customer, unit="usd", amount=Decimal(2))

    summary = usage_period_summary(customer=customer)

    (runway,) = summary.runways
    assert (runway.source, runway.remaining, runway.daily_burn) == ("prepaid", Decimal("7.5"), 1)
    assert runway.runs_out_on == date(2025, 3, 23)  # $7.50 at $1 a day from March 15, noon
    # Base $20 + $4.50 so far + the $16.50 still to come less the $7.50 prepaid.
    assert summary.projection.billed == Decimal("33.5")
    assert summary.projection.total == Decimal("41")


@pytest.fixture
def make_credits_customer():
    """Workflow runs at 1 credit each, nothing included; 10 runs a day so far."""

    def make(*, grant, expires_at=None):
        version = PlanVersionFactory()
        runs = MeterFactory(key="workflow_run", unit="run")
        PriceFactory(
            plan_version=version, meter=runs, pricing_unit=PricingUnit.CREDITS, unit_amount=Decimal(1)
        )
        CreditPackFactory(plan_version=version)
        customer = SubscriptionFactory(plan_version=version, billing_anchor=MARCH).customer
        record(customer, "workflow_run", {day: 10 for day in range(1, 15)}, rate="1", included=0)
        CreditGrantFactory(customer=customer, amount=Decimal(grant), expires_at=expires_at)
        return customer

    return make


def test_the_summary_as_the_api_serializes_it_has_decimals_as_strings(customer):
    steady_march(customer)

    data = UsageSummaryOutput(usage_period_summary(customer=customer)).data

    assert json.loads(json.dumps(data)) == data  # plain JSON types only
    assert data["projection"]["total"] == "41.00"  # money: the currency's minor-unit places
    assert data["meters"][0]["quantity"] == "145"
    assert data["meters"][0]["cost"] == "4.50"
    assert data["meters"][0]["percent_of_included"] == 145
    assert data["period"] == {
        "start": "2025-03-01T00:00:00+00:00",
        "end": "2025-04-01T00:00:00+00:00",
        "is_current": True,
        "key": "2025-03-01",
    }
    assert data["spend"]["level"] == "ok"

    def no_floats(value):
        if isinstance(value, dict):
            return all(no_floats(v) for v in value.values())
        if isinstance(value, list):
            return all(no_floats(v) for v in value)
        return not isinstance(value, float)

    assert no_floats(data)


# --- The daily series ---------------------------------------------------------------------------


def test_the_daily_series_covers_the_period_to_today_with_zeros(customer):
    record(customer, "ai_action", {2: 30, 5: 50, 15: 7})

    series = usage_daily_series(customer=customer)

    (meter,) = series.meters
    assert (series.first_day, series.last_day) == (date(2025, 3, 1), date(2025, 3, 15))
    assert len(meter.points) == 15
    assert [p.quantity for p in meter.points[:5]] == [0, 30, 0, 0, 50]
    assert meter.points[-1].cumulative == 87
    assert meter.points[4].beyond_included == 0
    assert meter.included == 100


def test_a_yearly_period_charts_the_last_31_days(version):
    version.interval = BillingInterval.YEAR
    version.save()
    customer = SubscriptionFactory(
        plan_version=version, billing_anchor=datetime(2025, 1, 1, tzinfo=UTC)
    ).customer
    meter = MeterFactory(key="ai_action")
    PeriodUsageFactory(customer=customer, meter=meter, quantity=Decimal(40))
    DailyUsageRollupFactory(customer=customer, meter=meter, day=date(2025, 1, 10), quantity=Decimal(30))
    DailyUsageRollupFactory(customer=customer, meter=meter, day=date(2025, 3, 1), quantity=Decimal(10))

    series = usage_daily_series(customer=customer)

    assert (series.first_day, series.last_day) == (date(2025, 2, 13), date(2025, 3, 15))
    # Cumulative counts from the period start, days before the window included.
    assert series.meters[0].points[0].cumulative == 30
    assert series.meters[0].points[-1].cumulative == 40


# --- Top actions and members --------------------------------------------------------------------


def test_top_actions_rank_what_drives_usage_with_shares(customer):
    record(customer, "ai_action", {1: 60}, action="generate_report", included=0)
    record(customer, "ai_action", {2: 30}, action="summarize", included=0)
    record(customer, "ai_action", {3: 10}, action="", included=0)

    lines = usage_top_actions(customer=customer)

    assert [(line.label, line.quantity, line.share_percent) for line in lines] == [
        ("generate_report", 60, 60),
        ("summarize", 30, 30),
        ("(no action given)", 10, 10),
    ]
    assert lines[0].cost_display == "$6.00"
    assert lines[0].quantity_display == "60 actions"
    assert len(usage_top_actions(customer=customer, limit=2)) == 2


def test_members_breakdown_for_an_admin_and_for_one_member(customer):
    raj = MemberFactory(customer=customer, name="Raj")
    maya = MemberFactory(customer=customer, name="Maya", role=MemberRole.ADMIN)
    record(customer, "ai_action", {1: 75}, member=raj, included=0)
    record(customer, "ai_action", {1: 20}, member=maya, included=0)
    record(customer, "ai_action", {1: 5}, included=0)

    everyone = usage_member_breakdown(customer=customer)
    only_maya = usage_member_breakdown(customer=customer, only_member=maya)

    assert [(line.label, line.share_percent) for line in everyone] == [
        ("Raj", 75),
        ("Maya", 20),
        ("Not attributed to a user", 5),
    ]
    assert [(line.label, line.share_percent) for line in only_maya] == [("Maya", 20)]


# --- Wallet and notifications -------------------------------------------------------------------


def test_wallet_shows_balance_grants_and_recent_entries(customer):
    CustomerBalanceFactory(customer=customer, wallet_balance=Decimal("42.50"))
    active = CreditGrantFactory(customer=customer, amount=Decimal(500), remaining=Decimal(120))
    CreditGrantFactory(
        customer=customer,
        amount=Decimal(50),
        expired_at=NOW - timedelta(days=2),
        expires_at=NOW - timedelta(days=2),
    )
    CreditGrantFactory(
        customer=customer,
        amount=Decimal(50),
        expired_at=NOW - timedelta(days=90),
        expires_at=NOW - timedelta(days=90),
    )
    CreditLedgerEntryFactory(customer=customer, kind=LedgerEntryKind.TOPUP, amount=Decimal(50))
    for _ in range(12):
        CreditLedgerEntryFactory(
            customer=customer, grant=active, kind=LedgerEntryKind.DRAWDOWN, amount=Decimal(-1), unit="credits"
        )

    wallet = usage_wallet(customer=customer)

    assert wallet.balance_display == "$42.50"
    assert [(g.remaining, g.expired) for g in wallet.grants] == [(120, False), (0, True)]
    assert len(wallet.recent) == 10
    # Each row is listed once: the top-up under top-ups, never again among what usage took.
    assert {entry.label for entry in wallet.recent} == {"Credits used"}
    assert [entry.label for entry in wallet.top_ups] == ["Wallet top-up"]
    assert wallet.top_ups[0].amount_display == "+$50.00"


def test_notifications_list_unread_first(customer):
    read = NotificationFactory(customer=customer, message="old", read_at=NOW)
    with time_machine.travel(NOW - timedelta(days=1), tick=False):
        older_unread = NotificationFactory(customer=customer, message="older unread")
    newer_unread = NotificationFactory(customer=customer, message="newer unread")

    notifications = usage_notifications(customer=customer)

    assert notifications.unread_count == 2
    assert [n.id for n in notifications.items] == [newer_unread.pk, older_unread.pk, read.pk]


# --- Cost of a read -----------------------------------------------------------------------------


def test_reads_never_touch_the_event_ledger(customer):
    steady_march(customer)
    with CaptureQueriesContext(connection) as queries:
        usage_period_summary(customer=customer)
        usage_daily_series(customer=customer)
        usage_top_actions(customer=customer)
        usage_member_breakdown(customer=customer)
        usage_wallet(customer=customer)
        usage_notifications(customer=customer)

    assert not [q["sql"] for q in queries.captured_queries if "usage_usageevent" in q["sql"]]


def test_the_number_of_queries_does_not_grow_with_usage(customer):
    def count():
        with CaptureQueriesContext(connection) as queries:
            usage_period_summary(customer=customer)
            usage_daily_series(customer=customer)
            usage_top_actions(customer=customer)
        return len(queries.captured_queries)

    steady_march(customer)
    few = count()
    for n in range(20):
        record(customer, "ai_action", {day: 3 for day in range(1, 15)}, action=f"action_{n}")

    assert count() == few


@pytest.mark.parametrize(
    ("value", "exact", "short"),
    [
        (Decimal("1234567.500000"), "1,234,567.5", "1.2M"),
        (Decimal("1000.000000"), "1,000", "1K"),
        (Decimal("950"), "950", "950"),
        (Decimal("0.250000"), "0.25", "0.25"),
        (Decimal("178583405"), "178,583,405", "178.5M"),
    ],
)
def test_quantities_read_exactly_or_compactly(value, exact, short):
    assert format_quantity(value) == exact
    assert format_quantity_short(value) == short
