"""Sequences through the public API that once gave wrong amounts, each with the amount written down first.

Named by the rule they prove. The ledger is checked after every sequence: each balance equals its rows.
"""

from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.utils import timezone

from customers.models import Subscription
from customers.services import spend_controls_update, subscription_start
from plans.catalog.importing import catalog_import
from plans.catalog.parse import CatalogInvalid
from plans.models import Aggregation
from plans.services import meter_upsert
from usage.ledger_audit import ledger_mismatches
from usage.models import (
    CreditGrant,
    CustomerBalance,
    DailyUsageRollup,
    PeriodUsage,
    StripeUsageOutbox,
    UsageEvent,
)
from usage.selectors.periods import usage_periods
from usage.selectors.series import usage_daily_series
from usage.services import credit_grant_create, credit_grants_expire, wallet_top_up

pytestmark = pytest.mark.django_db

# Volume: up to 10 units at $1.00 each; past 10, every unit at $0.50. Crossing 10 makes the period cheaper.
VOLUME = {
    "meter": "render",
    "model": "volume",
    "tiers": [{"up_to": "10", "unit_amount": "1.00"}, {"up_to": None, "unit_amount": "0.50"}],
}
PER_UNIT = {"meter": "export", "model": "per_unit", "unit_amount": "1.00"}


def send(api, key: str, meter: str, quantity: str, **properties) -> dict:
    body = {"idempotency_key": key, "customer": "acme", "meter": meter, "quantity": quantity}
    if properties:
        body["properties"] = properties
    response = api.post("/api/v1/events", body, format="json")
    assert response.status_code == 200, response.content
    return response.json()["results"][0]


def reserve(api, key: str, meter: str, quantity: str, ttl_seconds: int = 300, **properties):
    body = {
        "idempotency_key": key,
        "customer": "acme",
        "meter": meter,
        "quantity": quantity,
        "ttl_seconds": ttl_seconds,
    }
    if properties:
        body["properties"] = properties
    return api.post("/api/v1/reservations", body, format="json")


def wallet(customer) -> Decimal:
    return CustomerBalance.objects.get(customer=customer).wallet_balance


@pytest.fixture
def volume_customer(make_plan, make_customer):
    make_plan("volume", prices=[VOLUME, PER_UNIT])
    return make_customer("volume")


@pytest.fixture(autouse=True)
def ledger_stays_consistent():
    yield
    assert ledger_mismatches() == []


def test_a_negative_hold_is_never_wallet_headroom(api, volume_customer):
    spend_controls_update(customer=volume_customer, soft_limit=None, hard_limit=None, block_overage=True)
    wallet_top_up(customer=volume_customer, amount=Decimal("11.00"))
    assert send(api, "e1", "render", "9")["status"] == "accepted"  # $9.00 from the wallet: $2.00 left
    hold = reserve(api, "r1", "render", "2")  # 11 units cost $5.50: this hold is worth -$3.50
    assert hold.status_code == 201, hold.content

    result = send(api, "e2", "export", "3")  # $3.00 with $2.00 left and overage blocked

    assert (result["status"], result["code"]) == ("refused", "insufficient_balance")
    assert wallet(volume_customer) == Decimal("2.00")


def test_a_negative_hold_never_lowers_spend_under_the_hard_limit(api, volume_customer):
    spend_controls_update(
        customer=volume_customer, soft_limit=None, hard_limit=Decimal("12"), block_overage=False
    )
    assert send(api, "e1", "render", "10")["status"] == "accepted"  # $10.00 spent
    assert reserve(api, "r1", "render", "2").status_code == 201  # worth -$4.00 if committed

    result = send(api, "e2", "export", "3")  # $13.00 > $12.00

    assert (result["status"], result["code"]) == ("refused", "hard_limit_reached")
    assert not UsageEvent.objects.filter(customer=volume_customer, meter__key="export").exists()


def test_a_volume_give_back_returns_to_where_the_cost_came_from(api, volume_customer):
    credit_grant_create(customer=volume_customer, amount=Decimal("7"), unit="usd", kind="promotional")
    wallet_top_up(customer=volume_customer, amount=Decimal("2.00"))
    for index in range(10):  # $10.00: $7.00 from the grant, $2.00 from the wallet, $1.00 overage
        assert send(api, f"e{index}", "render", "1")["status"] == "accepted"
    row = PeriodUsage.objects.get(customer=volume_customer, meter__key="render")
    assert (row.credits_amount, row.wallet_amount, row.overage_amount) == (Decimal(7), Decimal(2), Decimal(1))

    # The 11th unit makes the period $5.50 instead of $10.00: $4.50 goes back where it came from, overage
    # first ($1.00), then the wallet ($2.00), then the grant ($1.50); none of the promotion becomes cash.
    assert send(api, "e10", "render", "1")["status"] == "accepted"

    row.refresh_from_db()
    assert row.cost == Decimal("5.50")
    assert (row.overage_amount, row.wallet_amount, row.credits_amount) == (
        Decimal(0),
        Decimal(0),
        Decimal("5.50"),
    )
    assert wallet(volume_customer) == Decimal("2.00")
    assert CreditGrant.objects.get(customer=volume_customer).remaining == Decimal("1.50")


def test_credits_paid_from_the_wallet_never_overdraw_it(api, make_plan, make_customer):
    """A pack of 3 credits for $7.00: one credit is $2.333…, a rate no decimal holds exactly."""
    make_plan(
        "packs",
        prices=[{"meter": "ai_action", "model": "per_unit", "unit": "credits", "unit_amount": "1"}],
        credit_packs=[{"credits": "3", "price": "7.00"}],
    )
    customer = make_customer("packs")
    wallet_top_up(customer=customer, amount=Decimal("0.01"))

    # The wallet pays what its cent buys, rounded down (0.004285714285 credits); the rest is overage.
    result = send(api, "e1", "ai_action", "1")

    assert result["status"] == "accepted"
    assert Decimal(0) <= wallet(customer) < Decimal("0.00000001")
    event = UsageEvent.objects.get(customer=customer)
    assert (event.wallet_amount, event.overage_amount) == (
        Decimal("0.004285714285"),
        Decimal("0.995714285715"),
    )


def test_credits_cost_the_same_money_however_they_are_split(api, make_plan, make_customer):
    make_plan(
        "packs",
        prices=[{"meter": "ai_action", "model": "per_unit", "unit": "credits", "unit_amount": "1"}],
        credit_packs=[{"credits": "3", "price": "7.00"}],
    )
    one_at_a_time = make_customer("packs", "acme", block_overage=True)
    wallet_top_up(customer=one_at_a_time, amount=Decimal("7.00"))
    for index in range(3):
        assert send(api, f"e{index}", "ai_action", "1")["status"] == "accepted"

    assert wallet(one_at_a_time) == Decimal("0")  # not 0.000000000001


def test_a_monetary_grant_pays_for_credit_priced_usage_at_the_pack_rate(api, make_plan, make_customer):
    make_plan(
        "packs",
        prices=[{"meter": "ai_action", "model": "per_unit", "unit": "credits", "unit_amount": "2"}],
        credit_packs=[{"credits": "100", "price": "5.00"}],  # $0.05 a credit
    )
    customer = make_customer("packs", block_overage=True)
    credit_grant_create(customer=customer, amount=Decimal("1.00"), unit="usd", kind="promotional")

    result = send(api, "e1", "ai_action", "10")  # 20 credits: $1.00 of the grant

    assert result["status"] == "accepted", result
    assert CreditGrant.objects.get(customer=customer).remaining == Decimal(0)
    event = UsageEvent.objects.get(customer=customer)
    assert (event.credits_amount, event.overage_amount) == (Decimal(20), Decimal(0))
    assert (event.money_grant_credits, event.money_grant_amount) == (Decimal(20), Decimal("1.00"))


@pytest.mark.parametrize("unit", ["eur", "gold", "CREDIT"])
def test_a_grant_in_a_unit_nothing_can_draw_is_refused(api, volume_customer, unit):
    response = api.post(
        "/api/v1/customers/acme/credits", {"amount": "5", "unit": unit, "kind": "promotional"}, format="json"
    )

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "unit"
    assert not CreditGrant.objects.exists()


def test_cached_work_holds_nothing(api, make_customer, free_plan):
    make_customer("free")
    held = reserve(api, "r1", "ai_action", "20", cached=True)
    assert held.status_code == 201, held.content

    # The plan's 20 actions are all still there: the cached hold counts toward nothing.
    for index in range(20):
        assert send(api, f"e{index}", "ai_action", "1")["status"] == "accepted"
    assert send(api, "e20", "ai_action", "1")["code"] == "entitlement_limit_reached"


def test_subscribing_again_to_the_version_in_force_changes_nothing(api, pro_plan, make_customer):
    customer = make_customer("pro")
    before = Subscription.objects.get(customer=customer)
    assert send(api, "e1", "api_call", "100")["status"] == "accepted"  # the whole allowance

    again = subscription_start(customer=customer, plan_version=pro_plan)

    assert (again.current_period_start, again.current_period_end) == (
        before.current_period_start,
        before.current_period_end,
    )
    assert send(api, "e2", "api_call", "10")["status"] == "accepted"
    assert UsageEvent.objects.get(idempotency_key="e2").included_quantity == Decimal(0)  # no second allowance


def test_period_totals_are_sums_of_the_stored_event_amounts(api, make_plan, make_customer):
    """A rate finer than the ledger's 12 places: each event's cost is rounded once, where it is stored."""
    make_plan("fine", prices=[{"meter": "token", "model": "per_unit", "unit_amount": "0.000000000007"}])
    customer = make_customer("fine")
    for index in range(3):  # half a token: $0.0000000000035 each, a place finer than stored
        assert send(api, f"e{index}", "token", "0.5")["status"] == "accepted"

    events = UsageEvent.objects.filter(customer=customer)
    row = PeriodUsage.objects.get(customer=customer)
    assert row.cost == sum(event.cost for event in events)
    assert row.overage_amount == sum(event.overage_amount for event in events)


def test_a_change_to_a_yearly_plan_mid_day_keeps_each_periods_usage_in_its_own_rollup(
    api, pro_plan, make_plan, make_customer
):
    make_plan(
        "yearly",
        interval="year",
        prices=[{"meter": "api_call", "model": "per_unit", "unit_amount": "0.05", "included": "500"}],
    )
    customer = make_customer("pro")
    assert send(api, "e1", "api_call", "7")["status"] == "accepted"
    old_period = Subscription.objects.get(customer=customer).current_period_start

    # Another interval cannot keep the period: the yearly plan opens its own, the same day.
    assert (
        api.post("/api/v1/customers/acme/subscription", {"plan": "yearly"}, format="json").status_code == 200
    )
    assert send(api, "e2", "api_call", "5")["status"] == "accepted"

    new_period = Subscription.objects.get(customer=customer).current_period_start
    assert new_period != old_period
    by_period = {
        rollup.period_start: rollup.quantity for rollup in DailyUsageRollup.objects.filter(customer=customer)
    }
    assert by_period == {old_period: Decimal(7), new_period: Decimal(5)}


def test_a_plan_change_keeps_the_period_and_prorates_the_new_allowance(
    api, pro_plan, make_plan, make_customer
):
    """Pro: $20 a month, 100 calls included, then $0.10. Bigger: $50, 500 included, then $0.05. The change
    comes halfway."""
    make_plan(
        "bigger",
        base_fee="50.00",
        prices=[{"meter": "api_call", "model": "per_unit", "unit_amount": "0.05", "included": "500"}],
    )
    customer = make_customer("pro")
    subscription = Subscription.objects.get(customer=customer)
    start, end = subscription.current_period_start, subscription.current_period_end
    assert send(api, "e1", "api_call", "60")["status"] == "accepted"  # 60 of Pro's 100 included

    with time_machine.travel(start + (end - start) / 2, tick=False):
        assert (
            api.post("/api/v1/customers/acme/subscription", {"plan": "bigger"}, format="json").status_code
            == 200
        )
        # The allowance is now 60 used + half of 500 = 310: 250 more free, then $0.05 a call.
        assert send(api, "e2", "api_call", "300")["status"] == "accepted"
        usage = api.get("/api/v1/customers/acme/usage").json()

    subscription.refresh_from_db()
    assert (subscription.current_period_start, subscription.current_period_end) == (start, end)
    event = UsageEvent.objects.get(idempotency_key="e2")
    assert (event.included_quantity, event.cost) == (Decimal(250), Decimal("2.50"))
    [line] = usage["meters"]
    assert (Decimal(line["quantity"]), Decimal(line["included"])) == (Decimal(360), Decimal(310))
    assert Decimal(usage["base_fee"]) == Decimal("35.00")  # half of $20, half of $50
    with time_machine.travel(start + (end - start) / 2, tick=False):  # the chart draws the same allowance
        [chart] = usage_daily_series(customer=customer).meters
    assert chart.included == Decimal(310)
    assert [period.start for period in usage_periods(customer=customer)] == [start]  # one period


def commit(api, reservation_id: str, quantity: str):
    return api.post(f"/api/v1/reservations/{reservation_id}/commit", {"quantity": quantity}, format="json")


def test_a_hold_keeps_the_allowance_it_pinned(api, pro_plan, make_customer):
    """Pro: 100 calls included, then $0.10. Overage blocked, a hard limit of $0.50 and $0.50 in the wallet."""
    customer = make_customer("pro", hard_limit=Decimal("0.50"), block_overage=True)
    wallet_top_up(customer=customer, amount=Decimal("0.50"))
    assert send(api, "e1", "api_call", "95")["status"] == "accepted"
    hold = reserve(api, "r1", "api_call", "10")  # 5 included, 5 at $0.10 from the wallet
    assert hold.status_code == 201, hold.content

    # The 5 calls left in the allowance are the hold's: this event would pay $0.50 for its 5, past the limit.
    result = send(api, "e2", "api_call", "5")
    assert (result["status"], result["code"]) == ("refused", "hard_limit_reached")

    assert commit(api, hold.json()["id"], "10").status_code == 200
    row = PeriodUsage.objects.get(customer=customer)
    assert (row.quantity, row.included_quantity, row.cost) == (Decimal(105), Decimal(100), Decimal("0.50"))
    assert (row.wallet_amount, row.overage_amount) == (Decimal("0.50"), Decimal(0))
    assert wallet(customer) == Decimal(0)
    assert not StripeUsageOutbox.objects.exists()


def test_a_grant_expiring_under_an_open_hold_still_pays_for_it(api, credits_plan, make_customer):
    customer = make_customer("credits", block_overage=True)
    now = timezone.now()
    credit_grant_create(customer=customer, amount=Decimal("5"), expires_at=now + timedelta(minutes=10))
    hold = reserve(api, "r1", "workflow_run", "1", ttl_seconds=3600, complexity="standard")  # 5 credits
    assert hold.status_code == 201, hold.content

    with time_machine.travel(now + timedelta(minutes=11)):
        assert credit_grants_expire() == 0  # the hold pinned its credits: expiry waits
        response = api.post(
            f"/api/v1/reservations/{hold.json()['id']}/commit", {"quantity": "1"}, format="json"
        )
        assert response.status_code == 200, response.content
        event = UsageEvent.objects.get(customer=customer)
        assert (event.credits_amount, event.overage_amount) == (Decimal(5), Decimal(0))
        assert credit_grants_expire() == 1  # settled: now the grant expires, with nothing left in it


def test_a_hold_commits_at_the_prices_it_was_quoted_under(api, make_plan, make_customer):
    make_plan("payg", prices=[{"meter": "api_call", "model": "per_unit", "unit_amount": "0.10"}])
    make_plan("exports", prices=[PER_UNIT])
    customer = make_customer("payg")
    hold = reserve(api, "r1", "api_call", "10")  # $1.00 of overage
    assert hold.status_code == 201, hold.content
    assert (
        api.post("/api/v1/customers/acme/subscription", {"plan": "exports"}, format="json").status_code == 200
    )

    assert commit(api, hold.json()["id"], "6").status_code == 200

    event = UsageEvent.objects.get(customer=customer)
    assert (event.cost, event.included_quantity, event.overage_amount) == (
        Decimal("0.60"),
        0,
        Decimal("0.60"),
    )


def test_a_count_meter_bills_events_not_quantities(api, make_plan, make_customer):
    """The issue's table: quantities 5, 9, 3, 7 at $1 a unit. A count meter bills 4 events: $4, not $24."""
    make_plan("counted", prices=[{"meter": "request", "model": "per_unit", "unit_amount": "1.00"}])
    meter_upsert(key="request", name="Requests", unit="request", aggregation=Aggregation.COUNT)
    customer = make_customer("counted")
    for index, quantity in enumerate(["5", "9", "3", "7"]):
        assert send(api, f"e{index}", "request", quantity)["status"] == "accepted"
    assert send(api, "e0", "request", "5")["status"] == "duplicate"  # a replay counts nothing
    assert send(api, "hit", "request", "2", cached=True)["status"] == "accepted"  # a cache hit neither

    row = PeriodUsage.objects.get(customer=customer)
    assert (row.quantity, row.non_billable_quantity, row.cost) == (Decimal(4), Decimal(1), Decimal(4))
    usage = api.get("/api/v1/customers/acme/usage").json()
    assert [(m["key"], Decimal(m["quantity"])) for m in usage["meters"]] == [("request", Decimal(4))]


@pytest.mark.parametrize("aggregation", ["max", "unique", "latest"])
def test_an_aggregation_the_engine_cannot_bill_is_refused_by_the_catalog(aggregation):
    catalog = {
        "meters": [
            {
                "key": "seats",
                "name": "Seats",
                "unit": "seat",
                "aggregation": aggregation,
                "unique_property": "u",
            }
        ],
        "plans": [],
    }
    with pytest.raises(CatalogInvalid, match=f"'{aggregation}' meters are not billed yet"):
        catalog_import(data=catalog)


def test_usage_after_a_cancellation_is_refused(api, pro_plan, make_customer):
    customer = make_customer("pro")
    hold = reserve(api, "r1", "api_call", "3")
    Subscription.objects.filter(customer=customer).update(status="canceled")

    result = send(api, "e1", "api_call", "1")
    assert (result["status"], result["code"]) == ("refused", "subscription_canceled")
    assert reserve(api, "r2", "api_call", "1").json()["error"]["code"] == "subscription_canceled"
    # Work a hold allowed before the cancellation is still recorded: it was decided then.
    assert commit(api, hold.json()["id"], "3").status_code == 200
    assert UsageEvent.objects.filter(customer=customer).count() == 1


def test_a_give_back_owed_to_a_voided_grant_goes_to_the_wallet_and_the_split_says_so(api, volume_customer):
    now = timezone.now()
    credit_grant_create(
        customer=volume_customer, amount=Decimal("7"), unit="usd", expires_at=now + timedelta(hours=1)
    )
    wallet_top_up(customer=volume_customer, amount=Decimal("2.00"))
    for index in range(10):  # $10.00: $7.00 from the grant, $2.00 from the wallet, $1.00 overage
        assert send(api, f"e{index}", "render", "1")["status"] == "accepted"

    with time_machine.travel(now + timedelta(hours=2)):
        assert credit_grants_expire() == 1  # voided: it can take nothing back
        assert send(api, "e10", "render", "1")["status"] == "accepted"  # $4.50 back

    event = UsageEvent.objects.get(idempotency_key="e10")
    assert (event.overage_amount, event.wallet_amount, event.credits_amount) == (
        Decimal(-1),
        Decimal("-3.50"),
        Decimal(0),
    )
    assert wallet(volume_customer) == Decimal("3.50")  # the ledger fixture proves the rows agree
