"""How fast a plan lets a customer use a meter: an entitlement's ``rate_limit_per_minute``.

Counted like the per-API-key limit (``core.rate_windows``): a fixed one-minute window of the clock, one
counter per (customer, meter) or, for a limit per user, per (customer, meter, member), added to atomically
in Redis, so concurrent requests on any number of app servers are admitted exactly up to the limit.

What counts (docs/api.md, "Plan rate limits"): each new reservation and each new event of the meter
counts one, whatever its quantity; a replayed idempotency key does not count again, and an event whose
timestamp is more than a minute old (usage reported late, or history loaded in bulk) is not counted or
limited: the limit is on how fast work is done now, and such an event records work already done.
``/check`` reads the count without adding to it, so checking before the work and recording it counts the
work once. Requests refused past the limit count too, as the key limit counts them: the count starts
again with the next minute whatever it reached.
"""

import hashlib
import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from redis import RedisError

from core.errors import BillingError
from core.rate_windows import WINDOW_SECONDS, window_count, window_of, window_peek
from customers.models import Customer, Subscription
from plans.models import Meter, RateLimitScope
from plans.terms import PlanTerms, plan_terms_cached

logger = logging.getLogger(__name__)

# An event stamped further back than this records work already done: it is not rate limited.
LIVE_EVENT_AGE = timedelta(seconds=WINDOW_SECONDS)


class RateLimited(BillingError):
    """The plan's rate limit on the meter is reached this minute. The API answers 429 with ``Retry-After``."""

    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str, *, retry_after: int, **details: object) -> None:
        super().__init__(message, retry_after=retry_after, **details)
        self.retry_after = retry_after


@dataclass(frozen=True)
class PlanRateLimit:
    meter: Meter
    per_minute: int
    per: str  # a RateLimitScope value

    def counter(self, *, customer_id: int, user: str | None) -> str:
        """The window counter's name. Per user, users are told apart by a digest of their external id (any
        characters, up to 120 of them); requests without a user share one count."""
        name = f"plan-rate:{customer_id}:{self.meter.pk}"
        if self.per != RateLimitScope.USER:
            return name
        return f"{name}:{hashlib.sha256((user or '').encode()).hexdigest()[:24]}"

    def refusal(self, *, seconds_left: float) -> RateLimited:
        retry_after = max(math.ceil(seconds_left), 1)
        who = "each user" if self.per == RateLimitScope.USER else "this customer"
        return RateLimited(
            f"The plan allows {self.meter.name} {self.per_minute:,} times a minute for {who}; retry in "
            f"{retry_after} second{'' if retry_after == 1 else 's'}.",
            retry_after=retry_after,
            meter=self.meter.key,
            limit=str(self.per_minute),
        )


def plan_rate_limit(*, terms: PlanTerms, meter: Meter) -> PlanRateLimit | None:
    """The plan's rate limit on ``meter`` (the entitlement whose feature is the meter's key), or None."""
    entitlement = terms.entitlements.get(meter.key)
    if entitlement is None or entitlement.rate_limit_per_minute is None:
        return None
    return PlanRateLimit(
        meter=meter, per_minute=entitlement.rate_limit_per_minute, per=entitlement.rate_limit_per
    )


def rate_limit_take(
    *, terms: PlanTerms, customer: Customer, meter: Meter, user: str | None, now: datetime
) -> None:
    """Count one request of the meter (a reservation); raises ``RateLimited`` past the plan's limit."""
    limit = plan_rate_limit(terms=terms, meter=meter)
    if limit is None:
        return
    window, seconds_left = window_of(now.timestamp())
    try:
        count = window_count(counter=limit.counter(customer_id=customer.pk, user=user), window=window)
    except RedisError as error:
        _unavailable(error)
        return
    if count > limit.per_minute:
        raise limit.refusal(seconds_left=seconds_left)


def rate_limit_peek(*, customer: Customer, meter: Meter, user: str | None, now: datetime) -> None:
    """What ``/check`` asks: raises ``RateLimited`` when this minute's window is already full. Counts nothing.

    ``customer`` comes with its subscription (``customer_and_meter``); without one there is no plan to
    limit, and the decision that follows says so.
    """
    try:
        subscription = customer.subscription
    except Subscription.DoesNotExist:
        return
    limit = plan_rate_limit(terms=plan_terms_cached(subscription.plan_version_id), meter=meter)
    if limit is None:
        return
    window, seconds_left = window_of(now.timestamp())
    try:
        count = window_peek(counter=limit.counter(customer_id=customer.pk, user=user), window=window)
    except RedisError as error:
        _unavailable(error)
        return
    if count >= limit.per_minute:
        raise limit.refusal(seconds_left=seconds_left)


@dataclass(frozen=True)
class RateLimitedEvent:
    """An event of a batch to count: its position in the batch, meter, user and timestamp."""

    index: int
    meter: Meter
    user: str | None
    timestamp: datetime


def rate_limit_events(
    *, terms: PlanTerms, customer: Customer, events: Sequence[RateLimitedEvent], now: datetime
) -> dict[int, RateLimited]:
    """Count a batch's new live events against the plan's limits; the refusal of each one past its limit.

    One round trip per counter the batch touches, not per event: the events of a counter are added
    together and admitted in batch order up to what the window had left.
    """
    groups: dict[str, list[RateLimitedEvent]] = defaultdict(list)
    limits: dict[str, PlanRateLimit] = {}
    for event in events:
        limit = plan_rate_limit(terms=terms, meter=event.meter)
        if limit is None or event.timestamp < now - LIVE_EVENT_AGE:
            continue
        counter = limit.counter(customer_id=customer.pk, user=event.user)
        groups[counter].append(event)
        limits[counter] = limit
    refused: dict[int, RateLimited] = {}
    window, seconds_left = window_of(now.timestamp())
    for counter, grouped in groups.items():
        limit = limits[counter]
        try:
            after = window_count(counter=counter, window=window, add=len(grouped))
        except RedisError as error:
            _unavailable(error)
            return {}
        admitted = max(limit.per_minute - (after - len(grouped)), 0)
        for event in grouped[admitted:]:
            refused[event.index] = limit.refusal(seconds_left=seconds_left)
    return refused


def _unavailable(error: RedisError) -> None:
    # Like the key limit: the limit protects the service, and an unreachable cache must not take the
    # metering API down with it. Money is still guarded by the database (caps, limits, balances).
    logger.warning("Plan rate limit not applied, the cache is unreachable: %s", error)
