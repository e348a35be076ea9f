"""Verifying the webhooks the billing server posts to your backend.

Each POST carries ``Billing-Signature: t=<unix seconds>,v1=<hex>``, where the hex is the HMAC-SHA256 of
``"<t>.<raw body>"`` keyed with the endpoint's signing secret (``whsec_…``, the whole string, as UTF-8).
Check it against the raw body, before parsing it, and refuse a timestamp older than ``tolerance`` seconds,
so a recorded request cannot be replayed later::

    from billing_client.webhooks import WebhookSignatureError, verify_signature

    try:
        event = verify_signature(request.body, request.headers["Billing-Signature"], WEBHOOK_SECRET)
    except WebhookSignatureError:
        return HttpResponse(status=400)
    if already_seen(event["id"]):  # a retry or a resend carries the same id
        return HttpResponse(status=200)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

SIGNATURE_HEADER = "Billing-Signature"
DEFAULT_TOLERANCE_SECONDS = 300


class WebhookSignatureError(Exception):
    """The body was not signed with the secret, was changed, or was signed too long ago."""


def compute_signature(payload: bytes | str, secret: str, timestamp: int) -> str:
    """The ``v1`` hex digest of ``payload`` signed at ``timestamp``."""
    body = payload.encode() if isinstance(payload, str) else payload
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def verify_signature(
    payload: bytes | str,
    header: str,
    secret: str,
    tolerance: int | None = DEFAULT_TOLERANCE_SECONDS,
    *,
    now: float | None = None,
) -> dict[str, Any]:
    """Check ``header`` (the ``Billing-Signature`` value) against the raw ``payload`` and return the event.

    Raises ``WebhookSignatureError`` when no ``v1`` signature matches, or when the timestamp is more than
    ``tolerance`` seconds from ``now`` (``None``: not checked). Compared in constant time.
    """
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError as error:
                raise WebhookSignatureError("The signature's timestamp is not a number.") from error
        elif key == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        raise WebhookSignatureError("The header has no timestamp (t=) or no v1 signature.")
    expected = compute_signature(payload, secret, timestamp)
    if not any(hmac.compare_digest(expected, signature) for signature in signatures):
        raise WebhookSignatureError("No signature matches the body and the secret.")
    current = time.time() if now is None else now
    if tolerance is not None and abs(current - timestamp) > tolerance:
        raise WebhookSignatureError(f"The signature is more than {tolerance} seconds old.")
    event: dict[str, Any] = json.loads(payload)
    return event
