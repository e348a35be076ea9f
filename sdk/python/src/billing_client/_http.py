"""Sending one API request: headers, retries with backoff, and errors from answers.

A write's ``Idempotency-Key`` is chosen once, before the first attempt, and every retry resends it with
the same body, so the server applies the write once however many attempts reach it: a retry after a
lost answer is replayed the first answer instead of running again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from billing_client._version import VERSION
from billing_client.errors import (
    APIConnectionError,
    APIError,
    BillingError,
    error_class_for,
    retry_after_seconds,
)

logger = logging.getLogger("billing_client")

USER_AGENT = f"billing-client-python/{VERSION}"
IDEMPOTENCY_HEADER = "Idempotency-Key"
REQUEST_ID_HEADER = "Request-Id"


@dataclass(frozen=True)
class ApiRequest:
    method: str
    path: str
    body: dict[str, Any] | None = None
    query: dict[str, str] = field(default_factory=dict)
    idempotency_key: str | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait before sending a request again.

    Retried: connection errors and timeouts, 429 and 5xx. The wait doubles from ``initial_delay`` up to
    ``max_delay``, with jitter so that clients refused together do not come back together; a 429's
    ``Retry-After`` is honoured up to ``max_retry_after`` (the API's count starts again each minute).
    """

    max_network_retries: int = 2
    initial_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 60.0

    def delay(self, *, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first)."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        backoff = min(self.max_delay, self.initial_delay * 2.0 ** (retry - 1))
        # Between half and all of the backoff: spread out, never longer than the cap.
        return backoff * (0.5 + random.random() / 2)


def is_retryable_status(status: int) -> bool:
    return status == 429 or status >= 500


def error_from_response(response: httpx.Response) -> BillingError:
    """The exception for an answer that is not a 2xx, from its ``{"error": {...}}`` body."""
    request_id = response.headers.get(REQUEST_ID_HEADER)
    try:
        payload = response.json()
    except ValueError:
        payload = None
    detail = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(detail, dict):
        return APIError(
            f"The API answered {response.status_code} without an error body.",
            http_status=response.status_code,
            request_id=request_id,
            headers=dict(response.headers),
        )
    code = detail.get("code") if isinstance(detail.get("code"), str) else None
    error_class = error_class_for(code=code, http_status=response.status_code)
    return error_class(
        str(detail.get("message") or f"The API answered {response.status_code}."),
        code=code,
        http_status=response.status_code,
        request_id=detail.get("request_id") or request_id,
        body=detail,
        headers=dict(response.headers),
    )


def _body_of(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise APIError(
            "The API answered with a body that is not JSON.",
            http_status=response.status_code,
            request_id=response.headers.get(REQUEST_ID_HEADER),
        ) from exc


class _Transport:
    def __init__(self, *, api_key: str, base_url: str, retry: RetryPolicy) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
        }

    def _build(self, http: httpx.Client | httpx.AsyncClient, request: ApiRequest) -> httpx.Request:
        headers = dict(self._headers)
        if request.idempotency_key is not None:
            headers[IDEMPOTENCY_HEADER] = request.idempotency_key
        return http.build_request(
            request.method,
            f"{self.base_url}{request.path}",
            json=request.body,
            params=request.query or None,
            headers=headers,
        )

    def _next_delay(
        self, *, request: ApiRequest, retry: int, outcome: httpx.Response | Exception, policy: RetryPolicy
    ) -> float | None:
        """Seconds before the next attempt, or None when there is none left or it would not help."""
        if retry > policy.max_network_retries:
            return None
        if isinstance(outcome, httpx.Response):
            if not is_retryable_status(outcome.status_code):
                return None
            retry_after = retry_after_seconds(outcome.headers) if outcome.status_code == 429 else None
            what = str(outcome.status_code)
        else:
            retry_after = None
            what = type(outcome).__name__
        delay = policy.delay(retry=retry, retry_after=retry_after)
        logger.info(
            "billing API %s %s: %s; retry %d of %d in %.2fs",
            request.method,
            request.path,
            what,
            retry,
            policy.max_network_retries,
            delay,
        )
        return delay

    @staticmethod
    def _outcome(request: ApiRequest, outcome: httpx.Response | Exception) -> Any:
        if isinstance(outcome, Exception):
            raise APIConnectionError(
                f"Could not reach the billing API for {request.method} {request.path}: {outcome}"
            ) from outcome
        if outcome.is_success:
            return _body_of(outcome)
        raise error_from_response(outcome)


class SyncTransport(_Transport):
    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        retry: RetryPolicy,
        timeout: float,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(api_key=api_key, base_url=base_url, retry=retry)
        self._owns_http = http_client is None
        self.http = http_client or httpx.Client(timeout=timeout)

    def request(self, request: ApiRequest, *, retry_policy: RetryPolicy | None = None) -> Any:
        retry = 0
        while True:
            outcome: httpx.Response | Exception
            try:
                outcome = self.http.send(self._build(self.http, request))
            except httpx.TransportError as exc:
                outcome = exc
            retry += 1
            delay = self._next_delay(
                request=request, retry=retry, outcome=outcome, policy=retry_policy or self.retry
            )
            if delay is None:
                return self._outcome(request, outcome)
            time.sleep(delay)

    def close(self) -> None:
        if self._owns_http:
            self.http.close()


class AsyncTransport(_Transport):
    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        retry: RetryPolicy,
        timeout: float,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(api_key=api_key, base_url=base_url, retry=retry)
        self._owns_http = http_client is None
        self.http = http_client or httpx.AsyncClient(timeout=timeout)

    async def request(self, request: ApiRequest, *, retry_policy: RetryPolicy | None = None) -> Any:
        retry = 0
        while True:
            outcome: httpx.Response | Exception
            try:
                outcome = await self.http.send(self._build(self.http, request))
            except httpx.TransportError as exc:
                outcome = exc
            retry += 1
            delay = self._next_delay(
                request=request, retry=retry, outcome=outcome, policy=retry_policy or self.retry
            )
            if delay is None:
                return self._outcome(request, outcome)
            await asyncio.sleep(delay)

    async def close(self) -> None:
        if self._owns_http:
            await self.http.aclose()
