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

from django.conf import settings
from redis import RedisError
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from billing_app.models import ApiKey
from core.rate_windows import COUNTER_TIMEOUT_SECONDS as COUNTER_TIMEOUT_SECONDS  # the tests read it here
from core.rate_windows import WINDOW_SECONDS, window_count, window_of

if TYPE_CHECKING:
    # rest_framework.views imports this module while it defines APIView (DEFAULT_THROTTLE_CLASSES).
    from rest_framework.views import APIView

logger = logging.getLogger(__name__)

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


def rate_window_count(*, api_key_id: int, window: int) -> int:
    """Count one request of the key in the window, and return how many the window has counted so far."""
    return window_count(counter=f"api-rate:{api_key_id}", window=window)


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
        window, seconds_left = window_of(time.time())
        try:
            count = rate_window_count(api_key_id=api_key.pk, window=window)
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
        self.seconds_until_next_window = seconds_left
        return False

    def wait(self) -> float | None:
        """Seconds until the window ends; DRF sends them as ``Retry-After``."""
        return self.seconds_until_next_window
