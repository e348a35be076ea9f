"""The base of every business error: a stable machine-readable code and a human message.

The lowest app owns it so that every app can raise these without importing upward; the API layer
(``billing_app.api_errors``) turns any of them into ``{"error": {"code", "message"}}``.
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


class PlanVersionInUse(BillingError):
    code = "plan_version_in_use"
    http_status = 409
