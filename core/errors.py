"""The base of every business error: a stable machine-readable code and a human message.

The API layer (``billing_app.api_errors``) turns any of them into ``{"error": {"code", "message"}}``;
each app defines its own errors on these (``usage.errors``, ``plans.errors``).
"""

from typing import Any


class BillingError(Exception):
    code = "billing_error"
    http_status = 400

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFound(BillingError):
    code = "not_found"
    http_status = 404


class Conflict(BillingError):
    code = "conflict"
    http_status = 409


class InvalidInput(BillingError):
    code = "invalid_request"


class OutOfRange(BillingError):
    """A number beyond what can be stored or counted; ``param`` names it and ``max`` is the bound."""

    code = "out_of_range"


class IdempotencyKeyReused(Conflict):
    """An idempotency key already answered a different request, or recorded a different event."""

    code = "idempotency_key_reused"
