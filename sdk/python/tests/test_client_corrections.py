"""``events.correct`` and ``events.preview_correction`` against the live app: a correction recorded once,
a preview that writes nothing, and the API's refusals as the client's typed errors."""

from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from live_app import FlakyProxy, events_of, run_async

from billing_client import (
    AsyncClient,
    Client,
    IdempotencyKeyReused,
    InvalidRequestError,
    NotFound,
    PeriodClosed,
)
from customers.models import Customer
from customers.services import subscription_roll_period
from usage.models import CreditLedgerEntry, PeriodUsage, StripeUsageOutbox

REASON = "Retries were counted twice"


@pytest.fixture
def over(client: Client, acme: Customer) -> int:
    """Acme on Pro with 150 calls in one event: 50 past the 100 included, $5 of overage. The event's id."""
    result = client.events.create(customer="acme", meter="api_call", quantity=150)
    assert result["id"] is not None
    return result["id"]


def test_a_preview_answers_the_charges_before_and_after_and_writes_nothing(client: Client, over: int) -> None:
    ledger_rows = CreditLedgerEntry.objects.count()

    preview = client.events.preview_correction(over, quantity=120, reason=REASON)

    assert preview["object"] == "usage_correction" and preview["status"] == "preview"
    assert preview["event"] == over and preview["corrected_quantity"] == "120"
    correction = preview["correction"]
    assert correction is not None and correction["id"] is None
    assert correction["quantity"] == "-30" and correction["corrects"] == over
    assert correction["reason"] == REASON
    assert preview["before"] is not None and preview["after"] is not None
    assert preview["before"]["total"] == "25.00"
    assert preview["after"]["total"] == "22.00"
    assert [line["quantity"] for line in preview["after"]["lines"]] == [None, "120"]
    assert [event.pk for event in events_of("acme")] == [over]
    assert PeriodUsage.objects.get().quantity == 150
    assert CreditLedgerEntry.objects.count() == ledger_rows
    assert StripeUsageOutbox.objects.get().amount == 5
    assert client.usage("acme")["charges"]["total"] == "25.00"


def test_a_correction_records_the_difference_and_its_preview_foretold_the_charges(
    client: Client, over: int
) -> None:
    preview = client.events.preview_correction(over, quantity="120", reason=REASON, idempotency_key="fix-1")

    corrected = client.events.correct(over, quantity=Decimal(120), reason=REASON, idempotency_key="fix-1")

    assert corrected["status"] == "recorded" and corrected["corrected_quantity"] == "120"
    assert corrected["before"] is None and corrected["after"] is None and corrected["flags"] == []
    correction = corrected["correction"]
    assert correction is not None and correction["id"] is not None
    assert correction["idempotency_key"] == "correction:fix-1"
    assert correction["quantity"] == "-30" and correction["cost"] == "-3"
    assert correction["covered_by"]["overage"] == "-3"
    assert correction["corrects"] == over and correction["reason"] == REASON
    assert correction["corrected_by"].startswith("api key sdk tests (")
    (event, recorded) = events_of("acme")
    assert recorded.pk == correction["id"] and recorded.corrects_id == event.pk == over
    assert recorded.quantity == Decimal(-30)
    assert PeriodUsage.objects.get().quantity == 120
    assert client.usage("acme")["charges"] == preview["after"]


def test_the_correction_sends_its_key_in_the_header_and_the_preview_sends_none(
    client: Client, over: int, api_key: str, flaky_proxy: Callable[..., FlakyProxy]
) -> None:
    proxy = flaky_proxy([])
    with Client(api_key=api_key, base_url=proxy.url) as billing:
        billing.events.preview_correction(over, quantity=120, reason=REASON)
        corrected = billing.events.correct(over, quantity=120, reason=REASON)

    preview_request, correct_request = proxy.seen
    assert preview_request.path == f"/api/v1/events/{over}/corrections?dry_run=true"
    assert preview_request.idempotency_key is None
    assert correct_request.path == f"/api/v1/events/{over}/corrections"
    assert correct_request.idempotency_key is not None
    assert corrected["correction"] is not None
    assert corrected["correction"]["idempotency_key"] == f"correction:{correct_request.idempotency_key}"


def test_the_same_correction_again_answers_the_first_and_writes_nothing(client: Client, over: int) -> None:
    first = client.events.correct(over, quantity=120, reason=REASON, idempotency_key="fix-1")

    again = client.events.correct(over, quantity=120, reason=REASON, idempotency_key="fix-1")

    assert again == first
    assert len(events_of("acme")) == 2


def test_the_key_with_another_quantity_raises_idempotency_key_reused(client: Client, over: int) -> None:
    client.events.correct(over, quantity=120, reason=REASON, idempotency_key="fix-1")

    with pytest.raises(IdempotencyKeyReused) as raised:
        client.events.correct(over, quantity=100, reason=REASON, idempotency_key="fix-1")

    assert raised.value.code == "idempotency_key_reused" and raised.value.http_status == 409
    assert len(events_of("acme")) == 2
    assert PeriodUsage.objects.get().quantity == 120


def test_the_quantity_the_event_has_answers_unchanged(client: Client, over: int) -> None:
    unchanged = client.events.correct(over, quantity=150, reason=REASON)

    assert unchanged["status"] == "unchanged" and unchanged["correction"] is None
    assert len(events_of("acme")) == 1


def test_an_unknown_event_raises_not_found(client: Client, over: int) -> None:
    with pytest.raises(NotFound) as raised:
        client.events.correct(over + 1000, quantity=120, reason=REASON)

    assert raised.value.code == "not_found" and raised.value.http_status == 404


@pytest.mark.parametrize(
    ("fields", "field"),
    [({"quantity": "-5", "reason": REASON}, "quantity"), ({"quantity": "120", "reason": ""}, "reason")],
)
def test_bad_input_raises_invalid_request_naming_the_field(
    client: Client, over: int, fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        client.events.correct(over, **fields)

    assert raised.value.code == "invalid_request" and raised.value.http_status == 400
    assert field in raised.value.fields
    assert len(events_of("acme")) == 1


def test_a_correction_of_a_correction_raises_invalid_request(client: Client, over: int) -> None:
    corrected = client.events.correct(over, quantity=120, reason=REASON)
    assert corrected["correction"] is not None and corrected["correction"]["id"] is not None

    with pytest.raises(InvalidRequestError) as raised:
        client.events.correct(corrected["correction"]["id"], quantity=0, reason=REASON)

    assert raised.value.http_status == 400
    assert f"event {over}" in raised.value.message


def test_an_event_of_an_ended_period_raises_period_closed(client: Client, over: int, acme: Customer) -> None:
    subscription = acme.subscription
    with time_machine.travel(subscription.current_period_end + timedelta(hours=1)):
        subscription_roll_period(subscription=subscription)
        with pytest.raises(PeriodClosed) as raised:
            client.events.correct(over, quantity=120, reason=REASON)

    assert raised.value.code == "period_closed" and raised.value.http_status == 409
    assert "/credits" in raised.value.message
    assert len(events_of("acme")) == 1


def test_a_float_quantity_is_refused_before_anything_is_sent(client: Client, over: int) -> None:
    with pytest.raises(TypeError, match="float"):
        client.events.correct(over, quantity=120.5, reason=REASON)
    with pytest.raises(TypeError, match="float"):
        client.events.preview_correction(over, quantity=120.5, reason=REASON)

    assert len(events_of("acme")) == 1


def test_the_async_client_previews_corrects_and_replays_as_the_sync_one_does(
    api_key: str, base_url: str, over: int
) -> None:
    async def scenario() -> dict[str, Any]:
        async with AsyncClient(api_key=api_key, base_url=base_url) as billing:
            preview = await billing.events.preview_correction(
                over, quantity=120, reason=REASON, idempotency_key="fix-async"
            )
            corrected = await billing.events.correct(
                over, quantity=120, reason=REASON, idempotency_key="fix-async"
            )
            again = await billing.events.correct(
                over, quantity=120, reason=REASON, idempotency_key="fix-async"
            )
            with pytest.raises(IdempotencyKeyReused) as reused:
                await billing.events.correct(over, quantity=90, reason=REASON, idempotency_key="fix-async")
            with pytest.raises(NotFound):
                await billing.events.correct(over + 1000, quantity=120, reason=REASON)
            usage = await billing.usage("acme")
            return {
                "preview": preview,
                "corrected": corrected,
                "again": again,
                "reused": reused.value,
                "usage": usage,
            }

    answers = run_async(scenario())

    assert answers["preview"]["status"] == "preview"
    assert answers["preview"]["after"]["total"] == "22.00"
    assert answers["corrected"]["status"] == "recorded"
    assert answers["corrected"]["correction"]["quantity"] == "-30"
    assert answers["again"] == answers["corrected"]
    assert answers["reused"].code == "idempotency_key_reused"
    assert answers["usage"]["charges"] == answers["preview"]["after"]
    assert [event.quantity for event in events_of("acme")] == [Decimal(150), Decimal(-30)]
