"""Reserve, commit and release over the API; checks and estimates."""

from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.utils import timezone

from usage.consumption import ConsumptionEngine
from usage.ledger_audit import ledger_mismatches
from usage.models import CreditGrant, CustomerBalance, PeriodUsage, Reservation, ReservationStatus, UsageEvent
from usage.services import credit_grant_create, reservations_expire, wallet_top_up

pytestmark = pytest.mark.django_db


@pytest.fixture
def tokens_customer(make_plan, make_customer):
    """Pay-as-you-go tokens at $0.00001 each (gpt-4o), prepaid with a $1 wallet and block-overage on."""
    make_plan(
        "tokens",
        prices=[
            {
                "meter": "llm_tokens",
                "model": "dimensional",
                "dimension": "model",
                "rates": {"gpt-4o": "0.00001"},
            }
        ],
    )
    customer = make_customer("tokens", block_overage=True)
    wallet_top_up(customer=customer, amount=Decimal("1.00"))
    return customer


def reserve(api, quantity, key="r1", **extra):
    body = {
        "customer": "acme",
        "meter": "llm_tokens",
        "quantity": quantity,
        "idempotency_key": key,
        "properties": {"model": "gpt-4o"},
        **extra,
    }
    return api.post("/api/v1/reservations", body, format="json")


def available_wallet(customer) -> Decimal:
    """The wallet balance less what active holds keep, as the next request would see it."""
    engine = ConsumptionEngine(
        customer=customer,
        balance=CustomerBalance.objects.get(customer=customer),
        subscription=customer.subscription,
        now=timezone.now(),
    )
    return engine.wallet_available()


def test_reservation_holds_what_the_work_may_cost(api, tokens_customer):
    response = reserve(api, 4000)
    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "held"
    assert body["held"] == {"cost": "0.04", "credits": "0", "wallet": "0.04", "overage": "0"}
    assert available_wallet(tokens_customer) == Decimal("0.96")


def test_decimal_properties_are_held_and_carried_to_the_event(api, tokens_customer):
    body = (
        '{"customer": "acme", "meter": "llm_tokens", "quantity": 100, "idempotency_key": "f",'
        ' "properties": {"model": "gpt-4o", "temperature": 0.2}}'
    )
    response = api.post("/api/v1/reservations", body, content_type="application/json")
    assert response.status_code == 201
    commit = api.post(f"/api/v1/reservations/{response.json()['id']}/commit", {"quantity": 50}, format="json")
    assert commit.status_code == 200
    assert UsageEvent.objects.get().properties == {"model": "gpt-4o", "temperature": 0.2}


def test_commit_with_less_refunds_the_difference(api, tokens_customer):
    reservation_id = reserve(api, 4000).json()["id"]
    response = api.post(f"/api/v1/reservations/{reservation_id}/commit", {"quantity": 800}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "committed"
    assert body["released"] == "3200"
    assert body["event"]["cost"] == "0.008"
    assert body["event"]["covered_by"]["wallet"] == "0.008"
    assert available_wallet(tokens_customer) == Decimal("0.992")
    assert not ledger_mismatches()


def test_commit_and_release_are_idempotent(api, tokens_customer):
    reservation_id = reserve(api, 1000).json()["id"]
    first = api.post(f"/api/v1/reservations/{reservation_id}/commit", {"quantity": 10}, format="json").json()
    again = api.post(f"/api/v1/reservations/{reservation_id}/commit", {"quantity": 10}, format="json").json()
    assert first["event"]["id"] == again["event"]["id"]
    assert UsageEvent.objects.count() == 1

    other = reserve(api, 1000, key="r2").json()["id"]
    assert api.post(f"/api/v1/reservations/{other}/release").json()["status"] == "released"
    assert api.post(f"/api/v1/reservations/{other}/release").json()["status"] == "released"


def test_release_restores_what_was_held(api, tokens_customer):
    reservation_id = reserve(api, 50_000).json()["id"]
    assert available_wallet(tokens_customer) == Decimal("0.50")
    api.post(f"/api/v1/reservations/{reservation_id}/release")
    assert available_wallet(tokens_customer) == Decimal("1.00")


def test_same_idempotency_key_returns_the_first_reservation(api, tokens_customer):
    first = reserve(api, 1000)
    second = reserve(api, 5000)
    assert first.status_code == 201 and second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    assert second.json()["quantity"] == "1000"
    assert Reservation.objects.count() == 1


def test_holds_expire_and_stop_counting(api, tokens_customer):
    reservation_id = reserve(api, 90_000, ttl_seconds=60).json()["id"]
    assert reserve(api, 20_000, key="blocked").json()["error"]["code"] == "insufficient_balance"
    with time_machine.travel(timezone.now() + timedelta(seconds=61)):
        assert reserve(api, 20_000, key="after-expiry").status_code == 201
        assert reservations_expire() == 1
        late = api.post(f"/api/v1/reservations/{reservation_id}/commit", {"quantity": 1}, format="json")
    assert late.status_code == 409
    assert late.json()["error"]["code"] == "reservation_not_held"


def test_reservation_over_the_balance_is_refused_with_402(api, tokens_customer):
    response = reserve(api, 200_000)
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "insufficient_balance"
    assert not Reservation.objects.exists()


def test_commit_more_than_held_is_refused(api, tokens_customer):
    reservation_id = reserve(api, 100).json()["id"]
    response = api.post(f"/api/v1/reservations/{reservation_id}/commit", {"quantity": 101}, format="json")
    assert response.status_code == 400
    assert Reservation.objects.get().status == ReservationStatus.HELD


def test_commit_after_release_is_a_conflict(api, tokens_customer):
    reservation_id = reserve(api, 100).json()["id"]
    api.post(f"/api/v1/reservations/{reservation_id}/release")
    response = api.post(f"/api/v1/reservations/{reservation_id}/commit", {"quantity": 1}, format="json")
    assert response.status_code == 409


def test_unknown_reservation_is_404(api, tokens_customer):
    response = api.post("/api/v1/reservations/7b0c6bb8-0000-4000-8000-000000000000/release")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert api.post("/api/v1/reservations/not-a-uuid/release").status_code == 404


def test_check_answers_each_refusal_code(api, free_plan, make_customer):
    make_customer("free")

    def check(quantity, **properties):
        body = {"customer": "acme", "meter": "ai_action", "quantity": quantity, "properties": properties}
        return api.post("/api/v1/check", body, format="json").json()

    assert check(20) == {"allowed": True, "code": None, "message": None, "remaining": "20"}
    assert check(21)["code"] == "entitlement_limit_reached"
    assert check(1, feature="premium_models")["code"] == "not_entitled"


def test_estimate_previews_cost_and_coverage(api, pro_plan, make_customer):
    customer = make_customer("pro")
    credit_grant_create(customer=customer, amount=Decimal("2"))
    body = {"customer": "acme", "meter": "api_call", "quantity": 150}
    estimate = api.post("/api/v1/estimate", body, format="json").json()
    assert estimate["amount"] == "5"
    assert estimate["currency"] == "usd"
    assert estimate["covered_by"] == {"included": "100", "credits": "2", "wallet": "0", "overage": "3"}
    assert CreditGrant.objects.get().remaining == 2  # nothing was held or drawn


def test_check_for_unknown_customer_is_404(api, pro_plan):
    response = api.post("/api/v1/check", {"customer": "ghost", "meter": "api_call"}, format="json")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_usage_recorded_beside_a_hold_is_billed_once_past_the_allowance(api, pro_plan, make_customer):
    """100 calls included: a hold of 50, 60 calls sent directly, then the hold commits 50 → 10 over, not 20."""
    make_customer("pro")
    held = api.post(
        "/api/v1/reservations",
        {"customer": "acme", "meter": "api_call", "quantity": 50, "idempotency_key": "job"},
        format="json",
    ).json()
    api.post(
        "/api/v1/events",
        {"idempotency_key": "direct", "customer": "acme", "meter": "api_call", "quantity": 60},
        format="json",
    )
    api.post(f"/api/v1/reservations/{held['id']}/commit", {"quantity": 50}, format="json")

    period = PeriodUsage.objects.get()
    assert period.quantity == 110
    assert period.included_quantity == 100
    assert period.cost == Decimal("1.00")  # 10 calls × $0.10
    assert not ledger_mismatches()
