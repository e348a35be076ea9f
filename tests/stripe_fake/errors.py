"""Stripe's error envelope, raised by handlers and turned into a response in one place (server.py)."""

from typing import Any


class StripeError(Exception):
    """An error answer: ``{"error": {"type", "code", "message", "param", "doc_url"}}`` with an HTTP status.

    ``stored`` follows Stripe's idempotency rule: a request whose params fail validation never started
    executing, so its answer is not saved against the Idempotency-Key and a corrected retry runs afresh.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        stored: bool = True,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.code = code
        self.param = param
        self.stored = stored
        self.headers = headers or {}
        # Fields some errors carry besides the usual ones: a card error's ``decline_code`` and ``payment_intent``.
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param:
            error["param"] = self.param
        error.update(self.extra)
        return {"error": error}


def parameter_missing(param: str) -> StripeError:
    return StripeError(
        f"Missing required param: {param}.", code="parameter_missing", param=param, stored=False
    )


def parameter_invalid(param: str, message: str, *, code: str | None = None) -> StripeError:
    return StripeError(message, code=code, param=param, stored=False)


def parameter_unknown(param: str) -> StripeError:
    # Stripe's own words, plus a hint: here the param may be real Stripe but not modelled by the fake.
    return StripeError(
        f"Received unknown parameter: {param} (not in Stripe's API, or not modelled by tests/stripe_fake)",
        code="parameter_unknown",
        param=param,
        stored=False,
    )


def resource_missing(kind: str, object_id: str, *, param: str = "id") -> StripeError:
    return StripeError(f"No such {kind}: '{object_id}'", status=404, code="resource_missing", param=param)
