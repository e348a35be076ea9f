"""Per-API-key rate limiting of the metering API.

Each key has a fixed one-minute window: one counter in the cache, named by the key and by the minute it
counts, incremented atomically by every request. A fixed window rather than a sliding one (this minute's
count weighted with the last minute's) because the sliding window reads a second counter on every
request, a third cache round trip on a path (``/api/v1/check``) that has 10 ms for everything. The price
is the fixed window's edge: a key can make up to twice its limit in the few seconds either side of a
minute's end. For a limit that protects the service from a runaway client, not one that bills, that is
acceptable.

Every answer to a limited key says where it stands (GitHub's and Stripe's headers): ``X-RateLimit-Limit``,
``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` (the Unix second the window ends). The throttle leaves
them on the request; ``billing_app.api_requests`` puts them on the response, errors included.
"""

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

from django.conf import settings
from django.core.cache import DEFAULT_CACHE_ALIAS, cache, caches
from django.core.cache.backends.redis import RedisCache
from redis import Redis, RedisError
from redis.commands.core import Script
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from billing_app.models import ApiKey

if TYPE_CHECKING:
    # rest_framework.views imports this module while it defines APIView (DEFAULT_THROTTLE_CLASSES).
    from rest_framework.views import APIView

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60
# A window's counter outlives its minute, so that an app server whose clock is a little behind still counts
# in it rather than in a new counter. Once its minute is over nobody counts in it any more (unless app
# servers' clocks differ by more than a minute).
COUNTER_TIMEOUT_SECONDS = 2 * WINDOW_SECONDS

# Count and, on the window's first request, set the expiry: one round trip, atomic, so a counter can never
# be left without an expiry (Django's RedisCache ``incr`` is EXISTS then INCRBY, two trips, and the counter
# could expire between them and come back with none).
_COUNT_SCRIPT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count
"""
# One Redis client and script per cache backend (Django keeps one backend per thread): Django's RedisCache
# builds a new client for every call, which cost more CPU than the round trip itself.
_count_scripts: "WeakKeyDictionary[RedisCache, Script]" = WeakKeyDictionary()

RATE_LIMIT_HEADER = "X-RateLimit-Limit"
RATE_LIMIT_REMAINING_HEADER = "X-RateLimit-Remaining"
RATE_LIMIT_RESET_HEADER = "X-RateLimit-Reset"


@dataclass(frozen=True)
class RateLimitStatus:
    """Where a key stands in this minute's window, as its answer's headers tell it."""

    limit: int
    remaining: int
    reset: int  # the Unix second the window ends and the count starts again

    def headers(self) -> dict[str, str]:
        return {
            RATE_LIMIT_HEADER: str(self.limit),
            RATE_LIMIT_REMAINING_HEADER: str(self.remaining),
            RATE_LIMIT_RESET_HEADER: str(self.reset),
        }


def rate_limit_status_of(request: object) -> RateLimitStatus | None:
    """What the throttle found for this (Django) request; None when it was not counted."""
    return getattr(request, "rate_limit_status", None)


def api_key_rate_limit(*, api_key: ApiKey) -> int | None:
    """The requests a minute the key may make, or None when it is not limited.

    The key's own limit wins over ``API_RATE_LIMIT_PER_MINUTE``; 0 in either means no limit.
    """
    limit = api_key.rate_limit_per_minute
    if limit is None:
        limit = settings.API_RATE_LIMIT_PER_MINUTE
    return limit or None


def _count_script(backend: RedisCache) -> Script:
    script = _count_scripts.get(backend)
    if script is None:
        pool = backend._cache._get_connection_pool(write=True)  # type: ignore[attr-defined]
        script = _count_scripts[backend] = Redis(connection_pool=pool).register_script(_COUNT_SCRIPT)
    return script


def rate_window_count(*, api_key_id: int, window: int) -> int:
    """Count one request of the key in the window, and return how many the window has counted so far.

    On Redis, one round trip (``_COUNT_SCRIPT``). Other caches (the in-process one used without Redis)
    count through the cache API.
    """
    counter = f"api-rate:{api_key_id}:{window}"
    backend = caches[DEFAULT_CACHE_ALIAS]
    if isinstance(backend, RedisCache):
        key = backend.make_and_validate_key(counter)
        return int(_count_script(backend)(keys=[key], args=[COUNTER_TIMEOUT_SECONDS]))
    try:
        return cache.incr(counter)
    except ValueError:
        # No counter yet: this is the window's first request, unless another worker creates it first.
        pass
    if cache.add(counter, 1, timeout=COUNTER_TIMEOUT_SECONDS):
        return 1
    return cache.incr(counter)


class ApiKeyRateThrottle(BaseThrottle):
    """At most the key's limit of requests in each minute of the clock; the rest get 429 until it ends.

    Refused requests count too, which costs a client nothing more: the count starts again at the next
    minute whatever it reached. Requests without a key are left to authentication, which refuses them.
    """

    def __init__(self) -> None:
        self.seconds_until_next_window: float | None = None

    def allow_request(self, request: Request, view: "APIView") -> bool:
        api_key = request.auth
        if not isinstance(api_key, ApiKey):
            return True
        limit = api_key_rate_limit(api_key=api_key)
        if limit is None:
            return True
        now = time.time()
        window, elapsed = divmod(now, WINDOW_SECONDS)
        try:
            count = rate_window_count(api_key_id=api_key.pk, window=int(window))
        except RedisError as error:
            # The limit protects the service; an unreachable cache must not take the metering API down with
            # it. One line a request, no traceback: an outage would otherwise bury the log.
            logger.warning("API rate limit not applied, the cache is unreachable: %s", error)
            return True
        # On the Django request, which the middleware that writes the headers sees.
        request._request.rate_limit_status = RateLimitStatus(  # type: ignore[attr-defined]
            limit=limit,
            remaining=max(limit - count, 0),
            reset=int((window + 1) * WINDOW_SECONDS),
        )
        if count <= limit:
            return True
        self.seconds_until_next_window = WINDOW_SECONDS - elapsed
        return False

    def wait(self) -> float | None:
        """Seconds until the window ends; DRF sends them as ``Retry-After``."""
        return self.seconds_until_next_window
