"""The one place API errors get their shape: ``{"error": {"code": ..., "message": ..., "request_id": ...}}``."""

from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.db import DataError
from django.http import HttpRequest, JsonResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from psycopg.errors import NumericValueOutOfRange
from rest_framework import exceptions, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import exception_handler

from billing_app.api_requests import api_error_body, request_id_of
from billing_app.models import ApiKey
from billing_app.throttling import api_key_rate_limit
from core.errors import BillingError
from usage.api.fields import amount_string
from usage.errors import UsageRefused
from usage.rate_limits import RateLimited
from usage.selectors.upgrades import upgrade_for_refusal


def error_response(code: str, message: str, http_status: int, **extra: Any) -> Response:
    return Response({"error": {"code": code, "message": message, **extra}}, status=http_status)


def _first_message(detail: Any) -> str:
    if isinstance(detail, dict):
        field, value = next(iter(detail.items()))
        return f"{field}: {_first_message(value)}"
    if isinstance(detail, list) and detail:
        return _first_message(detail[0])
    return str(detail)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    response = _error_response_for(exc, context)
    if response is not None and isinstance(response.data, dict) and "error" in response.data:
        request = context.get("request")
        response.data["error"]["request_id"] = request_id_of(request._request) if request else None
    return response


def _error_response_for(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, RequestDataTooBig):
        return error_response(
            "request_too_large", "The body is larger than the 10 MB an event batch can need.", 413
        )
    if isinstance(exc, UsageRefused) and exc.upgrade_for is not None:
        return error_response(
            exc.code, exc.message, exc.http_status, **exc.details, upgrade=_upgrade(exc, context)
        )
    if isinstance(exc, RateLimited):
        refusal = error_response(exc.code, exc.message, exc.http_status, **exc.details)
        refusal["Retry-After"] = str(exc.retry_after)
        return refusal
    if isinstance(exc, BillingError):
        return error_response(exc.code, exc.message, exc.http_status, **exc.details)
    if isinstance(exc, NumericValueOutOfRange) or (
        isinstance(exc, DataError) and isinstance(exc.__cause__, NumericValueOutOfRange)
    ):
        # Inputs are bounded by their columns (usage.validation), but a total they make (a quantity times a
        # high unit price) can still pass its column; the request's transaction is rolled back. Bulk writes
        # use psycopg's COPY directly, so its error arrives unwrapped.
        return error_response(
            "out_of_range", "An amount this request would record is larger than can be stored.", 400
        )
    if isinstance(exc, exceptions.ParseError):
        return error_response("malformed_json", f"The body is not valid JSON: {exc.detail}", 400)
    if isinstance(exc, exceptions.ValidationError):
        return error_response("invalid_request", _first_message(exc.detail), 400, fields=exc.detail)
    if isinstance(exc, exceptions.Throttled):
        return _rate_limited_response(exc=exc, request=context.get("request"))
    response = exception_handler(exc, context)
    if response is None:
        return None
    codes = exc.get_codes() if isinstance(exc, exceptions.APIException) else "error"
    code = codes if isinstance(codes, str) else "error"
    if response.status_code == status.HTTP_401_UNAUTHORIZED and code == "not_authenticated":
        code = "authentication_required"
    response.data = {
        "error": {"code": code, "message": _first_message(response.data.get("detail", response.data))}
    }
    return response


def _rate_limited_response(*, exc: exceptions.Throttled, request: Request | None) -> Response:
    api_key = getattr(request, "auth", None)
    limit = api_key_rate_limit(api_key=api_key) if isinstance(api_key, ApiKey) else None
    what = f"This API key may make {limit:,} requests a minute" if limit else "This API key is rate limited"
    # Throttled rounds the wait up to whole seconds, the unit of Retry-After (its stubs leave ``wait`` out).
    wait: int | None = exc.wait  # type: ignore[attr-defined]
    when = f"retry in {wait} second{'' if wait == 1 else 's'}" if wait else "retry later"
    response = error_response("rate_limited", f"{what}; {when}.", status.HTTP_429_TOO_MANY_REQUESTS)
    if wait:
        response["Retry-After"] = str(wait)
    return response


@csrf_exempt  # like every API view: a POST to an unknown path is a 404, not CSRF's HTML 403 page
def api_route_not_found(request: HttpRequest, path: str = "") -> JsonResponse:
    """Any /api/ path no endpoint answers, so a client's typo gets the error shape, not an HTML page."""
    hint = " (API paths have no trailing slash)" if request.path.endswith("/") else ""
    return JsonResponse(
        api_error_body(
            code="not_found", message=f"No API endpoint at {request.path}{hint}.", request=request
        ),
        status=404,
    )


def _upgrade(refusal: UsageRefused, context: dict[str, Any]) -> dict[str, Any] | None:
    """The plan that would lift a cap or a plan's blocked overage, for the backend's own prompt (or null)."""
    version = upgrade_for_refusal(refusal)
    if version is None:
        return None
    request = context.get("request")
    url = reverse("settings-plan")
    return {
        "plan": version.plan.code,
        "name": version.plan.name,
        "price": amount_string(version.base_fee, version.currency),
        "currency": version.currency,
        "interval": version.interval,
        "url": request.build_absolute_uri(url) if request is not None else url,
    }
