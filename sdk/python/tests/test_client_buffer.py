"""Durable buffering: events the API cannot take are kept in a SQLite file, survive a process restart,
and are delivered in order with their own keys: none lost, none recorded twice."""

import sqlite3
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
from live_app import (
    DROP_AFTER_WRITE,
    FORWARD,
    UNREACHABLE,
    FlakyProxy,
    keys_of,
    quantity_total,
    run_buffer_writer,
    unreachable_url,
    wait_until,
)

from billing_client import APIConnectionError, BufferFull, Client
from customers.models import Customer
from customers.services import spend_controls_update


def pending_in(buffer: Path) -> list[str]:
    """The keys waiting in a buffer file, in order, read as any SQLite reader would."""
    with sqlite3.connect(buffer) as connection:
        rows = connection.execute(
            "SELECT json_extract(body, '$.idempotency_key') FROM pending_events ORDER BY seq"
        )
        return [key for (key,) in rows]


def test_events_kept_while_the_server_is_down_survive_a_restart_and_are_delivered_once(
    api_key: str, base_url: str, acme: Customer, flaky_proxy: Callable[..., FlakyProxy], tmp_path: Path
) -> None:
    # Two events go through; the third is recorded but its answer is lost; then the server is down.
    proxy = flaky_proxy([FORWARD, FORWARD, DROP_AFTER_WRITE], then=UNREACHABLE)
    buffer = tmp_path / "events.sqlite3"

    statuses = run_buffer_writer(
        base_url=proxy.url, api_key=api_key, buffer=buffer, customer="acme", prefix="run", count=8
    )

    assert statuses == ["accepted", "accepted"] + ["buffered"] * 6
    assert keys_of("acme") == ["run-0", "run-1", "run-2"]
    assert pending_in(buffer) == [f"run-{n}" for n in range(2, 8)]

    # A new process: its client finds the file and its flusher delivers what is waiting.
    with Client(api_key=api_key, base_url=base_url, buffer_path=buffer, flush_interval=0.1) as billing:
        wait_until(lambda: billing.buffer is not None and billing.buffer.pending_count() == 0)

    assert keys_of("acme") == [f"run-{n}" for n in range(8)]  # each once, in the order written
    assert quantity_total("acme") == Decimal(sum(range(1, 9)))
    assert pending_in(buffer) == []


def test_the_flusher_delivers_once_the_server_is_back(
    api_key: str, acme: Customer, flaky_proxy: Callable[..., FlakyProxy], tmp_path: Path
) -> None:
    proxy = flaky_proxy([], then=UNREACHABLE)
    with Client(
        api_key=api_key, base_url=proxy.url, buffer_path=tmp_path / "events.sqlite3", flush_interval=0.1
    ) as billing:
        results = [
            billing.events.create(customer="acme", meter="api_call", idempotency_key=f"e-{n}")
            for n in range(3)
        ]
        assert [result["status"] for result in results] == ["buffered"] * 3
        assert keys_of("acme") == []

        proxy.then = FORWARD
        wait_until(lambda: keys_of("acme") == ["e-0", "e-1", "e-2"])
        assert billing.flush() == 0


def test_new_events_wait_behind_older_ones_so_the_order_is_kept(
    api_key: str, base_url: str, acme: Customer, tmp_path: Path
) -> None:
    buffer = tmp_path / "events.sqlite3"
    with Client(
        api_key=api_key, base_url=unreachable_url(), buffer_path=buffer, max_network_retries=0
    ) as down:
        down.events.create(customer="acme", meter="api_call", idempotency_key="old")

    with Client(api_key=api_key, base_url=base_url, buffer_path=buffer, flush_interval=3600) as billing:
        billing.flush()  # the flusher's first pass may race this one; either way the old event goes first
        billing.events.create(customer="acme", meter="api_call", idempotency_key="new")
        billing.flush()

    assert keys_of("acme") == ["old", "new"]


def test_a_full_buffer_refuses_more_and_keeps_what_it_has(
    api_key: str, acme: Customer, tmp_path: Path
) -> None:
    buffer = tmp_path / "events.sqlite3"
    with Client(
        api_key=api_key,
        base_url=unreachable_url(),
        buffer_path=buffer,
        buffer_max_events=2,
        max_network_retries=0,
    ) as billing:
        billing.events.create(customer="acme", meter="api_call", idempotency_key="a")
        billing.events.create(customer="acme", meter="api_call", idempotency_key="b")
        with pytest.raises(BufferFull, match="at most 2 events"):
            billing.events.create(customer="acme", meter="api_call", idempotency_key="c")

    assert pending_in(buffer) == ["a", "b"]


def test_an_event_refused_on_delivery_is_set_aside_and_the_rest_delivered(
    api_key: str, base_url: str, acme: Customer, tmp_path: Path
) -> None:
    buffer = tmp_path / "events.sqlite3"
    spend_controls_update(customer=acme, soft_limit=None, hard_limit=Decimal("1"), block_overage=False)
    with Client(
        api_key=api_key, base_url=unreachable_url(), buffer_path=buffer, max_network_retries=0
    ) as down:
        down.events.create(customer="acme", meter="api_call", quantity=100, idempotency_key="included")
        down.events.create(customer="acme", meter="api_call", quantity=50, idempotency_key="over-the-limit")
        down.events.create(customer="acme", meter="api_call", quantity=5, idempotency_key="small")

    with Client(api_key=api_key, base_url=base_url, buffer_path=buffer, flush_interval=3600) as billing:
        assert billing.flush() == 0
        assert billing.buffer is not None
        (refused,) = billing.buffer.refused_events()

    assert keys_of("acme") == ["included", "small"]
    assert refused.event["idempotency_key"] == "over-the-limit"
    assert refused.code == "hard_limit_reached"
    assert pending_in(buffer) == []


def test_reservations_are_never_buffered(api_key: str, tokens_customer: Customer, tmp_path: Path) -> None:
    with (
        Client(
            api_key=api_key,
            base_url=unreachable_url(),
            buffer_path=tmp_path / "events.sqlite3",
            max_network_retries=0,
        ) as billing,
        pytest.raises(APIConnectionError),
    ):
        billing.reserve(customer="tokens-co", meter="llm_tokens", quantity=10)

    assert pending_in(tmp_path / "events.sqlite3") == []
