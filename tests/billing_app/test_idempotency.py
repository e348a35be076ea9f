"""The Idempotency-Key header: a retry of a write is answered what the first try was, and runs nothing."""

import json
from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.utils import timezone
from rest_framework.test import APIClient

from billing_app.idempotency import idempotency_keys_prune
from billing_app.models import ApiKey, IdempotencyKey
from billing_app.tasks import idempotency_keys_prune_task
from customers.models import Customer, Subscription
from tests.usage.test_concurrency import run_concurrently
from usage.api import customer_views
from usage.ledger_audit import ledger_mismatches
from usage.models import CreditGrant, CreditLedgerEntry, CustomerBalance, Reservation, UsageEvent
from usage.services import reservation_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def acme(pro_plan, make_plan, make_customer):
    make_plan("team", prices=[{"meter": "api_call", "model": "per_unit", "unit_amount": "0.05"}])
    return make_customer("pro")


@pytest.fixture
def held(acme):
    reservation, _ = reservation_create(
        customer=acme,
        meter=acme.subscription.plan_version.prices.get().meter,
        quantity=Decimal(5),
        idempotency_key="held",
    )
    return reservation


def world() -> dict:
    """Everything a write of these endpoints could change."""
    return {
        "customers": Customer.objects.count(),
        "subscriptions": list(Subscription.objects.values_list("plan_version_id", "current_period_start")),
        "grants": CreditGrant.objects.count(),
        "ledger": CreditLedgerEntry.objects.count(),
        "wallets": list(CustomerBalance.objects.values_list("wallet_balance", flat=True)),
        "reservations": sorted(Reservation.objects.values_list("status", flat=True)),
        "events": UsageEvent.objects.count(),
    }


def wallet() -> Decimal:
    balance = CustomerBalance.objects.first()
    return balance.wallet_balance if balance else Decimal(0)


def client_of(raw_key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client


def post(api, path, body=None, *, key="k1"):
    return api.post(path, body, format="json", HTTP_IDEMPOTENCY_KEY=key)


WRITES = {
    "customer": ("/api/v1/customers", {"external_id": "globex", "name": "Globex", "plan": "pro"}),
    "subscription change": ("/api/v1/customers/acme/subscription", {"plan": "team"}),
    "credit grant": ("/api/v1/customers/acme/credits", {"amount": "5"}),
    "wallet top-up": ("/api/v1/customers/acme/wallet/top-ups", {"amount": "10.00"}),
    "reservation": (
        "/api/v1/reservations",
        {"customer": "acme", "meter": "api_call", "quantity": 2, "idempotency_key": "k1"},
    ),
    "commit": ("/api/v1/reservations/{held}/commit", {"quantity": 3}),
    "release": ("/api/v1/reservations/{held}/release", None),
    "events": (
        "/api/v1/events",
        {"events": [{"idempotency_key": "e1", "customer": "acme", "meter": "api_call"}]},
    ),
}


@pytest.mark.parametrize("write", WRITES.values(), ids=WRITES.keys())
def test_a_retry_is_answered_the_first_response_and_changes_nothing(api, held, write):
    path, body = write
    path = path.format(held=held.pk)
    first = post(api, path, body)
    assert first.status_code in (200, 201), first.json()
    after_first = world()

    retry = post(api, path, body)

    assert (retry.status_code, retry.content) == (first.status_code, first.content)
    assert retry["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first
    assert retry["Request-Id"] != first["Request-Id"]
    assert world() == after_first
    assert not ledger_mismatches()


@pytest.mark.parametrize("write", WRITES.values(), ids=WRITES.keys())
def test_the_same_key_with_another_request_is_refused_and_changes_nothing(api, held, write):
    path, body = write
    path = path.format(held=held.pk)
    post(api, path, body)
    before = world()

    other = post(api, "/api/v1/customers/acme/wallet/top-ups", {"amount": "1.00"})

    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert other.json()["error"]["request_id"] == other["Request-Id"]
    assert world() == before


def test_a_different_body_under_the_same_key_is_refused(api, acme):
    post(api, "/api/v1/customers/acme/wallet/top-ups", {"amount": "10.00"})
    other = post(api, "/api/v1/customers/acme/wallet/top-ups", {"amount": "20.00"})
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert "(POST /api/v1/customers/acme/wallet/top-ups, another body)" in other.json()["error"]["message"]
    assert wallet() == 10


def test_a_key_reused_on_another_path_names_the_request_it_answered(api, acme):
    post(api, "/api/v1/customers/acme/wallet/top-ups", {"amount": "10.00"})
    other = post(api, "/api/v1/customers/acme/wallet/top-ups?dry_run=true", {"amount": "10.00"})
    assert other.status_code == 409
    message = other.json()["error"]["message"]
    assert "different request (POST /api/v1/customers/acme/wallet/top-ups);" in message
    assert "another body" not in message


def test_the_same_body_written_differently_is_the_same_request(api, acme):
    api.post(
        "/api/v1/customers/acme/wallet/top-ups",
        '{"amount": 10.00, "note": "May"}',
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="k1",
    )
    same = api.post(
        "/api/v1/customers/acme/wallet/top-ups",
        '{ "note" : "May", "amount": 10 }',
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="k1",
    )
    assert same.status_code == 201
    assert same["Idempotent-Replayed"] == "true"
    assert wallet() == 10


def test_keys_belong_to_the_api_key_that_sent_them(api, acme):
    post(api, "/api/v1/customers/acme/wallet/top-ups", {"amount": "10.00"})
    _, other_key = ApiKey.generate(name="another backend")
    response = post(client_of(other_key), "/api/v1/customers/acme/wallet/top-ups", {"amount": "10.00"})

    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response
    assert wallet() == 20


def test_a_body_key_that_differs_from_the_header_is_refused(api, acme):
    body = {"customer": "acme", "meter": "api_call", "idempotency_key": "r1"}
    response = post(api, "/api/v1/reservations", body, key="r2")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "idempotency_key_mismatch"
    assert not Reservation.objects.exists()
    assert not IdempotencyKey.objects.exists()


def test_a_body_key_equal_to_the_header_is_fine(api, acme):
    body = {"amount": "5", "idempotency_key": "g1"}
    assert post(api, "/api/v1/customers/acme/credits", body, key="g1").status_code == 201
    assert post(api, "/api/v1/customers/acme/credits", body, key="g1")["Idempotent-Replayed"] == "true"
    assert CreditGrant.objects.count() == 1


@pytest.mark.parametrize("key", ["", "   ", "k" * 256])
def test_a_key_that_cannot_be_stored_is_refused(api, acme, key):
    response = post(api, "/api/v1/customers/acme/wallet/top-ups", {"amount": "1.00"}, key=key)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "Idempotency-Key"
    assert wallet() == 0


def test_a_refusal_is_stored_and_replayed_without_running_again(api, acme):
    refused = post(api, "/api/v1/reservations/00000000-0000-0000-0000-000000000000/commit", {"quantity": 1})
    assert refused.status_code == 404
    again = post(api, "/api/v1/reservations/00000000-0000-0000-0000-000000000000/commit", {"quantity": 1})
    assert (again.status_code, again.content) == (404, refused.content)
    assert again["Idempotent-Replayed"] == "true"


def test_a_refused_write_keeps_its_key_but_none_of_its_changes(api, acme, monkeypatch):
    """An error answer undoes the write (the member a reservation made, say) but keeps the answer."""
    body = {"customer": "acme", "meter": "api_call", "quantity": 0, "idempotency_key": "k1", "user": "ann"}
    refused = post(api, "/api/v1/reservations", body)
    assert refused.status_code == 400
    assert IdempotencyKey.objects.get().status_code == 400
    assert not acme.members.exists()


def test_a_crash_stores_no_key_so_the_retry_runs(api, acme, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the response could not be built")

    with monkeypatch.context() as patch:
        patch.setattr(customer_views.WalletTopUpOutput, "to_representation", broken)
        api.raise_request_exception = False
        crashed = post(api, "/api/v1/customers/acme/wallet/top-ups", {"amount": "10.00"})
    assert crashed.status_code == 500
    assert not IdempotencyKey.objects.exists()
    assert wallet() == 0

    retry = post(api, "/api/v1/customers/acme/wallet/top-ups", {"amount": "10.00"})
    assert retry.status_code == 201
    assert "Idempotent-Replayed" not in retry
    assert wallet() == 10


def test_a_request_refused_before_it_ran_stores_no_key(acme):
    stranger = APIClient()
    stranger.credentials(HTTP_AUTHORIZATION="Bearer sk_live_not_a_key")
    response = post(stranger, "/api/v1/customers/acme/wallet/top-ups", {"amount": "10.00"})
    assert response.status_code == 401
    assert not IdempotencyKey.objects.exists()


def test_writes_without_the_header_run_every_time(api, acme):
    for _ in range(2):
        api.post("/api/v1/customers/acme/wallet/top-ups", {"amount": "10.00"}, format="json")
    assert wallet() == 20
    assert not IdempotencyKey.objects.exists()


def test_keys_are_kept_for_the_retention_period_then_pruned(api, acme, settings):
    settings.IDEMPOTENCY_KEY_RETENTION_DAYS = 30
    post(api, "/api/v1/customers/acme/wallet/top-ups", {"amount": "10.00"}, key="old")
    with time_machine.travel(timezone.now() + timedelta(days=20)):
        post(api, "/api/v1/customers/acme/wallet/top-ups", {"amount": "10.00"}, key="recent")
    with time_machine.travel(timezone.now() + timedelta(days=30, hours=1)):
        assert (
            post(api, "/api/v1/customers/acme/wallet/top-ups", {"amount": "10.00"}, key="old")[
                "Idempotent-Replayed"
            ]
            == "true"
        )
        assert idempotency_keys_prune() == 1
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["recent"]


def test_the_stored_answer_is_the_body_sent(api, acme):
    response = post(api, "/api/v1/customers/acme/wallet/top-ups", {"amount": "10.00"})
    stored = IdempotencyKey.objects.get()
    assert json.loads(stored.response_body) == response.json()
    assert (stored.method, stored.path, stored.status_code) == (
        "POST",
        "/api/v1/customers/acme/wallet/top-ups",
        201,
    )


# --- concurrent retries: real threads, each with its own connection -------------------------------


@pytest.fixture
def api_key_in_use(api_key):
    """A key used a moment ago: authentication writes nothing, so the key's row lock serializes nothing."""
    ApiKey.objects.update(last_used_at=timezone.now())
    return api_key


@pytest.mark.django_db(transaction=True)
def test_twenty_identical_top_ups_with_one_key_credit_once(api_key_in_use, acme):
    """Without the key's lock the twenty would all find no answer, all top up one after another under the
    customer's lock, and nineteen would then fail on the key's unique constraint with a 500."""

    def top_up(_):
        return post(
            client_of(api_key_in_use),
            "/api/v1/customers/acme/wallet/top-ups",
            {"amount": "10.00"},
            key="once",
        )

    responses = run_concurrently(20, top_up)

    assert [r.status_code for r in responses] == [201] * 20
    assert len({r.content for r in responses}) == 1
    assert sum(r.has_header("Idempotent-Replayed") for r in responses) == 19
    assert wallet() == Decimal("10.00")
    assert CreditLedgerEntry.objects.count() == 1
    assert not ledger_mismatches()


@pytest.mark.django_db(transaction=True)
def test_twenty_commits_of_different_quantities_under_one_key_record_one(api_key_in_use, held):
    def commit(index):
        return post(
            client_of(api_key_in_use),
            f"/api/v1/reservations/{held.pk}/commit",
            {"quantity": str(Decimal(index + 1) / 4)},
            key="c",
        )

    responses = run_concurrently(20, commit)

    committed = [r for r in responses if r.status_code == 200]
    assert len(committed) == 1
    assert {r.json()["error"]["code"] for r in responses if r.status_code != 200} == {
        "idempotency_key_reused"
    }
    event = UsageEvent.objects.get()
    assert event.quantity == Decimal(committed[0].json()["committed_quantity"])
    assert not ledger_mismatches()


@pytest.mark.django_db(transaction=True)
def test_twenty_commits_of_different_quantities_without_a_key_record_one(api_key_in_use, held):
    """The reservation is its own key: the customer's lock lets one commit; the others find it committed."""

    def commit(index):
        return client_of(api_key_in_use).post(
            f"/api/v1/reservations/{held.pk}/commit", {"quantity": str(Decimal(index + 1) / 4)}, format="json"
        )

    responses = run_concurrently(20, commit)

    assert [r.status_code for r in responses] == [200] * 20
    assert len({r.json()["event"]["id"] for r in responses}) == 1
    event = UsageEvent.objects.get()
    assert Reservation.objects.get().committed_quantity == event.quantity
    assert not ledger_mismatches()


def test_the_daily_job_prunes_old_keys(api, acme):
    post(api, "/api/v1/customers/acme/wallet/top-ups", {"amount": "10.00"})
    with time_machine.travel(timezone.now() + timedelta(days=31)):
        assert idempotency_keys_prune_task.delay().get() == 1
    assert not IdempotencyKey.objects.exists()
