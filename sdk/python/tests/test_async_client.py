"""``AsyncClient`` in the scenarios of the synchronous client: resources, ``async with`` reservations,
the metering decorator, retries, and buffering across a process restart.

Each test drives its coroutine with ``run_async`` (``asyncio.run`` on a thread of its own); database reads and writes stay outside it, where
Django allows them.
"""

import warnings
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from live_app import (
    DROP_AFTER_WRITE,
    FAIL_AFTER_WRITE,
    FORWARD,
    RATE_LIMITED,
    UNREACHABLE,
    FlakyProxy,
    events_of,
    keys_of,
    quantity_total,
    run_async,
    run_buffer_writer,
    unreachable_url,
)

from billing_client import AsyncClient, Client, InsufficientBalance, NotFound, UncommittedReservationWarning
from customers.models import Customer
from usage.models import CustomerBalance, Reservation, ReservationStatus


class ModelFailed(Exception):
    pass


def the_reservation() -> Reservation:
    (reservation,) = Reservation.objects.all()
    return reservation


def test_the_resources_answer_as_the_sync_clients_do(api_key: str, base_url: str, acme: Customer) -> None:
    async def scenario() -> dict[str, Any]:
        async with AsyncClient(api_key=api_key, base_url=base_url) as billing:
            customer = await billing.customers.retrieve("acme")
            event = await billing.events.create(customer="acme", meter="api_call", quantity=120)
            batch = await billing.events.create_batch(
                [{"customer": "acme", "meter": "api_call", "idempotency_key": f"b-{n}"} for n in range(2)]
            )
            check = await billing.check(customer="acme", meter="api_call")
            estimate = await billing.estimate(customer="acme", meter="api_call", quantity=10)
            grant = await billing.credits.grant("acme", amount="5")
            top_up = await billing.wallet.top_up("acme", amount="12.50")
            usage = await billing.usage("acme")
            with pytest.raises(NotFound):
                await billing.customers.retrieve("nobody")
            return {
                "customer": customer,
                "event": event,
                "batch": batch,
                "check": check,
                "estimate": estimate,
                "grant": grant,
                "top_up": top_up,
                "usage": usage,
            }

    answers = run_async(scenario())

    assert answers["customer"]["external_id"] == "acme"
    assert answers["event"]["status"] == "accepted"
    assert [result["status"] for result in answers["batch"]] == ["accepted", "accepted"]
    assert answers["check"]["allowed"] is True
    assert Decimal(answers["estimate"]["amount"]) == Decimal("1.00")
    assert Decimal(answers["grant"]["amount"]) == Decimal(5)
    assert answers["top_up"]["wallet_balance"] == "12.50"
    assert Decimal(answers["usage"]["meters"][0]["quantity"]) == Decimal(122)
    assert len(events_of("acme")) == 3
    assert CustomerBalance.objects.get(customer=acme).wallet_balance == Decimal("12.50")


def test_async_with_commits_what_the_work_used(
    api_key: str, base_url: str, tokens_customer: Customer
) -> None:
    async def scenario() -> Any:
        async with (
            AsyncClient(api_key=api_key, base_url=base_url) as billing,
            billing.reserve(customer="tokens-co", meter="llm_tokens", quantity=4000, user="raj") as hold,
        ):
            return await hold.commit(800)

    committed = run_async(scenario())

    assert Decimal(committed["released"]) == Decimal(3200)
    assert the_reservation().status == ReservationStatus.COMMITTED
    (event,) = events_of("tokens-co")
    assert event.quantity == Decimal(800)


def test_an_awaited_hold_works_as_well(api_key: str, base_url: str, tokens_customer: Customer) -> None:
    async def scenario() -> None:
        async with AsyncClient(api_key=api_key, base_url=base_url) as billing:
            hold = await billing.reserve(customer="tokens-co", meter="llm_tokens", quantity=4000)
            await hold.release()

    run_async(scenario())

    assert the_reservation().status == ReservationStatus.RELEASED


def test_an_exception_in_the_async_block_releases_the_hold_and_goes_on(
    api_key: str, base_url: str, tokens_customer: Customer
) -> None:
    async def scenario() -> None:
        async with (
            AsyncClient(api_key=api_key, base_url=base_url) as billing,
            billing.reserve(customer="tokens-co", meter="llm_tokens", quantity=4000),
        ):
            raise ModelFailed("the model timed out")

    with pytest.raises(ModelFailed):
        run_async(scenario())

    assert the_reservation().status == ReservationStatus.RELEASED
    assert events_of("tokens-co") == []


def test_leaving_the_async_block_without_a_commit_releases_and_warns(
    api_key: str, base_url: str, tokens_customer: Customer
) -> None:
    async def scenario() -> None:
        async with (
            AsyncClient(api_key=api_key, base_url=base_url) as billing,
            billing.reserve(customer="tokens-co", meter="llm_tokens", quantity=4000),
        ):
            pass

    with pytest.warns(UncommittedReservationWarning):
        run_async(scenario())

    assert the_reservation().status == ReservationStatus.RELEASED


def test_a_refused_async_reservation_raises_before_the_block_runs(
    api_key: str, base_url: str, credits_plan: Any, make_customer: Callable[..., Customer]
) -> None:
    make_customer("credits", external_id="prepaid")
    ran = []

    async def scenario() -> None:
        async with (
            AsyncClient(api_key=api_key, base_url=base_url) as billing,
            billing.reserve(
                customer="prepaid", meter="workflow_run", quantity=1, properties={"complexity": "simple"}
            ),
        ):
            ran.append(True)

    with pytest.raises(InsufficientBalance):
        run_async(scenario())

    assert ran == []
    assert not Reservation.objects.exists()


def test_an_async_function_that_fails_twice_then_succeeds_records_one_event(
    api_key: str, base_url: str, tokens_customer: Customer
) -> None:
    attempts = []

    async def scenario() -> str:
        async with AsyncClient(api_key=api_key, base_url=base_url) as billing:

            @billing.metered(customer="tokens-co", meter="llm_tokens", quantity=lambda text: len(text) * 100)
            async def generate(prompt: str) -> str:
                attempts.append(prompt)
                if len(attempts) <= 2:
                    raise TimeoutError("the model timed out")
                return prompt * 2

            for _ in range(5):
                try:
                    return await generate("abc")
                except TimeoutError:
                    continue
            raise AssertionError("never succeeded")

    assert run_async(scenario()) == "abcabc"

    assert len(attempts) == 3
    (event,) = events_of("tokens-co")
    assert event.quantity == Decimal(600)


def test_an_async_cache_hit_is_recorded_as_cached(
    api_key: str, base_url: str, tokens_customer: Customer
) -> None:
    async def scenario() -> None:
        async with AsyncClient(api_key=api_key, base_url=base_url) as billing:

            @billing.metered(
                customer="tokens-co", meter="llm_tokens", quantity=300, cached=lambda answer: answer["cached"]
            )
            async def answer(prompt: str) -> dict[str, Any]:
                return {"text": prompt, "cached": True}

            await answer("seen before")

    run_async(scenario())

    (event,) = events_of("tokens-co")
    assert (event.billable, event.properties, event.cost) == (False, {"cached": True}, Decimal(0))


def test_the_sync_client_meters_an_async_function_too(
    api_key: str, base_url: str, tokens_customer: Customer
) -> None:
    with Client(api_key=api_key, base_url=base_url) as billing:

        @billing.metered(customer="tokens-co", meter="llm_tokens", quantity=42)
        async def generate() -> str:
            return "done"

        assert run_async(generate()) == "done"

    assert [event.quantity for event in events_of("tokens-co")] == [Decimal(42)]


def test_the_async_decorator_refuses_a_plain_function(api_key: str, base_url: str) -> None:
    billing = AsyncClient(api_key=api_key, base_url=base_url)

    with pytest.raises(TypeError, match="async functions"):
        billing.metered(customer="acme", meter="api_call")(lambda: None)  # type: ignore[arg-type]
    run_async(billing.close())


def test_an_async_write_answered_500_and_429_is_recorded_once(
    api_key: str, acme: Customer, flaky_proxy: Callable[..., FlakyProxy]
) -> None:
    proxy = flaky_proxy([FAIL_AFTER_WRITE, RATE_LIMITED, DROP_AFTER_WRITE], retry_after=1)

    async def scenario() -> Any:
        async with AsyncClient(api_key=api_key, base_url=proxy.url, max_network_retries=3) as billing:
            return await billing.events.create(customer="acme", meter="api_call", quantity=9)

    result = run_async(scenario())

    assert proxy.actions() == [FAIL_AFTER_WRITE, RATE_LIMITED, DROP_AFTER_WRITE, FORWARD]
    assert {seen.idempotency_key for seen in proxy.seen} == {result["idempotency_key"]}
    (event,) = events_of("acme")
    assert (event.id, event.quantity) == (result["id"], Decimal(9))


def test_async_buffered_events_survive_a_restart_and_are_delivered_once(
    api_key: str, base_url: str, acme: Customer, tmp_path: Path
) -> None:
    buffer = tmp_path / "events.sqlite3"

    statuses = run_buffer_writer(
        base_url=unreachable_url(),
        api_key=api_key,
        buffer=buffer,
        customer="acme",
        prefix="async",
        count=5,
        awaited=True,
    )
    assert statuses == ["buffered"] * 5
    assert keys_of("acme") == []

    async def deliver() -> tuple[int, int]:
        async with AsyncClient(
            api_key=api_key, base_url=base_url, buffer_path=buffer, flush_interval=3600
        ) as billing:
            remaining = await billing.flush()
            assert billing.buffer is not None
            return remaining, billing.buffer.pending_count()

    assert run_async(deliver()) == (0, 0)
    assert keys_of("acme") == [f"async-{n}" for n in range(5)]
    assert quantity_total("acme") == Decimal(15)


def test_async_events_buffer_while_the_server_is_unreachable(
    api_key: str, acme: Customer, flaky_proxy: Callable[..., FlakyProxy], tmp_path: Path
) -> None:
    proxy = flaky_proxy([], then=UNREACHABLE)

    async def scenario() -> tuple[list[str], int]:
        async with AsyncClient(
            api_key=api_key, base_url=proxy.url, buffer_path=tmp_path / "events.sqlite3", flush_interval=3600
        ) as billing:
            results = [await billing.events.create(customer="acme", meter="api_call") for _ in range(3)]
            proxy.then = FORWARD
            return [result["status"] for result in results], await billing.flush()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        statuses, remaining = run_async(scenario())

    assert statuses == ["buffered"] * 3
    assert remaining == 0
    assert len(events_of("acme")) == 3
