"""Per-API-key rate limits of the metering API, counted in the suite's Redis.

The clock stands still at half past a minute (time-machine), so a window's end and ``Retry-After`` are
exact, and moving the clock is how a window ends.
"""

import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import pytest
import time_machine
from django.utils import timezone
from rest_framework.test import APIClient

from billing_app.models import ApiKey
from billing_app.throttling import COUNTER_TIMEOUT_SECONDS, rate_window_count
from tests.catalog_fixtures import event
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db

EVENTS = "/api/v1/events"
CHECK = "/api/v1/check"


@pytest.fixture
def half_past() -> datetime:
    """Half past a minute a little ahead, so the subscriptions the fixtures start at the real now have begun."""
    return (timezone.now() + timedelta(minutes=2)).replace(second=30, microsecond=0)


@pytest.fixture
def clock(half_past: datetime) -> Iterator[time_machine.Traveller]:
    with time_machine.travel(half_past, tick=False) as traveller:
        yield traveller


@pytest.fixture
def acme(pro_plan, make_customer):
    return make_customer("pro")


@pytest.fixture
def client_of(db) -> Callable[..., APIClient]:
    """A client of the API holding a new key, with its own limit (None: the default)."""

    def make(rate_limit_per_minute: int | None = None) -> APIClient:
        _, raw_key = ApiKey.generate(name="backend", rate_limit_per_minute=rate_limit_per_minute)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
        return client

    return make


def check(client: APIClient) -> int:
    return client.post(CHECK, {"customer": "acme", "meter": "api_call"}, format="json").status_code


def test_a_key_over_its_limit_gets_429_and_nothing_is_written(settings, acme, client_of, clock):
    settings.API_RATE_LIMIT_PER_MINUTE = 100
    client = client_of(rate_limit_per_minute=2)
    assert [client.post(EVENTS, event(key), format="json").status_code for key in ("a", "b")] == [200, 200]

    refused = client.post(EVENTS, event("over"), format="json")

    assert refused.status_code == 429
    assert refused.json() == {
        "error": {
            "code": "rate_limited",
            "message": "This API key may make 2 requests a minute; retry in 30 seconds.",
            "request_id": refused["Request-Id"],
        }
    }
    assert refused["Retry-After"] == "30"
    assert not UsageEvent.objects.filter(idempotency_key="over").exists()
    assert UsageEvent.objects.count() == 2


def test_another_key_is_unaffected(acme, client_of, clock):
    limited, other = client_of(rate_limit_per_minute=1), client_of(rate_limit_per_minute=1)
    assert [check(limited), check(limited)] == [200, 429]
    assert check(other) == 200


def test_a_key_without_its_own_limit_has_the_default(settings, acme, client_of, clock):
    settings.API_RATE_LIMIT_PER_MINUTE = 3
    client = client_of()
    assert [check(client) for _ in range(4)] == [200, 200, 200, 429]
    message = client.post(CHECK, {"customer": "acme", "meter": "api_call"}, format="json").json()
    assert message["error"]["message"].startswith("This API key may make 3 requests a minute")


def test_the_count_starts_again_when_the_minute_ends(acme, client_of, clock, half_past):
    client = client_of(rate_limit_per_minute=2)
    assert [check(client) for _ in range(3)] == [200, 200, 429]

    clock.move_to(half_past + timedelta(seconds=29.5))
    refused = client.post(CHECK, {"customer": "acme", "meter": "api_call"}, format="json")
    assert refused.status_code == 429
    # Half a second to go is sent as one: Retry-After counts whole seconds and 0 would mean "now".
    assert refused["Retry-After"] == "1"

    clock.move_to(half_past + timedelta(seconds=30))
    assert [check(client) for _ in range(3)] == [200, 200, 429]


def test_refused_requests_do_not_push_the_end_of_the_window(acme, client_of, clock, half_past):
    client = client_of(rate_limit_per_minute=1)
    assert [check(client) for _ in range(20)] == [200] + [429] * 19
    clock.move_to(half_past + timedelta(seconds=30))
    assert check(client) == 200


def test_zero_means_no_limit(settings, acme, client_of, clock):
    settings.API_RATE_LIMIT_PER_MINUTE = 0
    unlimited_by_default = client_of()
    assert {check(unlimited_by_default) for _ in range(5)} == {200}

    settings.API_RATE_LIMIT_PER_MINUTE = 1
    unlimited_key = client_of(rate_limit_per_minute=0)
    assert {check(unlimited_key) for _ in range(5)} == {200}


def test_a_request_without_a_key_is_refused_by_authentication_not_the_limit(settings, acme, clock):
    settings.API_RATE_LIMIT_PER_MINUTE = 1
    anonymous = APIClient()
    assert [check(anonymous) for _ in range(2)] == [401, 401]


def test_the_api_still_answers_when_the_cache_is_unreachable(settings, acme, client_of, clock, caplog):
    client = client_of(rate_limit_per_minute=1)
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
        }
    }
    assert [check(client) for _ in range(3)] == [200, 200, 200]
    throttling_messages = [r.getMessage() for r in caplog.records if r.name == "billing_app.throttling"]
    assert throttling_messages[-1].startswith("API rate limit not applied, the cache is unreachable")


def test_workers_counting_at_once_lose_no_request():
    """16 threads, each with its own Redis connection, count 50 requests each in one fresh window.

    A read-then-write counter (DRF's SimpleRateThrottle keeps a list it gets and sets) loses requests
    here; every count must be handed out exactly once, including the window's first.
    """
    threads, per_thread = 16, 50
    start = threading.Barrier(threads)
    counts: list[int] = []

    def count_requests() -> None:
        start.wait()
        mine = [rate_window_count(api_key_id=1, window=0) for _ in range(per_thread)]
        counts.extend(mine)

    workers = [threading.Thread(target=count_requests) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert sorted(counts) == list(range(1, threads * per_thread + 1))


def test_a_window_counter_expires_and_counts_in_one_round_trip():
    """The counter is made with its expiry in the same Redis call, so it can never be left to live forever."""
    from django.core.cache import cache
    from redis import Redis

    counter = cache.make_and_validate_key("api-rate:7:0")
    redis = Redis.from_url(cache._cache._servers[0])  # type: ignore[attr-defined]
    calls: list[str] = []
    original = Redis.execute_command

    def counted(self, *args, **options):  # type: ignore[no-untyped-def]
        calls.append(str(args[0]))
        return original(self, *args, **options)

    first = rate_window_count(api_key_id=7, window=0)  # may load the script into Redis first
    Redis.execute_command = counted  # type: ignore[method-assign]
    try:
        later = [rate_window_count(api_key_id=7, window=0) for _ in range(2)]
    finally:
        Redis.execute_command = original  # type: ignore[method-assign]

    assert [first, *later] == [1, 2, 3]
    assert 0 < redis.ttl(counter) <= COUNTER_TIMEOUT_SECONDS
    assert calls == ["EVALSHA", "EVALSHA"]


def test_the_limit_is_set_when_a_key_is_created_in_admin_and_can_be_changed(admin_client):
    admin_client.post("/admin/billing_app/apikey/add/", {"name": "batch", "rate_limit_per_minute": "120"})
    api_key = ApiKey.objects.get(name="batch")
    assert api_key.rate_limit_per_minute == 120

    admin_client.post(
        f"/admin/billing_app/apikey/{api_key.pk}/change/", {"name": "batch", "rate_limit_per_minute": ""}
    )
    api_key.refresh_from_db()
    assert api_key.rate_limit_per_minute is None


def test_every_answer_tells_the_key_where_it_stands(clock, client_of, acme, half_past):
    client = client_of(rate_limit_per_minute=2)
    window_end = str(int(half_past.timestamp()) + 30)

    first = client.post(CHECK, {"customer": "acme", "meter": "api_call"}, format="json")
    refused_input = client.post(CHECK, {"customer": "acme"}, format="json")
    over = client.post(CHECK, {"customer": "acme", "meter": "api_call"}, format="json")

    assert (first.status_code, refused_input.status_code, over.status_code) == (200, 400, 429)
    assert [r["X-RateLimit-Remaining"] for r in (first, refused_input, over)] == ["1", "0", "0"]
    for response in (first, refused_input, over):
        assert response["X-RateLimit-Limit"] == "2"
        assert response["X-RateLimit-Reset"] == window_end


def test_an_unlimited_key_gets_no_rate_limit_headers(clock, client_of, acme, settings):
    settings.API_RATE_LIMIT_PER_MINUTE = 0
    response = client_of().post(CHECK, {"customer": "acme", "meter": "api_call"}, format="json")
    assert response.status_code == 200
    assert "X-RateLimit-Limit" not in response
