"""A Python client for the billing metering API.

::

    from billing_client import Client

    billing = Client(api_key="sk_live_...", base_url="https://billing.example.com")
    with billing.reserve(customer="acme", meter="llm_tokens", quantity=4000) as hold:
        response = call_the_model()
        hold.commit(response.usage.total_tokens)
"""

from billing_client._version import VERSION
from billing_client.client import AsyncClient, Client
from billing_client.errors import (
    AccountFrozen,
    APIConnectionError,
    APIError,
    AuthenticationError,
    BillingError,
    BufferFull,
    Conflict,
    CorrectionUncovered,
    EntitlementLimitReached,
    HardLimitReached,
    IdempotencyKeyMismatch,
    IdempotencyKeyReused,
    InsufficientBalance,
    InvalidBatch,
    InvalidRequestError,
    LimitReached,
    NoSubscription,
    NotEntitled,
    NotFound,
    PeriodClosed,
    PermissionDenied,
    RateLimited,
    ReservationNotHeld,
    SubscriptionCanceled,
    UsageRefused,
)
from billing_client.pagination import AsyncPage, Page
from billing_client.reservations import AsyncHold, Hold, UncommittedReservationWarning
from billing_client.tokens import TokenUsage, input_tokens, output_tokens, token_usage, total_tokens

__version__ = VERSION

__all__ = [
    "APIConnectionError",
    "APIError",
    "AccountFrozen",
    "AsyncClient",
    "AsyncHold",
    "AsyncPage",
    "AuthenticationError",
    "BillingError",
    "BufferFull",
    "Client",
    "Conflict",
    "CorrectionUncovered",
    "EntitlementLimitReached",
    "HardLimitReached",
    "Hold",
    "IdempotencyKeyMismatch",
    "IdempotencyKeyReused",
    "InsufficientBalance",
    "InvalidBatch",
    "InvalidRequestError",
    "LimitReached",
    "NoSubscription",
    "NotEntitled",
    "NotFound",
    "Page",
    "PeriodClosed",
    "PermissionDenied",
    "RateLimited",
    "ReservationNotHeld",
    "SubscriptionCanceled",
    "TokenUsage",
    "UncommittedReservationWarning",
    "UsageRefused",
    "__version__",
    "input_tokens",
    "output_tokens",
    "token_usage",
    "total_tokens",
]
