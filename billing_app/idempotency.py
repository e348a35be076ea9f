"""Idempotency of the API's writes: the ``Idempotency-Key`` header.

Any write to the API (``POST``, ``PUT``) may carry ``Idempotency-Key``. The first request with a key runs,
and its answer (status and body) is stored with a fingerprint of the request: the API key, method, path and
canonical body (``core.fingerprints``). A retry with the same key and the same request is answered the
stored status and body, with ``Idempotent-Replayed: true``, and runs nothing; the same key with a different
request is refused with ``409 idempotency_key_reused`` and changes nothing. Keys are scoped to the API key
that sent them.

The stored answer is written in the write's own transaction (``billing_app.api_requests``), so a crash
keeps neither. Requests with the same key wait for each other: each takes a transaction-level advisory
lock on the key before looking it up, so the first runs while the others wait, then find its answer and
replay it. Waiting, rather than refusing a key in use (Stripe's 409), gives each retry the answer itself: a
client that retried because its first try timed out is told the result, not a second error.

Only final answers are stored: a 2xx, and a 4xx from the endpoint (a refused top-up stays refused for its
key; a new attempt takes a new key). A 5xx, and a refusal given before the endpoint ran (401, 403, 405,
429), are not, so their retry runs.
"""

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from billing_app.api_auth import ApiKeyAuthentication
from billing_app.models import ApiKey, IdempotencyKey
from core.errors import BillingError, IdempotencyKeyReused, InvalidInput
from core.fingerprints import canonical_json, fingerprint

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
# Endpoints whose body has its own ``idempotency_key`` (reservations, credit grants, a single event).
BODY_KEY_FIELD = "idempotency_key"
# Refusals given before the endpoint ran: the request did nothing, so a retry must be able to run it.
# 405 too: a method the endpoint does not have ran nothing, and must not take the key from the real write.
_NOT_RUN_STATUSES = frozenset({401, 403, 405, 429})


class IdempotencyKeyMismatch(BillingError):
    code = "idempotency_key_mismatch"


@dataclass(frozen=True)
class IdempotentWrite:
    """A write under an idempotency key whose lock this transaction holds."""

    api_key: ApiKey
    key: str
    fingerprint: str
    method: str
    path: str
    stored: IdempotencyKey | None  # the answer of the first request with this key, if it ran


def idempotency_key_of(request: HttpRequest) -> str | None:
    return request.headers.get(IDEMPOTENCY_HEADER)


def idempotent_write_claim(*, request: HttpRequest, key: str) -> IdempotentWrite | None:
    """Lock ``key`` for this request and find what an earlier request with it was answered.

    Call inside the write's transaction, before the write: the lock is held until it ends. Returns None
    when the request has no valid API key or an unreadable body, which the endpoint refuses itself (and a
    refusal is not stored). Raises ``IdempotencyKeyReused`` when the key answered a different request.
    """
    if not key.strip() or len(key) > MAX_KEY_LENGTH:
        raise InvalidInput(
            f"{IDEMPOTENCY_HEADER} must be 1 to {MAX_KEY_LENGTH} characters.", param=IDEMPOTENCY_HEADER
        )
    try:
        body, canonical_body = _body_of(request.body)
    except RequestDataTooBig:
        return None
    # Locked before authenticating: authentication may update the API key's row, and every other write
    # takes that row lock before its own; taking this lock first keeps the order the same everywhere.
    _lock(authorization=request.headers.get("Authorization", ""), key=key)
    api_key = _api_key_of(request)
    if api_key is None:
        return None
    # After authenticating: a request without a valid key is refused 401 whatever its body says.
    if isinstance(body, dict) and body.get(BODY_KEY_FIELD) not in (None, key):
        raise IdempotencyKeyMismatch(
            f"The body's {BODY_KEY_FIELD} differs from the {IDEMPOTENCY_HEADER} header; send one, or the "
            "same key in both.",
            param=BODY_KEY_FIELD,
        )
    method, path = request.method or "", request.get_full_path()
    request_fingerprint = fingerprint([api_key.pk, method, path, canonical_body])
    stored = IdempotencyKey.objects.filter(api_key=api_key, key=key).first()
    if stored is not None and stored.fingerprint != request_fingerprint:
        raise IdempotencyKeyReused(
            f"This {IDEMPOTENCY_HEADER} was used for a different request ({stored.method} {stored.path}"
            f"{', another body' if (stored.method, stored.path) == (method, path) else ''}); nothing was done. "
            "Use a new key for a new request."
        )
    return IdempotentWrite(api_key, key, request_fingerprint, method, path, stored)


def idempotent_write_record(*, write: IdempotentWrite, response: HttpResponse) -> None:
    """Store the write's answer under its key, in the write's transaction, if the answer is final."""
    status = response.status_code
    if status >= 500 or status in _NOT_RUN_STATUSES:
        return
    IdempotencyKey.objects.create(
        api_key=write.api_key,
        key=write.key,
        fingerprint=write.fingerprint,
        method=write.method,
        path=write.path,
        status_code=status,
        response_body=response.content.decode(),
        created_at=timezone.now(),
    )


def idempotent_replay(stored: IdempotencyKey) -> HttpResponse:
    """The stored answer, as it was first sent (API answers are JSON)."""
    response = HttpResponse(stored.response_body, status=stored.status_code, content_type="application/json")
    response[REPLAYED_HEADER] = "true"
    return response


def idempotency_keys_prune(*, now: datetime | None = None, batch_size: int = 10_000) -> int:
    """Delete keys older than ``IDEMPOTENCY_KEY_RETENTION_DAYS``, a batch per statement; returns how many.

    Small batches keep each delete short, so a large backlog never holds locks for long.
    """
    cutoff = (now or timezone.now()) - timedelta(days=settings.IDEMPOTENCY_KEY_RETENTION_DAYS)
    deleted = 0
    while True:
        batch = list(
            IdempotencyKey.objects.filter(created_at__lt=cutoff).values_list("pk", flat=True)[:batch_size]
        )
        if not batch:
            return deleted
        deleted += IdempotencyKey.objects.filter(pk__in=batch).delete()[0]


def _body_of(raw: bytes) -> tuple[Any, str]:
    """The parsed JSON body (numbers as Decimal) and its canonical text; for a body that is not JSON (or
    nests too deep to walk), None and a digest of its bytes."""
    if not raw:
        return None, ""
    try:
        body = json.loads(raw, parse_float=Decimal)
        return body, canonical_json(body)
    except (ValueError, RecursionError):
        return None, "sha256:" + hashlib.sha256(raw).hexdigest()


def _lock(*, authorization: str, key: str) -> None:
    """Wait for, then hold until this transaction ends, the lock of ``key`` under this caller's credentials."""
    digest = hashlib.sha256(f"{authorization}\n{key}".encode()).digest()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [int.from_bytes(digest[:8], "big", signed=True)])


def _api_key_of(request: HttpRequest) -> ApiKey | None:
    """The API key the request authenticates with, by the API's own authentication; None if it does not."""
    try:
        authenticated = ApiKeyAuthentication().authenticate(Request(request))
    except AuthenticationFailed:
        return None
    return authenticated[1] if authenticated else None
