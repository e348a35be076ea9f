"""What every API request gets around its view: a request id, one transaction, and JSON even for a crash.

The request id is a fresh UUID, sent back in the ``Request-Id`` header and in every error body, and
logged, so a client's report ("request 3f2c… failed") finds its log line.

A write to the API runs in one transaction that is rolled back whenever the answer is an error: a
response that fails after a service wrote (a reservation held, then the response crashed) must not
leave the write behind while the client is told it failed. A write with an ``Idempotency-Key`` holds the
key's lock around that and stores its answer in the same transaction (``billing_app.idempotency``): the
write's own changes sit in a savepoint, so an error answer undoes them and still keeps the key.
"""

import logging
import time
import uuid
from collections.abc import Callable

from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse

from billing_app.idempotency import (
    idempotency_key_of,
    idempotent_replay,
    idempotent_write_claim,
    idempotent_write_record,
)
from billing_app.throttling import rate_limit_status_of
from core.errors import BillingError

logger = logging.getLogger("billing_app.api")

API_PREFIX = "/api/"
REQUEST_ID_HEADER = "Request-Id"
# Reads change nothing; sparing them the transaction keeps /check and the usage reads at one round trip.
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Questions asked by POST that write nothing: "may this customer use this?" and "what would it cost?".
_QUESTIONS = frozenset({"/api/v1/check", "/api/v1/estimate"})
# The writes an Idempotency-Key applies to; any other method (TRACE, DELETE) no endpoint has is answered 405
# and must not claim the key, or the real write sent with it next would be refused as a reuse.
_IDEMPOTENT_METHODS = frozenset({"POST", "PUT", "PATCH"})


def request_may_write(request: HttpRequest) -> bool:
    """Whether the request is one that may write: not a read, and not one of the questions asked by POST."""
    return not (request.method in _READ_METHODS or request.path in _QUESTIONS)


def request_id_of(request: HttpRequest) -> str | None:
    return getattr(request, "request_id", None)


def api_error_body(*, code: str, message: str, request: HttpRequest) -> dict[str, dict[str, str | None]]:
    return {"error": {"code": code, "message": message, "request_id": request_id_of(request)}}


class ApiRequestMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path.startswith(API_PREFIX):
            return self.get_response(request)
        request.request_id = str(uuid.uuid4())  # type: ignore[attr-defined]
        started = time.monotonic()
        response = self._write(request) if request_may_write(request) else self.get_response(request)
        response[REQUEST_ID_HEADER] = request.request_id  # type: ignore[attr-defined]
        if rate_limit := rate_limit_status_of(request):
            for header, value in rate_limit.headers().items():
                response[header] = value
        logger.info(
            "api %s %s %s %s %.0fms",
            request.request_id,  # type: ignore[attr-defined]
            request.method,
            request.path,
            response.status_code,
            (time.monotonic() - started) * 1000,
        )
        return response

    def _write(self, request: HttpRequest) -> HttpResponse:
        key = idempotency_key_of(request) if request.method in _IDEMPOTENT_METHODS else None
        if key is None:
            return self._run_write(request)
        with transaction.atomic():
            try:
                write = idempotent_write_claim(request=request, key=key)
            except BillingError as error:
                body = api_error_body(code=error.code, message=error.message, request=request)
                return JsonResponse({"error": {**body["error"], **error.details}}, status=error.http_status)
            if write is None:
                return self._run_write(request)
            if write.stored is not None:
                return idempotent_replay(write.stored)
            response = self._run_write(request)
            idempotent_write_record(write=write, response=response)
        return response

    def _run_write(self, request: HttpRequest) -> HttpResponse:
        with transaction.atomic():
            response = self.get_response(request)
            if response.status_code >= 400:
                transaction.set_rollback(True)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        """An error no handler turned into a 4xx: logged with its id, answered as JSON (never HTML)."""
        if not request.path.startswith(API_PREFIX):
            return None
        logger.exception("api %s failed", request_id_of(request), exc_info=exception)
        return JsonResponse(
            api_error_body(
                code="internal_error",
                message="Something went wrong on our side and nothing was changed; quote the request id if "
                "you report it.",
                request=request,
            ),
            status=500,
        )
