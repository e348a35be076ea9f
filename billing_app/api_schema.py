"""What the OpenAPI schema says about every API operation: the error body, error statuses and headers.

A view's ``@extend_schema`` names its success body and the refusals only it gives (``errors(402, 404)``);
``ApiAutoSchema`` adds what any request can be answered, so no operation leaves one out:

- every operation: 400 (a malformed or invalid request), 401 (no or a wrong key), 403 (a publishable key
  outside its scope), 429 (over the key's rate limit);
- every write (``POST``, ``PUT``): also 409 (an ``Idempotency-Key`` reused for another request), 413 (a body
  over 10 MB) and 415 (a body that is not JSON), and the ``Idempotency-Key`` request header.

Every response documents ``Request-Id`` and the ``X-RateLimit-*`` headers (``billing_app.throttling``).
"""

from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import serializers

from billing_app.api_requests import REQUEST_ID_HEADER
from billing_app.idempotency import IDEMPOTENCY_HEADER, MAX_KEY_LENGTH, REPLAYED_HEADER
from billing_app.throttling import RATE_LIMIT_HEADER, RATE_LIMIT_REMAINING_HEADER, RATE_LIMIT_RESET_HEADER


class ApiUpgradeOffer(serializers.Serializer):
    plan = serializers.CharField(help_text="The plan's code, for `POST /customers/{id}/subscription`.")
    name = serializers.CharField()
    price = serializers.CharField(help_text="Its base fee per interval, in the currency's minor-unit places.")
    currency = serializers.CharField()
    interval = serializers.CharField()
    url = serializers.CharField(help_text="The customer's plan page.")


class ApiErrorDetail(serializers.Serializer):
    code = serializers.CharField(help_text="Stable and machine-readable, e.g. `insufficient_balance`.")
    message = serializers.CharField(help_text="For a person; may change.")
    request_id = serializers.CharField(
        allow_null=True, help_text="The request's `Request-Id`, to quote when reporting a problem."
    )
    param = serializers.CharField(required=False, help_text="The field or header the error is about.")
    max = serializers.CharField(required=False, help_text="With `out_of_range`: the largest value accepted.")
    # Named like Serializer.fields, which mypy sees; the metaclass takes declared fields off the class.
    fields = serializers.DictField(  # type: ignore[assignment]
        required=False, help_text="With `invalid_request`: the messages for each invalid field."
    )
    events = serializers.ListField(
        child=serializers.DictField(),
        required=False,
        help_text="With `invalid_batch` and `idempotency_key_reused` of an event batch: "
        "`{index, code, message}` for each event at fault.",
    )
    limit = serializers.CharField(
        required=False,
        help_text="With `entitlement_limit_reached`: the plan's cap; with `hard_limit_reached` for a meter: the "
        "customer's limit in units; with `rate_limited` by the plan: its requests a minute.",
    )
    meter = serializers.CharField(
        required=False,
        help_text="With `hard_limit_reached` for a meter's own limit, and `rate_limited` by the plan: the meter.",
    )
    retry_after = serializers.IntegerField(
        required=False, help_text="With `rate_limited` by the plan: whole seconds until the next minute."
    )
    valid_events = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        help_text="With `unknown_event_type`: the event types a webhook endpoint may subscribe to.",
    )
    upgrade = ApiUpgradeOffer(
        required=False,
        allow_null=True,
        help_text="With a `402` a plan could lift (a cap, or a plan that blocks overage): the cheapest public "
        "plan that would allow it; null when none would.",
    )


class ApiError(serializers.Serializer):
    """Every error answer: ``{"error": {"code", "message", "request_id", ...}}``."""

    error = ApiErrorDetail()


_ERRORS = {
    400: "The request is invalid: `malformed_json`, `invalid_request` (`fields` or `param` names what), "
    "`out_of_range` (`param`, `max`), `idempotency_key_mismatch`, `invalid_batch`, `invalid_cost`, "
    "`invalid_period`, `invalid_group_by`, `unknown_event_type` (`valid_events`).",
    401: "`authentication_required` (no key) or `invalid_api_key` (a wrong or revoked key).",
    402: "The customer may not use this now: `hard_limit_reached`, `insufficient_balance`, "
    "`account_frozen`, `not_entitled`, `entitlement_limit_reached`.",
    403: "`forbidden`: a publishable key asked for something outside its customer's usage and checks.",
    404: "`not_found`: no such customer, plan, meter, reservation, period or webhook endpoint.",
    409: "A conflict with the current state (`conflict`, `reservation_not_held`, `no_subscription`), or "
    "`idempotency_key_reused`: the `Idempotency-Key` answered a different request; nothing was done.",
    413: "`request_too_large`: the body is over 10 MB.",
    415: "`unsupported_media_type`: the body must be `application/json`.",
    429: "`rate_limited`: over the key's requests per minute, or over the plan's rate limit on the meter "
    "(`meter`, `limit`, `retry_after`); `Retry-After` says when to try again.",
    503: "`payments_unavailable`: Stripe is not connected or did not answer; nothing was charged.",
}
_ALWAYS = (400, 401, 403, 429)
_WRITES = (409, 413, 415)
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH"})


def errors(*statuses: int) -> dict[int, OpenApiResponse]:
    """The error answers an operation gives beyond those every one does, for ``@extend_schema(responses=)``."""
    return {status: OpenApiResponse(ApiError, description=_ERRORS[status]) for status in statuses}


def _header(
    name: str, description: str, response: bool | list[int] = True, kind: OpenApiTypes = OpenApiTypes.STR
) -> OpenApiParameter:
    return OpenApiParameter(name, kind, OpenApiParameter.HEADER, description=description, response=response)


_RESPONSE_HEADERS = [
    _header(REQUEST_ID_HEADER, "The request's id, also in error bodies and our logs."),
    _header(
        RATE_LIMIT_HEADER,
        "Requests the key may make each minute (absent when it is not limited, and on a 401).",
        kind=OpenApiTypes.INT,
    ),
    _header(RATE_LIMIT_REMAINING_HEADER, "Requests the key has left this minute.", kind=OpenApiTypes.INT),
    _header(
        RATE_LIMIT_RESET_HEADER,
        "When the minute's count starts again, in Unix seconds.",
        kind=OpenApiTypes.INT,
    ),
    _header(
        "Retry-After",
        "Whole seconds until the key (or the plan's rate limit) allows requests again.",
        [429],
        OpenApiTypes.INT,
    ),
]
_IDEMPOTENCY_HEADERS = [
    OpenApiParameter(
        IDEMPOTENCY_HEADER,
        {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH, "pattern": r"\S"},
        OpenApiParameter.HEADER,
        description="Makes the write safe to retry: the same key and request get the first answer again.",
    ),
    _header(REPLAYED_HEADER, "`true` on an answer replayed for an `Idempotency-Key`."),
]


def _link(operation_id: str, description: str, **parameters: str) -> dict[str, Any]:
    return {"operationId": operation_id, "parameters": parameters, "description": description}


_CUSTOMER_ID = "$response.body#/external_id"
_RESERVATION_ID = "$response.body#/id"
_CUSTOMER_LINKS = {
    "GetCustomer": _link("v1_customers_retrieve", "The customer.", external_id=_CUSTOMER_ID),
    "GetUsage": _link(
        "v1_customers_usage_retrieve", "The customer's usage this period.", external_id=_CUSTOMER_ID
    ),
    "ListEvents": _link("v1_customers_events_list", "The customer's usage events.", external_id=_CUSTOMER_ID),
    "ListCredits": _link(
        "v1_customers_credits_list", "The customer's credit grants.", external_id=_CUSTOMER_ID
    ),
    "ListLedger": _link(
        "v1_customers_ledger_list", "The customer's credit ledger.", external_id=_CUSTOMER_ID
    ),
}
_RESERVATION_LINKS = {
    "CommitReservation": _link(
        "v1_reservations_commit_create", "Record what the work used.", reservation_id=_RESERVATION_ID
    ),
    "ReleaseReservation": _link(
        "v1_reservations_release_create", "Cancel the hold.", reservation_id=_RESERVATION_ID
    ),
    "GetReservation": _link("v1_reservations_retrieve", "The reservation.", reservation_id=_RESERVATION_ID),
}
# OpenAPI links: where an answer's ids lead next, by operation id and status. Clients and the stateful
# Schemathesis phase follow them (a customer made, then its usage read; a hold taken, then committed).
OPERATION_LINKS: dict[str, dict[str, dict[str, Any]]] = {
    "v1_customers_create": {"201": _CUSTOMER_LINKS},
    "v1_customers_retrieve": {"200": _CUSTOMER_LINKS},
    "v1_reservations_create": {"201": _RESERVATION_LINKS, "200": _RESERVATION_LINKS},
    "v1_reservations_retrieve": {"200": _RESERVATION_LINKS},
}


class ApiAutoSchema(AutoSchema):
    """drf-spectacular's schema, with the errors, headers and links that every operation shares."""

    def get_operation(self, *args: Any, **kwargs: Any) -> Any:
        operation = super().get_operation(*args, **kwargs)
        if operation is None:
            return None
        for status, links in OPERATION_LINKS.get(operation["operationId"], {}).items():
            response = operation["responses"][status]
            # Keep "GetCustomer" off the customer's own answer: a link back to the operation itself.
            response["links"] = {
                name: link for name, link in links.items() if link["operationId"] != operation["operationId"]
            }
        return operation

    def get_override_parameters(self) -> list[Any]:
        parameters = [*super().get_override_parameters(), *_RESPONSE_HEADERS]
        if self.method in _WRITE_METHODS:
            parameters += _IDEMPOTENCY_HEADERS
        return parameters

    def _map_serializer_field(self, field: Any, direction: Any, bypass_extensions: bool = False) -> Any:
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        # A blank string is refused (no blank ids, names or keys); say so, as the validation does.
        if (
            direction == "request"
            and isinstance(field, serializers.CharField)
            and not field.allow_blank
            and schema.get("type") == "string"
        ):
            schema.setdefault("minLength", 1)
            if field.trim_whitespace:
                # Surrounding spaces are trimmed before the check, so only spaces is blank too.
                schema.setdefault("pattern", r"\S")
        return schema

    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses: dict[str, Any] = super()._get_response_bodies(direction)
        shared = _ALWAYS + (_WRITES if self.method in _WRITE_METHODS else ())
        for status, response in errors(*shared).items():
            if str(status) not in responses:
                responses[str(status)] = self._get_response_for_code(response, str(status), None, direction)
        return dict(sorted(responses.items()))
