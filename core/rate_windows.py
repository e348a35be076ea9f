"""Counting requests in fixed one-minute windows of the clock, in the cache (Redis in production).

The one home of the counting that both rate limits use: the per-API-key limit of the metering API
(``billing_app.throttling``) and a plan's limit on how fast a customer may use a meter
(``usage.rate_limits``). A window is one counter, named by what it counts and the minute it counts in,
added to atomically, so concurrent requests on any number of app servers are counted exactly.
"""

from weakref import WeakKeyDictionary

from django.core.cache import DEFAULT_CACHE_ALIAS, cache, caches
from django.core.cache.backends.redis import RedisCache
from redis import Redis
from redis.commands.core import Script

WINDOW_SECONDS = 60
# A window's counter outlives its minute, so that an app server whose clock is a little behind still counts
# in it rather than in a new counter. Once its minute is over nobody counts in it any more (unless app
# servers' clocks differ by more than a minute).
COUNTER_TIMEOUT_SECONDS = 2 * WINDOW_SECONDS

# Count and, on the window's first count, set the expiry: one round trip, atomic, so a counter can never be
# left without an expiry (Django's RedisCache ``incr`` is EXISTS then INCRBY, two trips, and the counter
# could expire between them and come back with none).
_COUNT_SCRIPT = """
local count = redis.call('INCRBY', KEYS[1], ARGV[2])
if count == tonumber(ARGV[2]) then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count
"""
# One Redis client and script per cache backend (Django keeps one backend per thread): Django's RedisCache
# builds a new client for every call, which cost more CPU than the round trip itself.
_count_scripts: "WeakKeyDictionary[RedisCache, tuple[Redis, Script]]" = WeakKeyDictionary()


def _redis_of(backend: RedisCache) -> tuple[Redis, Script]:
    found = _count_scripts.get(backend)
    if found is None:
        pool = backend._cache._get_connection_pool(write=True)  # type: ignore[attr-defined]
        client = Redis(connection_pool=pool)
        found = _count_scripts[backend] = (client, client.register_script(_COUNT_SCRIPT))
    return found


def window_of(now: float) -> tuple[int, float]:
    """The window a Unix time counts in, and the seconds left until it ends."""
    window, elapsed = divmod(now, WINDOW_SECONDS)
    return int(window), WINDOW_SECONDS - elapsed


def window_count(*, counter: str, window: int, add: int = 1) -> int:
    """Add ``add`` to ``counter``'s count in ``window`` and return the window's count after it.

    On Redis, one round trip (``_COUNT_SCRIPT``). Other caches (the in-process one used without Redis)
    count through the cache API. Raises ``redis.RedisError`` when Redis is unreachable.
    """
    name = f"{counter}:{window}"
    backend = caches[DEFAULT_CACHE_ALIAS]
    if isinstance(backend, RedisCache):
        key = backend.make_and_validate_key(name)
        _, script = _redis_of(backend)
        return int(script(keys=[key], args=[COUNTER_TIMEOUT_SECONDS, add]))
    try:
        return cache.incr(name, add)
    except ValueError:
        # No counter yet: this is the window's first count, unless another worker creates it first.
        pass
    if cache.add(name, add, timeout=COUNTER_TIMEOUT_SECONDS):
        return add
    return cache.incr(name, add)


def window_peek(*, counter: str, window: int) -> int:
    """The count of ``counter`` in ``window`` so far, without adding to it."""
    name = f"{counter}:{window}"
    backend = caches[DEFAULT_CACHE_ALIAS]
    if isinstance(backend, RedisCache):
        client, _ = _redis_of(backend)
        return int(client.get(backend.make_and_validate_key(name)) or 0)
    return int(cache.get(name) or 0)
