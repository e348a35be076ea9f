"""``@client.metered``: one event when the function finally succeeds, none for an attempt that raised,
cache hits recorded unbilled or skipped; and the token counts read from model responses."""

from dataclasses import dataclass
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from live_app import events_of

from billing_client import Client, TokenUsage, input_tokens, output_tokens, token_usage, total_tokens
from customers.models import Customer
from customers.services import spend_controls_update


@dataclass
class Completion:
    text: str
    total_tokens: int
    from_cache: bool = False


class Flaky:
    """Fails its first ``failures`` calls, as a model call that times out does."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self, prompt: str) -> Completion:
        self.calls += 1
        if self.calls <= self.failures:
            raise TimeoutError(f"attempt {self.calls} timed out")
        return Completion(text=prompt.upper(), total_tokens=1234)


def call_with_retries(function: Any, *args: Any, attempts: int = 5) -> Any:
    for attempt in range(attempts):
        try:
            return function(*args)
        except TimeoutError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def test_a_function_that_fails_twice_then_succeeds_records_one_event(
    client: Client, tokens_customer: Customer
) -> None:
    model = Flaky(failures=2)
    summarize = client.metered(
        customer="tokens-co",
        meter="llm_tokens",
        quantity=lambda completion: completion.total_tokens,
        user="raj",
        properties={"action": "summarize"},
    )(model)

    completion = call_with_retries(summarize, "hello")

    assert completion.text == "HELLO"
    assert model.calls == 3
    (event,) = events_of("tokens-co")
    assert event.quantity == Decimal(1234)
    assert event.billable is True
    assert event.properties == {"action": "summarize"}
    assert event.member is not None and event.member.external_id == "raj"


def test_a_call_that_raises_records_nothing(client: Client, tokens_customer: Customer) -> None:
    @client.metered(customer="tokens-co", meter="llm_tokens", quantity=100)
    def always_fails() -> None:
        raise TimeoutError("down")

    with pytest.raises(TimeoutError):
        always_fails()

    assert events_of("tokens-co") == []


def test_a_cache_hit_is_recorded_as_cached_and_never_billed(
    client: Client, tokens_customer: Customer
) -> None:
    @client.metered(
        customer=lambda prompt, *, account: account,
        meter="llm_tokens",
        quantity=lambda completion: completion.total_tokens,
        cached=lambda completion: completion.from_cache,
    )
    def answer(prompt: str, *, account: str) -> Completion:
        return Completion(text=prompt, total_tokens=500, from_cache=prompt == "seen before")

    answer("new question", account="tokens-co")
    answer("seen before", account="tokens-co")

    fresh, cached = events_of("tokens-co")
    assert (fresh.billable, fresh.properties) == (True, {})
    assert (cached.billable, cached.properties) == (False, {"cached": True})
    assert cached.cost == Decimal(0)
    usage = client.usage("tokens-co")
    (meter,) = usage["meters"]
    assert Decimal(meter["quantity"]) == Decimal(500)
    assert Decimal(meter["non_billable_quantity"]) == Decimal(500)


def test_a_cache_hit_can_be_skipped_altogether(client: Client, tokens_customer: Customer) -> None:
    @client.metered(
        customer="tokens-co",
        meter="llm_tokens",
        quantity=lambda completion: completion.total_tokens,
        cached=lambda completion: completion.from_cache,
        cache_hits="skip",
    )
    def answer(prompt: str) -> Completion:
        return Completion(text=prompt, total_tokens=500, from_cache=True)

    answer("seen before")

    assert events_of("tokens-co") == []


def test_work_run_again_under_its_own_key_is_recorded_once(client: Client, tokens_customer: Customer) -> None:
    @client.metered(
        customer="tokens-co",
        meter="llm_tokens",
        quantity=lambda completion: completion.total_tokens,
        idempotency_key=lambda job_id, prompt: f"summarize-{job_id}",
    )
    def summarize(job_id: int, prompt: str) -> Completion:
        return Completion(text=prompt, total_tokens=700)

    summarize(41, "first run")
    summarize(41, "first run")  # a redelivered job: the same work again
    summarize(42, "another job")

    assert [event.idempotency_key for event in events_of("tokens-co")] == ["summarize-41", "summarize-42"]


def test_a_refused_event_is_logged_and_the_result_still_returned(
    client: Client, tokens_customer: Customer, caplog: pytest.LogCaptureFixture
) -> None:
    spend_controls_update(
        customer=tokens_customer, soft_limit=None, hard_limit=Decimal("0.01"), block_overage=False
    )

    @client.metered(customer="tokens-co", meter="llm_tokens", quantity=1_000_000)
    def huge() -> str:
        return "done"

    assert huge() == "done"
    assert "hard_limit_reached" in caplog.text
    assert events_of("tokens-co") == []


# --- token counts --------------------------------------------------------------------------------


def test_token_counts_of_an_openai_chat_completion() -> None:
    response = SimpleNamespace(
        usage=SimpleNamespace(
            prompt_tokens=120,
            completion_tokens=30,
            total_tokens=150,
            prompt_tokens_details=SimpleNamespace(cached_tokens=100),
        )
    )

    assert token_usage(response) == TokenUsage(input_tokens=120, output_tokens=30, cached_input_tokens=100)
    assert (input_tokens(response), output_tokens(response), total_tokens(response)) == (120, 30, 150)


def test_token_counts_of_an_openai_response_as_a_dict() -> None:
    response = {"usage": {"input_tokens": 50, "output_tokens": 5, "total_tokens": 55}}

    assert total_tokens(response) == 55
    assert token_usage(response).cached_input_tokens == 0


def test_token_counts_of_an_anthropic_message_count_cached_input() -> None:
    response = SimpleNamespace(
        usage=SimpleNamespace(
            input_tokens=10, output_tokens=40, cache_read_input_tokens=900, cache_creation_input_tokens=100
        )
    )

    assert token_usage(response) == TokenUsage(input_tokens=1010, output_tokens=40, cached_input_tokens=900)
    assert total_tokens(response) == 1050
    assert total_tokens(response.usage) == 1050


def test_a_response_without_usage_is_an_error() -> None:
    with pytest.raises(ValueError, match="no token usage"):
        total_tokens(SimpleNamespace(text="hi"))
