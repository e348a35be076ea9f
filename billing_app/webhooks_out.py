"""Webhooks to the operator's backend: endpoints, the outbox of deliveries, signing, sending, retrying.

(Stripe's webhooks *to us* are ``billing_app.stripe.webhooks``; this module is the other direction.)

- **Recorded with what happened.** ``webhook_event_emit`` writes the event and one ``WebhookDelivery`` per
  enabled endpoint subscribed to its type, in the caller's transaction: a rolled-back write sends nothing.
  Sending is queued with ``transaction.on_commit``; no POST is ever made inside a transaction.
  ``customers.events.customer_event_announce`` (spend limits, freezes, plan caps, wallets, credit expiry)
  reaches it through ``webhook_event_on_customer_event``; billing_app's own jobs call it directly.
- **Signed** as Stripe signs its own: ``Billing-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
  "<t>.<body>" keyed with the endpoint's secret>`` (``webhook_signature``; docs/webhooks.md has the
  receiver's side, and ``billing_client.webhooks.verify_signature`` implements it).
- **Delivered at least once, in order per customer.** A 2xx answer is delivered; anything else is retried
  after 1, 2, 4, ... minutes, at most an hour apart, for ``WEBHOOK_RETRY_HOURS``, then given up. Every try
  posts the same body, so the same event ``id``. A customer's delivery waits while an earlier one of theirs
  to the same endpoint is pending. The sweep (``webhook_deliveries_send``, every minute) sends whatever is
  due, so a lost task or a dead worker only delays a delivery.
- **A dead endpoint is turned off.** When every try to an endpoint has failed for
  ``WEBHOOK_DISABLE_AFTER_HOURS``, it is disabled and operators are told; its pending deliveries wait
  until it is enabled again.
"""

import hashlib
import hmac
import json
import logging
import secrets
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone

from billing_app.models import (
    OperatorAlertKind,
    WebhookAttempt,
    WebhookDelivery,
    WebhookDeliveryStatus,
    WebhookEndpoint,
    WebhookEvent,
)
from billing_app.operator_alerts import operator_alert_raise
from core.errors import BillingError, InvalidInput, NotFound
from customers.events import CustomerEventType
from customers.models import Customer

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "Billing-Signature"
EVENT_ID_HEADER = "Billing-Event-Id"
EVENT_TYPE_HEADER = "Billing-Event-Type"
USER_AGENT = "billing-webhooks/1"
FIRST_RETRY_SECONDS = 60
MAX_RETRY_SECONDS = 3600
# What an attempt keeps of the endpoint's answer: enough to read an error page's reason.
RESPONSE_EXCERPT_CHARS = 2000
# A sender holds a delivery this much longer than its POST may take, so no other sender posts it meanwhile.
LEASE_MARGIN_SECONDS = 60
# One sweep sends at most this many, so a long backlog is shared between runs and workers.
SWEEP_LIMIT = 500
MAX_URL_LENGTH = 2000


class UnknownEventType(BillingError):
    code = "unknown_event_type"


# --- endpoints ------------------------------------------------------------------------------------------


def webhook_url_problem(url: str) -> str | None:
    """Why ``url`` cannot receive webhooks, or None.

    Loopback and private addresses are allowed on purpose: an operator may run the receiver beside the
    billing server. Credentials in the URL are refused: they would show in admin and logs.
    """
    if len(url) > MAX_URL_LENGTH:
        return f"must be at most {MAX_URL_LENGTH} characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- reading it raises on a port that is not a number
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "must name a host"
    if parts.username is not None or parts.password is not None:
        return "must not hold a user name or password"
    if any(char.isspace() or ord(char) < 32 for char in url):
        return "must not hold spaces or control characters"
    return None


def webhook_event_types_check(events: list[str]) -> list[str]:
    """The subscribed types, each once, in the order given; ``UnknownEventType`` names the valid ones."""
    valid = list(CustomerEventType.values)
    unknown = [event for event in events if event not in valid]
    if unknown:
        raise UnknownEventType(
            f"Unknown event type {unknown[0]!r}; the event types are {', '.join(valid)}.",
            param="events",
            valid_events=valid,
        )
    if not events:
        raise InvalidInput("events must name at least one event type.", param="events")
    return list(dict.fromkeys(events))


def webhook_endpoint_create(*, url: str, events: list[str], description: str = "") -> WebhookEndpoint:
    """A new enabled endpoint with a fresh signing secret (which the caller shows once)."""
    if problem := webhook_url_problem(url):
        raise InvalidInput(f"url {problem}.", param="url")
    return WebhookEndpoint.objects.create(
        url=url, events=webhook_event_types_check(events), description=description
    )


def webhook_endpoint_delete(*, endpoint_id: int) -> None:
    """Remove the endpoint with its deliveries: nothing more is sent to it."""
    deleted, _ = WebhookEndpoint.objects.filter(pk=endpoint_id).delete()
    if not deleted:
        raise NotFound(f"No webhook endpoint {endpoint_id}.", param="id")


# --- recording an event ---------------------------------------------------------------------------------


def webhook_event_body(
    *, event_id: str, event_type: str, created: datetime, customer: Customer | None, data: dict[str, Any]
) -> str:
    """The JSON every endpoint receives: ``{id, type, created, customer, data}``, amounts as strings."""
    payload = {
        "id": event_id,
        "type": event_type,
        "created": int(created.timestamp()),
        "customer": customer.external_id if customer is not None else None,
        "data": data,
    }
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def webhook_event_emit(
    *, event_type: str, customer: Customer | None = None, data: dict[str, Any]
) -> WebhookEvent | None:
    """Record the event for every enabled endpoint subscribed to it, in the caller's transaction, and queue
    the sending for after it commits. Returns the event, or None when no endpoint wants it."""
    if event_type not in CustomerEventType.values:
        raise ValueError(f"Unknown webhook event type {event_type!r}")
    endpoint_ids = list(
        WebhookEndpoint.objects.filter(enabled=True, events__contains=[event_type]).values_list(
            "pk", flat=True
        )
    )
    if not endpoint_ids:
        return None
    now = timezone.now()
    event_id = "evt_" + secrets.token_hex(12)
    event = WebhookEvent.objects.create(
        event_id=event_id,
        type=event_type,
        customer=customer,
        body=webhook_event_body(
            event_id=event_id, event_type=event_type, created=now, customer=customer, data=data
        ),
        created_at=now,
    )
    WebhookDelivery.objects.bulk_create(
        WebhookDelivery(
            event=event, endpoint_id=endpoint_id, customer=customer, next_attempt_at=now, created_at=now
        )
        for endpoint_id in endpoint_ids
    )
    webhook_deliveries_send_queue()
    return event


def webhook_event_on_customer_event(
    *, event_type: str, customer: Customer, data: dict[str, Any], **_: Any
) -> None:
    """``customers.events.customer_event_announced``'s receiver (connected in ``BillingAppConfig.ready``)."""
    webhook_event_emit(event_type=event_type, customer=customer, data=data)


def webhook_deliveries_send_queue() -> None:
    """Send what is due once the current transaction commits (at once outside one)."""
    from billing_app.tasks import webhook_deliveries_send_task  # the tasks module imports this one

    transaction.on_commit(webhook_deliveries_send_task.delay, robust=True)


# --- signing --------------------------------------------------------------------------------------------


def webhook_signature(*, secret: str, timestamp: int, body: str) -> str:
    """The ``Billing-Signature`` header: ``t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>.<body>">``."""
    signed = f"{timestamp}.{body}".encode()
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


# --- sending --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SendReport:
    delivered: int = 0
    failed_attempts: int = 0


def deliveries_due(*, now: datetime) -> QuerySet[WebhookDelivery]:
    """Pending deliveries whose time has come, to enabled endpoints, with no earlier pending delivery of the
    same customer to the same endpoint (that one goes first), oldest first."""
    earlier_pending = WebhookDelivery.objects.filter(
        endpoint=OuterRef("endpoint"),
        customer=OuterRef("customer"),
        status=WebhookDeliveryStatus.PENDING,
        pk__lt=OuterRef("pk"),
    )
    return (
        WebhookDelivery.objects.filter(
            status=WebhookDeliveryStatus.PENDING, next_attempt_at__lte=now, endpoint__enabled=True
        )
        .exclude(Exists(earlier_pending))
        .order_by("pk")
    )


def webhook_delivery_claim(*, now: datetime) -> WebhookDelivery | None:
    """Take the next due delivery: lease it past the POST's timeout, so no other sender takes it meanwhile.

    ``skip_locked``: two senders claiming at once take different rows instead of waiting for each other.
    """
    with transaction.atomic():
        delivery = (
            deliveries_due(now=now)
            .select_for_update(skip_locked=True, of=("self",))
            .select_related("event", "endpoint")
            .first()
        )
        if delivery is None:
            return None
        lease = settings.WEBHOOK_TIMEOUT_SECONDS + LEASE_MARGIN_SECONDS
        delivery.next_attempt_at = now + timedelta(seconds=lease)
        delivery.save(update_fields=["next_attempt_at"])
    return delivery


@dataclass(frozen=True)
class PostResult:
    status_code: int | None
    body: str
    error: str
    duration_ms: int

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def webhook_post(*, endpoint: WebhookEndpoint, event: WebhookEvent) -> PostResult:
    """POST the event's body, signed now, to the endpoint. Never raises: a failure is a result."""
    body = event.body
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_ID_HEADER: event.event_id,
        EVENT_TYPE_HEADER: event.type,
        SIGNATURE_HEADER: webhook_signature(secret=endpoint.secret, timestamp=int(time.time()), body=body),
    }
    # The scheme was checked when the endpoint was saved (http or https only).
    request = urllib.request.Request(endpoint.url, data=body.encode(), method="POST", headers=headers)  # noqa: S310
    started = time.monotonic()
    status_code: int | None = None
    answer, error = b"", ""
    try:
        with urllib.request.urlopen(request, timeout=settings.WEBHOOK_TIMEOUT_SECONDS) as response:  # noqa: S310
            status_code = response.status
            answer = response.read(RESPONSE_EXCERPT_CHARS)
    except urllib.error.HTTPError as refusal:
        status_code = refusal.code
        answer = refusal.read(RESPONSE_EXCERPT_CHARS)
    except Exception as failure:  # a timeout, a refused connection, a TLS error: the endpoint did not answer
        error = f"{type(failure).__name__}: {failure}"[:RESPONSE_EXCERPT_CHARS]
    duration_ms = int((time.monotonic() - started) * 1000)
    return PostResult(
        status_code=status_code,
        body=answer.decode(errors="replace").replace("\x00", "")[:RESPONSE_EXCERPT_CHARS],
        error=error,
        duration_ms=duration_ms,
    )


def retry_delay(attempts: int) -> timedelta:
    """After the ``attempts``-th failure: 1 minute, doubling, at most an hour."""
    return timedelta(seconds=min(FIRST_RETRY_SECONDS * 2 ** min(attempts - 1, 20), MAX_RETRY_SECONDS))


def webhook_attempt_record(*, delivery: WebhookDelivery, result: PostResult, now: datetime) -> None:
    """Keep the attempt and move the delivery on: delivered, retried later, or given up; and the endpoint's
    run of failures: cleared by a success, and after ``WEBHOOK_DISABLE_AFTER_HOURS`` the endpoint is off."""
    endpoint = delivery.endpoint
    with transaction.atomic():
        WebhookAttempt.objects.create(
            delivery=delivery,
            attempted_at=now,
            status_code=result.status_code,
            response_body=result.body,
            error=result.error,
            duration_ms=result.duration_ms,
            succeeded=result.succeeded,
        )
        delivery.attempts += 1
        delivery.last_attempt_at = now
        delivery.last_status_code = result.status_code
        delivery.last_error = result.error or ("" if result.succeeded else f"HTTP {result.status_code}")
        if result.succeeded:
            delivery.status = WebhookDeliveryStatus.DELIVERED
            delivery.delivered_at = now
        elif now >= delivery.created_at + timedelta(hours=settings.WEBHOOK_RETRY_HOURS):
            delivery.status = WebhookDeliveryStatus.FAILED
        else:
            delivery.next_attempt_at = now + retry_delay(delivery.attempts)
        delivery.save()
        endpoints = WebhookEndpoint.objects.filter(pk=endpoint.pk)
        if result.succeeded:
            endpoints.filter(failing_since__isnull=False).update(failing_since=None)
            return
        # Conditional updates: concurrent senders agree on when the failures began and disable it once.
        endpoints.filter(failing_since__isnull=True).update(failing_since=now)
        give_up_before = now - timedelta(hours=settings.WEBHOOK_DISABLE_AFTER_HOURS)
        reason = (
            f"Every delivery failed for {settings.WEBHOOK_DISABLE_AFTER_HOURS} hours "
            f"(last: {delivery.last_error})."
        )[:300]
        if endpoints.filter(enabled=True, failing_since__lte=give_up_before).update(
            enabled=False, disabled_reason=reason
        ):
            operator_alert_raise(
                kind=OperatorAlertKind.WEBHOOK_ENDPOINT_DISABLED,
                message=f"The webhook endpoint {endpoint.url} was turned off: {reason} Its pending "
                "deliveries wait; enable it in admin once it answers again.",
                data={"endpoint": endpoint.pk, "url": endpoint.url},
            )


def webhook_deliveries_send(*, limit: int = SWEEP_LIMIT) -> SendReport:
    """Send due deliveries one at a time, each claimed in its own short transaction and posted outside any."""
    if transaction.get_connection().in_atomic_block:
        raise RuntimeError("Webhooks are never sent inside a transaction.")
    delivered = failed = 0
    for _ in range(limit):
        delivery = webhook_delivery_claim(now=timezone.now())
        if delivery is None:
            break
        result = webhook_post(endpoint=delivery.endpoint, event=delivery.event)
        webhook_attempt_record(delivery=delivery, result=result, now=timezone.now())
        if result.succeeded:
            delivered += 1
        else:
            failed += 1
            logger.info(
                "Webhook %s to %s failed: %s",
                delivery.event.event_id,
                delivery.endpoint.url,
                delivery.last_error,
            )
    return SendReport(delivered=delivered, failed_attempts=failed)


def webhook_deliveries_resend(*, deliveries: QuerySet[WebhookDelivery]) -> int:
    """Post the selected deliveries again, with their events' ids, as soon as they are due. Returns how many."""
    count = deliveries.update(status=WebhookDeliveryStatus.PENDING, next_attempt_at=timezone.now())
    if count:
        webhook_deliveries_send_queue()
    return count
