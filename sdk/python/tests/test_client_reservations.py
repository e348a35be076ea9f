"""``with client.reserve(...) as hold``: commit on success, release on an exception or a missing commit."""

import warnings
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from live_app import FORWARD, UNREACHABLE, FlakyProxy, events_of

from billing_client import Client, InsufficientBalance, ReservationNotHeld, UncommittedReservationWarning
from customers.models import Customer
from usage.models import Reservation, ReservationStatus


class ModelFailed(Exception):
    pass


def the_reservation() -> Reservation:
    (reservation,) = Reservation.objects.all()
    return reservation


def test_the_block_commits_what_the_work_used_and_the_rest_goes_back(
    client: Client, tokens_customer: Customer
) -> None:
    with client.reserve(
        customer="tokens-co", meter="llm_tokens", quantity=4000, user="raj", properties={"model": "gpt-4o"}
    ) as hold:
        assert hold.status == "held"
        committed = hold.commit(800)

    assert committed["status"] == "committed"
    assert Decimal(committed["released"]) == Decimal(3200)
    assert Decimal(committed["event"]["quantity"]) == Decimal(800)
    reservation = the_reservation()
    assert reservation.status == ReservationStatus.COMMITTED
    assert reservation.committed_quantity == Decimal(800)
    (event,) = events_of("tokens-co")
    assert event.quantity == Decimal(800)
    assert event.properties == {"model": "gpt-4o"}


def test_an_exception_in_the_block_releases_the_hold_and_goes_on(
    client: Client, tokens_customer: Customer
) -> None:
    with pytest.raises(ModelFailed), client.reserve(customer="tokens-co", meter="llm_tokens", quantity=4000):
        raise ModelFailed("the model timed out")

    assert the_reservation().status == ReservationStatus.RELEASED
    assert events_of("tokens-co") == []


def test_leaving_the_block_without_a_commit_releases_the_hold_and_warns(
    client: Client, tokens_customer: Customer
) -> None:
    with (
        pytest.warns(UncommittedReservationWarning, match="neither committed nor released"),
        client.reserve(customer="tokens-co", meter="llm_tokens", quantity=4000),
    ):
        pass

    assert the_reservation().status == ReservationStatus.RELEASED
    assert events_of("tokens-co") == []


def test_a_hold_released_in_the_block_is_left_alone(client: Client, tokens_customer: Customer) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with client.reserve(customer="tokens-co", meter="llm_tokens", quantity=4000) as hold:
            hold.release()

    assert the_reservation().status == ReservationStatus.RELEASED


def test_a_refused_reservation_raises_before_the_block_runs(
    client: Client, credits_plan: Any, make_customer: Callable[..., Customer], live_server: Any
) -> None:
    make_customer("credits", external_id="prepaid")
    ran = False

    with (
        pytest.raises(InsufficientBalance),
        client.reserve(
            customer="prepaid", meter="workflow_run", quantity=1, properties={"complexity": "complex"}
        ),
    ):
        ran = True

    assert ran is False
    assert not Reservation.objects.exists()


def test_committing_a_released_hold_raises_and_the_block_ends_cleanly(
    client: Client, tokens_customer: Customer
) -> None:
    with (
        pytest.raises(ReservationNotHeld),
        client.reserve(customer="tokens-co", meter="llm_tokens", quantity=4000) as hold,
    ):
        client.reservations.release(hold.id)
        hold.commit(100)

    assert the_reservation().status == ReservationStatus.RELEASED


def test_a_release_that_cannot_reach_the_server_does_not_hide_the_blocks_exception(
    api_key: str, tokens_customer: Customer, flaky_proxy: Callable[..., FlakyProxy], caplog: Any
) -> None:
    proxy = flaky_proxy([FORWARD], then=UNREACHABLE)  # the hold is taken, then the server goes away

    with (
        Client(api_key=api_key, base_url=proxy.url, max_network_retries=0) as billing,
        pytest.raises(ModelFailed),
        billing.reserve(customer="tokens-co", meter="llm_tokens", quantity=4000),
    ):
        raise ModelFailed("the model timed out")

    assert proxy.actions() == [FORWARD, UNREACHABLE]
    assert "expires by itself" in caplog.text
    assert the_reservation().status == ReservationStatus.HELD
