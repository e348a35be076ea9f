"""Errors raised by the client.

Every answer the API refuses becomes one exception carrying the API's stable ``code``, its ``message``,
the HTTP status and the ``Request-Id`` to quote when reporting a problem. The class is picked by
``code`` first (so ``except InsufficientBalance`` is exact), then by status, so a code this client does
not know yet still lands in the right family (``UsageRefused`` for any 402).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class BillingError(Exception):
    """The base of every error this client raises."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        http_status: int | None = None,
        request_id: str | None = None,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.http_status = http_status
        self.request_id = request_id
        self.body: dict[str, Any] = dict(body or {})
        self.headers: dict[str, str] = dict(headers or {})

    @property
    def param(self) -> str | None:
        """The field or header the error is about, when the API names one."""
        param = self.body.get("param")
        return param if isinstance(param, str) else None

    @property
    def fields(self) -> dict[str, Any]:
        """With ``invalid_request`` from a body's validation: the messages for each invalid field."""
        fields = self.body.get("fields")
        return dict(fields) if isinstance(fields, dict) else {}

    def __str__(self) -> str:
        parts = [self.message]
        if self.code:
            parts.insert(0, f"[{self.code}]")
        if self.request_id:
            parts.append(f"(request {self.request_id})")
        return " ".join(parts)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(message={self.message!r}, code={self.code!r}, "
            f"http_status={self.http_status!r}, request_id={self.request_id!r})"
        )


class APIConnectionError(BillingError):
    """The API could not be reached, or the connection failed before an answer came back."""


class APIError(BillingError):
    """A fault on the server's side (5xx), or an answer this client cannot read."""


class InvalidRequestError(BillingError):
    """400 (and 413): the request is malformed or invalid; ``param`` or ``body["fields"]`` says where."""


class InvalidBatch(InvalidRequestError):
    """400 ``invalid_batch``: nothing was written; ``events`` lists ``{index, code, message}``."""

    @property
    def events(self) -> list[dict[str, Any]]:
        return list(self.body.get("events") or [])


class IdempotencyKeyMismatch(InvalidRequestError):
    """The ``Idempotency-Key`` header and the body's ``idempotency_key`` differ."""


class AuthenticationError(BillingError):
    """401: no API key, or a wrong or revoked one."""


class PermissionDenied(BillingError):
    """403: a publishable key asked for something outside its customer."""


class NotFound(BillingError):
    """404: no such customer, plan, meter or reservation."""


class Conflict(BillingError):
    """409: the request conflicts with the current state."""


class ReservationNotHeld(Conflict):
    """The reservation was committed, released or expired."""


class NoSubscription(Conflict):
    """The customer has no subscription to rate usage against."""


class PeriodClosed(Conflict):
    """The event counts in a billing period that has ended and been invoiced: it can no longer be corrected.
    Grant the customer a credit for the difference instead."""


class CorrectionUncovered(Conflict):
    """A correction would add credit-priced usage on a plan that sells no credits: grant credits, then correct."""


class IdempotencyKeyReused(Conflict):
    """The idempotency key answered a different request, or names an event with other content."""

    @property
    def events(self) -> list[dict[str, Any]]:
        return list(self.body.get("events") or [])


class RateLimited(BillingError):
    """429: the API key made more requests this minute than its limit allows."""

    @property
    def retry_after(self) -> float | None:
        """Seconds the server asked us to wait (its ``Retry-After`` header)."""
        return retry_after_seconds(self.headers)


class UsageRefused(BillingError):
    """402: the customer may not use this now. Also raised for a single event answered ``refused``."""


class LimitReached(UsageRefused):
    """A limit on the customer's usage is reached: their hard spend limit or the plan's cap."""


class HardLimitReached(LimitReached):
    """Usage charges would pass the customer's hard limit this period."""


class EntitlementLimitReached(LimitReached):
    """The plan's per-period cap on this meter is used up."""


class InsufficientBalance(UsageRefused):
    """Allowance, credits and wallet don't cover it, and overage is not allowed."""


class AccountFrozen(UsageRefused):
    """Billable usage is paused (circuit breaker or an operator)."""


class NotEntitled(UsageRefused):
    """The plan does not include this meter or feature."""


class SubscriptionCanceled(UsageRefused):
    """The subscription is canceled: new usage, checks and holds are refused."""


class BufferFull(BillingError):
    """The local event buffer holds as many events as it may; nothing of this call was buffered."""


_BY_CODE: dict[str, type[BillingError]] = {
    "invalid_request": InvalidRequestError,
    "malformed_json": InvalidRequestError,
    "out_of_range": InvalidRequestError,
    "request_too_large": InvalidRequestError,
    "invalid_batch": InvalidBatch,
    "idempotency_key_mismatch": IdempotencyKeyMismatch,
    "authentication_required": AuthenticationError,
    "invalid_api_key": AuthenticationError,
    "forbidden": PermissionDenied,
    "not_found": NotFound,
    "conflict": Conflict,
    "reservation_not_held": ReservationNotHeld,
    "no_subscription": NoSubscription,
    "period_closed": PeriodClosed,
    "correction_uncovered": CorrectionUncovered,
    "idempotency_key_reused": IdempotencyKeyReused,
    "rate_limited": RateLimited,
    "hard_limit_reached": HardLimitReached,
    "entitlement_limit_reached": EntitlementLimitReached,
    "insufficient_balance": InsufficientBalance,
    "account_frozen": AccountFrozen,
    "not_entitled": NotEntitled,
    "subscription_canceled": SubscriptionCanceled,
}

_BY_STATUS: dict[int, type[BillingError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    402: UsageRefused,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    413: InvalidRequestError,
    429: RateLimited,
}


def error_class_for(*, code: str | None, http_status: int) -> type[BillingError]:
    if code and code in _BY_CODE:
        return _BY_CODE[code]
    if http_status in _BY_STATUS:
        return _BY_STATUS[http_status]
    if 400 <= http_status < 500:
        return InvalidRequestError
    return APIError


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` in seconds; the API sends whole seconds (an HTTP date is not used by it)."""
    for name, value in headers.items():
        if name.lower() == "retry-after":
            try:
                seconds = float(value)
            except ValueError:
                return None
            return seconds if seconds >= 0 else None
    return None


def refused_event_error(result: Mapping[str, Any]) -> BillingError:
    """The exception for a single event answered ``refused``: recorded nothing, as a 402 would."""
    code = result.get("code")
    code = code if isinstance(code, str) else None
    error_class = error_class_for(code=code, http_status=402)
    return error_class(
        str(result.get("message") or "The event was refused."), code=code, http_status=402, body=result
    )
