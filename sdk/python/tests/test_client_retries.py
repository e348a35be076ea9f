"""Retries: a write whose answers are lost (500, a dropped connection) or refused for a while (429 with
Retry-After) is sent again with the same Idempotency-Key until it succeeds, and is applied once."""

import itertools
from collections.abc import Callable
from decimal import Decimal

import pytest
from live_app import (
    DROP_AFTER_WRITE,
    FAIL_AFTER_WRITE,
    FORWARD,
    RATE_LIMITED,
    UNREACHABLE,
    FlakyProxy,
    events_of,
)

from billing_client import APIConnectionError, Client, NotFound, RateLimited
from customers.models import Customer
from usage.models import CreditGrant, Reservation


def test_an_event_answered_500_and_429_a_few_times_is_recorded_once(
    api_key: str, acme: Customer, flaky_proxy: Callable[..., FlakyProxy]
) -> None:
    proxy = flaky_proxy([FAIL_AFTER_WRITE, RATE_LIMITED, FAIL_AFTER_WRITE, RATE_LIMITED], retry_after=1)

    with Client(api_key=api_key, base_url=proxy.url, max_network_retries=4) as billing:
        result = billing.events.create(customer="acme", meter="api_call", quantity=7)

    assert result["status"] == "accepted"
    assert proxy.actions() == [FAIL_AFTER_WRITE, RATE_LIMITED, FAIL_AFTER_WRITE, RATE_LIMITED, FORWARD]
    assert {seen.idempotency_key for seen in proxy.seen} == {result["idempotency_key"]}
    after_429 = [
        later.at - earlier.at
        for earlier, later in itertools.pairwise(proxy.seen)
        if earlier.action == RATE_LIMITED
    ]
    assert min(after_429) >= 1  # Retry-After honoured
    (event,) = events_of("acme")
    assert event.quantity == Decimal(7)
    assert result["id"] == event.id


def test_a_reservation_whose_answer_was_lost_is_held_once(
    api_key: str, tokens_customer: Customer, flaky_proxy: Callable[..., FlakyProxy]
) -> None:
    proxy = flaky_proxy([FAIL_AFTER_WRITE, DROP_AFTER_WRITE])

    with Client(api_key=api_key, base_url=proxy.url) as billing:
        reservation = billing.reservations.create(customer="tokens-co", meter="llm_tokens", quantity=4000)

    assert proxy.actions() == [FAIL_AFTER_WRITE, DROP_AFTER_WRITE, FORWARD]
    (held,) = Reservation.objects.all()
    assert str(held.id) == reservation["id"]


def test_a_credit_grant_whose_connection_dropped_is_granted_once(
    api_key: str, acme: Customer, flaky_proxy: Callable[..., FlakyProxy]
) -> None:
    proxy = flaky_proxy([DROP_AFTER_WRITE])

    with Client(api_key=api_key, base_url=proxy.url) as billing:
        grant = billing.credits.grant("acme", amount="10")

    assert proxy.actions() == [DROP_AFTER_WRITE, FORWARD]
    assert CreditGrant.objects.get(customer=acme).id == grant["id"]


def test_rate_limited_past_the_retries_raises_with_the_wait(
    api_key: str, acme: Customer, flaky_proxy: Callable[..., FlakyProxy]
) -> None:
    proxy = flaky_proxy([], then=RATE_LIMITED, retry_after=1)

    with (
        Client(api_key=api_key, base_url=proxy.url, max_network_retries=1) as billing,
        pytest.raises(RateLimited) as raised,
    ):
        billing.events.create(customer="acme", meter="api_call")

    assert raised.value.retry_after == 1
    assert proxy.actions() == [RATE_LIMITED, RATE_LIMITED]
    assert events_of("acme") == []


def test_an_unreachable_server_raises_a_connection_error_after_the_retries(
    api_key: str, acme: Customer, flaky_proxy: Callable[..., FlakyProxy]
) -> None:
    proxy = flaky_proxy([], then=UNREACHABLE)

    with (
        Client(api_key=api_key, base_url=proxy.url, max_network_retries=2) as billing,
        pytest.raises(APIConnectionError),
    ):
        billing.check(customer="acme", meter="api_call")

    assert proxy.actions() == [UNREACHABLE] * 3


def test_a_refusal_is_not_retried(
    api_key: str, acme: Customer, flaky_proxy: Callable[..., FlakyProxy]
) -> None:
    proxy = flaky_proxy([])

    with Client(api_key=api_key, base_url=proxy.url) as billing, pytest.raises(NotFound):
        billing.customers.retrieve("nobody")

    assert proxy.actions() == [FORWARD]
