"""The one Stripe client, built from settings and shared by everything in the process.

``STRIPE_API_KEY`` empty means Stripe is not connected: the app runs, nothing is sent (the outbox keeps
everything), and the admin says so. ``STRIPE_API_BASE`` points every API host at one address, which is how
the tests and the offline demo reach the fake Stripe server.
"""

from functools import lru_cache
from typing import Any

import stripe
from django.conf import settings

DEFAULT_API_BASE = "https://api.stripe.com"
# The SDK retries a dropped connection, a 409, a 429 or a 5xx with exponential backoff, reusing the request's
# idempotency key. Two retries ride out a blip; an outage is left to the Celery task's own retries, whose
# backoff grows to minutes, so a worker is never stuck sleeping inside one call.
DEFAULT_MAX_NETWORK_RETRIES = 2
# Seconds per HTTP request. Kept well under the outbox lease (``STRIPE_OUTBOX_LEASE_SECONDS``) so that a
# call and its retries end before another drain may take the same meter event.
DEFAULT_TIMEOUT_SECONDS = 20


class StripeNotConnected(RuntimeError):
    """``STRIPE_API_KEY`` is not set."""

    code = "stripe_not_connected"


def stripe_connected() -> bool:
    return bool(settings.STRIPE_API_KEY)


def stripe_client() -> stripe.StripeClient:
    """The process's client; raises ``StripeNotConnected`` without an API key."""
    if not stripe_connected():
        raise StripeNotConnected("Stripe is not connected: STRIPE_API_KEY is not set.")
    return _client(
        settings.STRIPE_API_KEY,
        (settings.STRIPE_API_BASE or DEFAULT_API_BASE).rstrip("/"),
        getattr(settings, "STRIPE_MAX_NETWORK_RETRIES", DEFAULT_MAX_NETWORK_RETRIES),
        getattr(settings, "STRIPE_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS),
    )


@lru_cache(maxsize=8)
def _client(api_key: str, api_base: str, max_network_retries: int, timeout: float) -> stripe.StripeClient:
    # Against real Stripe each API family keeps its own host (meter event streams live on
    # meter-events.stripe.com); a custom base (the fake) serves them all.
    addresses: Any = {}
    if api_base != DEFAULT_API_BASE:
        addresses = {name: api_base for name in ("api", "connect", "files", "meter_events")}
    return stripe.StripeClient(
        api_key,
        base_addresses=addresses,
        max_network_retries=max_network_retries,
        http_client=stripe.RequestsClient(timeout=timeout),
    )
