"""Posting signed Stripe events to the app, as Stripe does."""

import json
import time
from typing import Any

from django.conf import settings
from django.test import Client

from tests.stripe_fake import signature_header

URL = "/stripe/webhook"


def signed_post(
    client: Client, payload: dict[str, Any] | str, *, secret: str | None = None, timestamp: int | None = None
) -> Any:
    body = payload if isinstance(payload, str) else json.dumps(payload)
    header = signature_header(body, secret or settings.STRIPE_WEBHOOK_SECRET, timestamp or int(time.time()))
    return client.post(URL, body, content_type="application/json", HTTP_STRIPE_SIGNATURE=header)


def invoice_event(
    event_id: str,
    event_type: str,
    *,
    invoice_id: str,
    customer: str,
    total: int,
    created: int,
    status: str = "draft",
    lines: list[dict[str, Any]] | None = None,
    period: tuple[int, int] | None = None,
) -> dict[str, Any]:
    start, end = period or (created - 30 * 86_400, created)
    return {
        "id": event_id,
        "object": "event",
        "type": event_type,
        "created": created,
        "data": {
            "object": {
                "id": invoice_id,
                "object": "invoice",
                "customer": customer,
                "currency": "usd",
                "status": status,
                "total": total,
                "created": created,
                "period_start": start,
                "period_end": end,
                "billing_reason": "subscription_cycle",
                "lines": {"object": "list", "data": lines or [], "has_more": False},
                "status_transitions": {"finalized_at": created if status != "draft" else None},
            }
        },
    }
