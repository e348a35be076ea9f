"""Each resource of the synchronous client against the live app, and the errors it raises."""

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
from live_app import events_of, keys_of

from billing_client import (
    AuthenticationError,
    Client,
    HardLimitReached,
    InsufficientBalance,
    InvalidBatch,
    InvalidRequestError,
    LimitReached,
    NotFound,
    UsageRefused,
)
from customers.models import Customer
from customers.services import spend_controls_update
from usage.models import CreditGrant, CustomerBalance


def test_a_customer_is_created_on_a_plan_and_retrieved(client: Client, pro_plan: Any) -> None:
    created = client.customers.create(
        external_id="globex", name="Globex", email="billing@globex.example", plan="pro"
    )

    assert created["external_id"] == "globex"
    assert created["subscription"] is not None and created["subscription"]["plan"] == "pro"
    assert Customer.objects.get(external_id="globex").name == "Globex"
    retrieved = client.customers.retrieve("globex")
    assert retrieved == created


def test_creating_a_customer_again_with_its_key_replays_the_first_answer(
    client: Client, pro_plan: Any
) -> None:
    first = client.customers.create(external_id="initech", name="Initech", idempotency_key="create-initech")
    again = client.customers.create(external_id="initech", name="Initech", idempotency_key="create-initech")

    assert again == first
    assert Customer.objects.filter(external_id="initech").count() == 1


def test_an_unknown_customer_raises_not_found_with_the_request_id(client: Client, live_server: Any) -> None:
    with pytest.raises(NotFound) as raised:
        client.customers.retrieve("nobody")

    assert raised.value.code == "not_found"
    assert raised.value.http_status == 404
    assert raised.value.request_id and raised.value.request_id == raised.value.headers["request-id"]
    assert raised.value.request_id in str(raised.value)


def test_an_invalid_field_raises_naming_the_field(client: Client, live_server: Any) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        client.customers.create(external_id="a/b", name="Slash")

    assert raised.value.code == "invalid_request"
    assert list(raised.value.fields) == ["external_id"]


def test_an_amount_out_of_range_raises_with_the_param(client: Client, acme: Customer) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        client.wallet.top_up("acme", amount="1000000000000")

    assert raised.value.code == "out_of_range"
    assert raised.value.param == "amount"


def test_a_wrong_api_key_raises_authentication_error(base_url: str) -> None:
    with Client(api_key="sk_test_wrong", base_url=base_url) as billing, pytest.raises(AuthenticationError):
        billing.customers.retrieve("acme")


def test_an_event_sent_again_is_recorded_once(client: Client, acme: Customer) -> None:
    event = {
        "customer": "acme",
        "meter": "api_call",
        "quantity": 3,
        "idempotency_key": "evt-1",
        "user": "raj",
        "properties": {"action": "x"},
        "timestamp": datetime.now(UTC),
    }
    first = client.events.create(**event)
    again = client.events.create(**event)
    (in_a_batch,) = client.events.create_batch([event])  # type: ignore[list-item]

    assert first["status"] == "accepted" and first["id"] is not None
    assert again == first  # the same request under the same key: its first answer
    assert (in_a_batch["status"], in_a_batch["id"]) == ("duplicate", first["id"])
    (recorded,) = events_of("acme")
    assert recorded.quantity == Decimal(3)
    assert recorded.properties == {"action": "x"}
    assert recorded.member is not None and recorded.member.external_id == "raj"


def test_a_batch_is_recorded_in_order_with_a_result_each(client: Client, acme: Customer) -> None:
    results = client.events.create_batch(
        [
            {"customer": "acme", "meter": "api_call", "idempotency_key": f"b-{n}", "quantity": n + 1}
            for n in range(5)
        ]
    )

    assert [result["status"] for result in results] == ["accepted"] * 5
    assert keys_of("acme") == [f"b-{n}" for n in range(5)]


def test_an_invalid_batch_raises_with_each_fault_and_records_nothing(client: Client, acme: Customer) -> None:
    with pytest.raises(InvalidBatch) as raised:
        client.events.create_batch(
            [
                {"customer": "acme", "meter": "api_call"},
                {"customer": "acme", "meter": "no_such_meter"},
            ]
        )

    assert [fault["index"] for fault in raised.value.events] == [1]
    assert events_of("acme") == []


def test_a_refused_event_raises_its_refusal_and_records_nothing(client: Client, acme: Customer) -> None:
    spend_controls_update(customer=acme, soft_limit=None, hard_limit=Decimal("1"), block_overage=False)
    client.events.create(customer="acme", meter="api_call", quantity=100)  # the included calls cost nothing

    with pytest.raises(HardLimitReached) as raised:
        client.events.create(customer="acme", meter="api_call", quantity=20)  # $2 of overage

    assert isinstance(raised.value, LimitReached) and isinstance(raised.value, UsageRefused)
    assert raised.value.code == "hard_limit_reached"
    assert len(events_of("acme")) == 1


def test_a_float_quantity_is_refused_before_anything_is_sent(client: Client, acme: Customer) -> None:
    with pytest.raises(TypeError, match="float"):
        client.events.create(customer="acme", meter="api_call", quantity=0.1)

    assert events_of("acme") == []


def test_check_and_estimate_answer_without_holding_anything(client: Client, acme: Customer) -> None:
    check = client.check(customer="acme", meter="api_call", quantity=150)
    estimate = client.estimate(customer="acme", meter="api_call", quantity=150)

    assert check == {"allowed": True, "code": None, "message": None, "remaining": None}
    assert estimate["allowed"] is True
    assert Decimal(estimate["amount"] or "0") == Decimal("5.00")  # 50 calls past the 100 included
    assert Decimal(estimate["covered_by"]["included"]) == Decimal(100)
    assert estimate["currency"] == "usd"


def test_a_check_that_is_refused_names_the_code(
    client: Client, credits_plan: Any, make_customer: Any, live_server: Any
) -> None:
    make_customer("credits", external_id="prepaid")

    check = client.check(customer="prepaid", meter="workflow_run", properties={"complexity": "simple"})

    assert check["allowed"] is False
    assert check["code"] == "insufficient_balance"


def test_usage_reads_the_customers_period(client: Client, acme: Customer) -> None:
    client.events.create(customer="acme", meter="api_call", quantity=120)

    usage = client.usage("acme")

    assert usage["customer_id"] == "acme"
    (meter,) = usage["meters"]
    assert meter["key"] == "api_call"
    assert Decimal(meter["quantity"]) == Decimal(120)
    assert usage["spend"]["spend"] == "2.00"


def test_credits_are_granted_once_per_key(client: Client, acme: Customer) -> None:
    grant = client.credits.grant("acme", amount="25.50", kind="promotional", idempotency_key="promo-1")
    again = client.credits.grant("acme", amount="25.50", kind="promotional", idempotency_key="promo-1")

    assert again == grant
    assert grant["kind"] == "promotional"
    assert Decimal(grant["amount"]) == Decimal("25.50")
    assert CreditGrant.objects.filter(customer=acme).count() == 1


def test_the_wallet_is_topped_up(client: Client, acme: Customer) -> None:
    top_up = client.wallet.top_up("acme", amount=Decimal("40.00"), note="prepaid")

    assert top_up == {"wallet_balance": "40.00", "currency": "usd"}
    assert CustomerBalance.objects.get(customer=acme).wallet_balance == Decimal("40.00")


def test_a_reservation_refused_for_balance_raises_insufficient_balance(
    client: Client, credits_plan: Any, make_customer: Any, live_server: Any
) -> None:
    make_customer("credits", external_id="prepaid")

    with pytest.raises(InsufficientBalance):
        client.reservations.create(
            customer="prepaid", meter="workflow_run", quantity=1, properties={"complexity": "complex"}
        )


def test_the_client_sends_its_user_agent_and_reads_the_key_from_the_environment(
    base_url: str, api_key: str, acme: Customer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BILLING_API_KEY", api_key)
    monkeypatch.setenv("BILLING_API_BASE", base_url)
    sent: list[httpx.Request] = []
    with (
        httpx.Client(event_hooks={"request": [sent.append]}) as http,
        Client(http_client=http) as billing,
    ):
        billing.customers.retrieve("acme")

    assert sent[0].headers["user-agent"].startswith("billing-client-python/")
    assert sent[0].headers["authorization"] == f"Bearer {api_key}"


def test_a_client_without_a_server_address_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BILLING_API_BASE", raising=False)

    with pytest.raises(ValueError, match="BILLING_API_BASE"):
        Client(api_key="sk_test_x")
