"""``POST /stripe/webhook``: verify, store, and process each Stripe event once.

1. The ``Stripe-Signature`` header is checked against ``STRIPE_WEBHOOK_SECRET`` (and
   ``STRIPE_THIN_WEBHOOK_SECRET`` if a separate event destination sends the thin v2 events); a forged body
   or a timestamp more than five minutes old (Stripe's replay tolerance) or ahead is refused with 400.
2. Every verified event is stored (``StripeWebhookEvent``, unique by Stripe's event id) before anything else.
3. It is processed in one transaction that first locks its row and skips it if already processed, so a
   replay, or two deliveries racing each other, change things once. A handler error rolls back, is recorded
   on the row, and answers 500 so Stripe delivers again. Unknown types are stored and marked processed.

Network calls (fetching a thin event's details, an invoice's remaining lines) happen before the transaction;
operator notices go out after it commits.
"""

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import stripe
from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing_app.auto_top_up import auto_top_up_intent_settled
from billing_app.models import (
    OperatorAlertKind,
    StripeDimensionMeter,
    StripeInvoice,
    StripeInvoiceLine,
    StripeInvoiceStatus,
    StripeMeterEvent,
    StripeWebhookEvent,
)
from billing_app.operator_alerts import invoice_spike_check, operator_alert_raise
from billing_app.stripe.checkout import checkout_session_apply, checkout_session_retrieve
from billing_app.stripe.client import StripeNotConnected, stripe_client
from billing_app.stripe.reconciliation import invoice_compare
from core.money import currency_exponent
from customers.models import Customer, Subscription, SubscriptionStatus
from customers.services import subscription_roll_period
from plans.models import DimensionRate, Meter, Price

logger = logging.getLogger(__name__)

# Stripe's default: a signature more than five minutes old is a replay.
SIGNATURE_TOLERANCE_SECONDS = 300
METER_ERROR_TYPES = ("v1.billing.meter.error_report_triggered", "billing.meter.error_report_triggered")

Handler = Callable[[dict[str, Any], dict[str, Any]], None]


# --- the view --------------------------------------------------------------------------------------------


def _webhook_secrets() -> list[str]:
    secrets = [settings.STRIPE_WEBHOOK_SECRET, getattr(settings, "STRIPE_THIN_WEBHOOK_SECRET", "")]
    return [secret for secret in secrets if secret]


def signature_verify(payload: bytes, header: str | None) -> None:
    """Raise ``stripe.SignatureVerificationError`` unless one of our secrets signed it recently."""
    error: stripe.SignatureVerificationError | None = None
    for secret in _webhook_secrets():
        try:
            stripe.WebhookSignature.verify_header(payload, header, secret, SIGNATURE_TOLERANCE_SECONDS)
        except stripe.SignatureVerificationError as failure:
            error = failure
            continue
        _signed_at_not_ahead(header or "")
        return
    raise error or stripe.SignatureVerificationError("No webhook secret is configured.", header)


def _signed_at_not_ahead(header: str) -> None:
    """The SDK refuses only old signatures. One dated ahead of our clock by more than the tolerance was
    made by someone who holds the secret and wants it to stay replayable for longer, or by a broken clock."""
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t" and value.isdigit() and int(value) > time.time() + SIGNATURE_TOLERANCE_SECONDS:
            raise stripe.SignatureVerificationError("The signature is dated in the future.", header)


def _error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> JsonResponse:
    payload = request.body
    try:
        signature_verify(payload, request.headers.get("Stripe-Signature"))
    except stripe.SignatureVerificationError as error:
        logger.warning("Refused a Stripe webhook: %s", error)
        return _error(400, "invalid_signature", "The Stripe signature is missing, wrong or too old.")
    try:
        body = json.loads(payload)
        event_id, event_type = str(body["id"]), str(body["type"])
    except (ValueError, KeyError, TypeError):
        return _error(400, "invalid_payload", "The body is not a Stripe event.")
    row = webhook_event_store(event_id=event_id, event_type=event_type, payload=body)
    if row.processed_at is not None:
        return JsonResponse({"received": True, "status": "duplicate"})
    try:
        outcome = webhook_event_process(event_id=row.pk)
    except Exception as error:
        logger.exception("Stripe event %s (%s) failed", event_id, event_type)
        StripeWebhookEvent.objects.filter(pk=row.pk).update(error=f"{type(error).__name__}: {error}")
        return _error(500, "processing_failed", "The event was stored but could not be processed; retry.")
    return JsonResponse({"received": True, "status": outcome})


# --- storing and processing ------------------------------------------------------------------------------


def webhook_event_store(*, event_id: str, event_type: str, payload: dict[str, Any]) -> StripeWebhookEvent:
    """Keep the event (the first copy wins: a concurrent insert of the same id finds the stored one)."""
    row, _ = StripeWebhookEvent.objects.get_or_create(
        stripe_event_id=event_id,
        defaults={"type": event_type, "payload": payload, "thin": payload.get("object") == "v2.core.event"},
    )
    return row


def webhook_event_process(*, event_id: int) -> str:
    """Process a stored event once: "processed", "ignored" (unknown type) or "duplicate"."""
    row = StripeWebhookEvent.objects.get(pk=event_id)
    if row.processed_at is not None:
        return "duplicate"
    handler = HANDLERS.get(row.type)
    prepared = _prepare(row) if handler else {}
    with transaction.atomic():
        row = StripeWebhookEvent.objects.select_for_update().get(pk=event_id)
        if row.processed_at is not None:
            return "duplicate"
        if handler is not None:
            handler(row.payload, prepared)
        row.processed_at = timezone.now()
        row.attempts += 1
        row.error = ""
        row.save(update_fields=["processed_at", "attempts", "error"])
    return "processed" if handler else "ignored"


def _prepare(row: StripeWebhookEvent) -> dict[str, Any]:
    """What a handler needs from Stripe beyond the payload, fetched before the transaction opens."""
    if row.type in METER_ERROR_TYPES:
        try:
            return {"event": stripe_client().v2.core.events.retrieve(row.stripe_event_id).to_dict()}
        except StripeNotConnected:
            return {}
    obj = row.payload.get("data", {}).get("object", {})
    if row.type.startswith("checkout.session.") and obj.get("id"):
        # Fulfilment trusts Stripe's session as it is now, with its PaymentIntent and card, not the snapshot.
        try:
            return {"session": checkout_session_retrieve(stripe_session_id=obj["id"])}
        except StripeNotConnected:
            return {}
    lines = obj.get("lines") or {}
    if row.type.startswith("invoice.") and lines.get("has_more"):
        invoice_lines = stripe_client().v1.invoices.lines.list(obj["id"], {"limit": 100}).auto_paging_iter()
        return {"lines": [line.to_dict() for line in invoice_lines]}
    return {}


# --- invoices --------------------------------------------------------------------------------------------


_STATUS_RANK = {
    StripeInvoiceStatus.DRAFT: 0,
    StripeInvoiceStatus.OPEN: 1,
    StripeInvoiceStatus.UNCOLLECTIBLE: 2,
    StripeInvoiceStatus.PAID: 3,
    StripeInvoiceStatus.VOID: 3,
}


def _moment(timestamp: int | None) -> datetime | None:
    return datetime.fromtimestamp(timestamp, UTC) if timestamp is not None else None


def _major_units(minor: int, currency: str) -> Decimal:
    return Decimal(minor).scaleb(-currency_exponent(currency))


def _metered_price_ids() -> set[str]:
    ids = set(Price.objects.exclude(stripe_price_id="").values_list("stripe_price_id", flat=True))
    ids |= set(DimensionRate.objects.exclude(stripe_price_id="").values_list("stripe_price_id", flat=True))
    return ids


def _line_price_id(line: dict[str, Any]) -> str | None:
    details = (line.get("pricing") or {}).get("price_details") or {}
    price = details.get("price") or line.get("price")
    return price.get("id") if isinstance(price, dict) else price


def _invoice_subscription_id(obj: dict[str, Any]) -> str:
    details = (obj.get("parent") or {}).get("subscription_details") or {}
    return details.get("subscription") or obj.get("subscription") or ""


def _invoice_record(
    obj: dict[str, Any], prepared: dict[str, Any], *, payment_failed: bool = False
) -> StripeInvoice:
    """Mirror the invoice as this event shows it: status, amounts, hosted link and lines.

    Deliveries may come out of order: an event older than what is stored (a late ``invoice.created`` after
    ``invoice.paid``) leaves the status, amounts and lines as they are.
    """
    currency = obj["currency"]
    lines = prepared.get("lines") or (obj.get("lines") or {}).get("data") or []
    metered = _metered_price_ids()
    usage_minor = sum(line["amount"] for line in lines if _line_price_id(line) in metered)
    existing = StripeInvoice.objects.select_for_update().filter(stripe_invoice_id=obj["id"]).first()
    status = StripeInvoiceStatus(obj["status"])
    stale = existing is not None and _STATUS_RANK[StripeInvoiceStatus(existing.status)] > _STATUS_RANK[status]
    transitions = obj.get("status_transitions") or {}
    finalized = _moment(transitions.get("finalized_at"))
    total = obj["total"]
    values: dict[str, Any] = {
        "customer": Customer.objects.filter(stripe_customer_id=obj["customer"]).first(),
        "stripe_customer_id": obj["customer"],
        "stripe_subscription_id": _invoice_subscription_id(obj),
        "billing_reason": obj.get("billing_reason") or "",
        "currency": currency,
        "period_start": _moment(obj["period_start"]),
        "period_end": _moment(obj["period_end"]),
        "stripe_created_at": _moment(obj["created"]),
        "finalized_at": finalized or (existing.finalized_at if existing else None),
        "number": obj.get("number") or (existing.number if existing else ""),
        "hosted_invoice_url": obj.get("hosted_invoice_url")
        or (existing.hosted_invoice_url if existing else ""),
        "invoice_pdf": obj.get("invoice_pdf") or (existing.invoice_pdf if existing else ""),
    }
    if not stale:
        values.update(
            {
                "status": status,
                "total_minor": total,
                "total": _major_units(total, currency),
                "usage_total": _major_units(usage_minor, currency),
                "amount_due": _major_units(obj.get("amount_due", total), currency),
                "amount_paid": _major_units(obj.get("amount_paid", 0), currency),
                "amount_remaining": _major_units(obj.get("amount_remaining", total), currency),
                "paid_at": _moment(transitions.get("paid_at")),
                "attempt_count": obj.get("attempt_count") or 0,
            }
        )
        if payment_failed:
            values["payment_failed_at"] = timezone.now()
        elif status == StripeInvoiceStatus.PAID:
            values["payment_failed_at"] = None
    invoice, _ = StripeInvoice.objects.update_or_create(stripe_invoice_id=obj["id"], defaults=values)
    if not stale:
        _invoice_lines_replace(invoice, lines)
    return invoice


def _invoice_lines_replace(invoice: StripeInvoice, lines: list[dict[str, Any]]) -> None:
    StripeInvoiceLine.objects.filter(invoice=invoice).delete()
    StripeInvoiceLine.objects.bulk_create(
        [
            StripeInvoiceLine(
                invoice=invoice,
                position=position,
                stripe_line_id=line.get("id") or f"line-{position}",
                description=line.get("description") or "",
                amount_minor=line["amount"],
                amount=_major_units(line["amount"], invoice.currency),
                quantity=Decimal(str(line["quantity"])) if line.get("quantity") is not None else None,
                period_start=_moment((line.get("period") or {}).get("start")),
                period_end=_moment((line.get("period") or {}).get("end")),
            )
            for position, line in enumerate(lines)
        ]
    )


def invoice_created(event: dict[str, Any], prepared: dict[str, Any]) -> None:
    invoice = _invoice_record(event["data"]["object"], prepared)
    invoice_spike_check(invoice=invoice)


def invoice_finalized(event: dict[str, Any], prepared: dict[str, Any]) -> None:
    invoice = _invoice_record(event["data"]["object"], prepared)
    invoice_compare(invoice=invoice)


def invoice_status_changed(event: dict[str, Any], prepared: dict[str, Any]) -> None:
    _invoice_record(event["data"]["object"], prepared)


def invoice_payment_failed(event: dict[str, Any], prepared: dict[str, Any]) -> None:
    _invoice_record(event["data"]["object"], prepared, payment_failed=True)


# --- money in: Checkout and automatic top-ups ------------------------------------------------------------


def checkout_session_changed(event: dict[str, Any], prepared: dict[str, Any]) -> None:
    """A session paid (credit it once) or expired (mark it; nothing is credited). The session looked up in
    ``_prepare`` is what counts; without Stripe connected, the signed snapshot."""
    checkout_session_apply(session=prepared.get("session") or event["data"]["object"])


def payment_intent_settled(event: dict[str, Any], prepared: dict[str, Any]) -> None:
    """An automatic top-up's charge settled; the task usually got there first, and this changes nothing."""
    auto_top_up_intent_settled(intent=event["data"]["object"])


# --- subscriptions ---------------------------------------------------------------------------------------


_SUBSCRIPTION_STATUS = {
    "active": SubscriptionStatus.ACTIVE,
    "trialing": SubscriptionStatus.ACTIVE,
    "past_due": SubscriptionStatus.PAST_DUE,
    "unpaid": SubscriptionStatus.PAST_DUE,
    "incomplete": SubscriptionStatus.PAST_DUE,
    "canceled": SubscriptionStatus.CANCELED,
    "incomplete_expired": SubscriptionStatus.CANCELED,
}


def subscription_changed(event: dict[str, Any], prepared: dict[str, Any]) -> None:
    """Follow Stripe's status, and roll the local period if Stripe renewed and ours has ended too.

    The local period stays the one the ledger rates against (anchored locally).
    """
    obj = event["data"]["object"]
    subscription = (
        Subscription.objects.select_for_update()
        .select_related("plan_version")
        .filter(stripe_subscription_id=obj["id"])
        .first()
    )
    if subscription is None:
        logger.info("Stripe subscription %s is not ours; event stored only", obj["id"])
        return
    status = (
        SubscriptionStatus.CANCELED
        if event["type"].endswith(".deleted")
        else _SUBSCRIPTION_STATUS.get(obj["status"])
    )
    # Stripe never revives a canceled subscription: an older ``.updated`` delivered after ``.deleted``
    # (webhooks arrive in any order) must not make it active again.
    if (
        status is not None
        and status != subscription.status
        and subscription.status != SubscriptionStatus.CANCELED
    ):
        subscription.status = status
        subscription.save(update_fields=["status"])
    # Stripe renews on its own clock, seconds apart from ours; the local period rolls when it has ended
    # here too (as the beat job would), never into the future.
    if timezone.now() >= subscription.current_period_end:
        subscription_roll_period(subscription=subscription, now=timezone.now())


# --- meter errors (thin v2 events) -----------------------------------------------------------------------


def meter_error_reported(event: dict[str, Any], prepared: dict[str, Any]) -> None:
    """Stripe found meter events it could not count (unknown customer, archived meter, ...): tell operators."""
    meter_id = (event.get("related_object") or {}).get("id", "")
    details = prepared.get("event") or {}
    reason = (details.get("data") or {}).get("reason") or {}
    error_types = reason.get("error_types") or []
    samples = [
        (error_type.get("code", ""), (sample.get("request") or {}).get("identifier", ""))
        for error_type in error_types
        for sample in error_type.get("sample_errors") or []
    ]
    identifiers = [identifier for _, identifier in samples if identifier]
    ours = list(StripeMeterEvent.objects.filter(identifier__in=identifiers).select_related("customer"))
    for meter_event in ours:
        code = next(code for code, identifier in samples if identifier == meter_event.identifier)
        # The event stays "sent" (we sent it; Stripe did not count it), so reconciliation shows the gap too.
        StripeMeterEvent.objects.filter(pk=meter_event.pk).update(last_error=f"Stripe meter error: {code}")
    meter = Meter.objects.filter(stripe_meter_id=meter_id).first() if meter_id else None
    dimension_meter = (
        None
        if meter or not meter_id
        else StripeDimensionMeter.objects.filter(stripe_meter_id=meter_id).first()
    )
    name = meter.key if meter else dimension_meter.event_name if dimension_meter else meter_id
    customers = sorted({str(meter_event.customer) for meter_event in ours})
    summary = (
        ", ".join(f"{t.get('code')} × {t.get('error_count')}" for t in error_types) or "details unavailable"
    )
    operator_alert_raise(
        kind=OperatorAlertKind.METER_ERROR,
        customer=ours[0].customer if len({m.customer_id for m in ours}) == 1 else None,
        message=f"Stripe could not count meter events of {name}: {summary}."
        + (f" Customers: {', '.join(customers)}." if customers else ""),
        data={
            "stripe_meter_id": meter_id,
            "error_types": error_types,
            "identifiers": identifiers,
            "ours": [meter_event.identifier for meter_event in ours],
        },
        dedupe_key=f"meter-error-{event['id']}",
    )


HANDLERS: dict[str, Handler] = {
    "invoice.created": invoice_created,
    "invoice.finalized": invoice_finalized,
    "invoice.paid": invoice_status_changed,
    "invoice.payment_failed": invoice_payment_failed,
    "checkout.session.completed": checkout_session_changed,
    "checkout.session.async_payment_succeeded": checkout_session_changed,
    "checkout.session.expired": checkout_session_changed,
    "payment_intent.succeeded": payment_intent_settled,
    "payment_intent.payment_failed": payment_intent_settled,
    "invoice.voided": invoice_status_changed,
    "invoice.marked_uncollectible": invoice_status_changed,
    "customer.subscription.updated": subscription_changed,
    "customer.subscription.deleted": subscription_changed,
    **dict.fromkeys(METER_ERROR_TYPES, meter_error_reported),
}
