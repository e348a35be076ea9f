"""Money in through Stripe Checkout: a wallet top-up or a credit pack, paid by card on Stripe's page.

1. ``checkout_session_create`` fixes what is bought (``CheckoutSession``), then asks Stripe for a session in
   ``payment`` mode with ``setup_future_usage=off_session``, so the card is saved for automatic top-ups.
2. The customer pays on Stripe's page. Stripe says so with the signed ``checkout.session.completed`` webhook
   (``billing_app.stripe.webhooks``), and our return page looks the session up too
   (``checkout_session_refresh``); a periodic sweep looks up sessions nobody told us about.
3. ``checkout_session_fulfil`` credits the wallet (``usage.services.wallet_top_up``) or grants the pack
   (``usage.services.credit_pack_purchase``) under the customer's lock, with a ledger row whose
   ``reference`` names the session. That reference is unique per customer, so however many times and in
   whatever order Stripe and the look-ups tell us, the session credits once. An expired session credits
   nothing.
"""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import stripe
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import transaction
from django.utils import timezone

from billing_app.models import CheckoutKind, CheckoutSession, CheckoutStatus, SavedPaymentMethod
from billing_app.stripe.client import DEFAULT_API_BASE, StripeNotConnected, stripe_client
from billing_app.stripe.sync.subscriptions import customer_sync
from core.errors import BillingError, InvalidInput, NotFound, OutOfRange
from core.money import format_money, round_money, to_minor_units
from customers.models import Customer, Subscription
from plans.models import CreditPack
from usage.locks import customer_balance_for_update
from usage.models import CreditLedgerEntry, LedgerEntryKind
from usage.services import credit_pack_purchase, wallet_top_up

logger = logging.getLogger(__name__)

_url_validator = URLValidator(schemes=["http", "https"])


class PaymentsUnavailable(BillingError):
    """Stripe is not connected, or did not answer: nothing was charged, try again later."""

    code = "payments_unavailable"
    http_status = 503


@dataclass(frozen=True)
class TopUpBounds:
    """What one top-up may add, in the customer's currency (``WALLET_TOP_UP_MIN`` and ``_MAX``)."""

    currency: str
    minimum: Decimal
    maximum: Decimal

    @property
    def minimum_display(self) -> str:
        return format_money(self.minimum, self.currency)

    @property
    def maximum_display(self) -> str:
        return format_money(self.maximum, self.currency)


def top_up_bounds(*, customer: Customer) -> TopUpBounds:
    return TopUpBounds(
        currency=customer.currency,
        minimum=Decimal(str(settings.WALLET_TOP_UP_MIN)),
        maximum=Decimal(str(settings.WALLET_TOP_UP_MAX)),
    )


def top_up_amount_check(*, customer: Customer, amount: Decimal, param: str = "amount") -> Decimal:
    """The one rule for a top-up's amount (Checkout and automatic alike): within the bounds, in whole minor
    units of the currency. Returns it rounded to the currency's places."""
    bounds = top_up_bounds(customer=customer)
    if round_money(amount, customer.currency) != amount:
        raise InvalidInput(
            f"{param} has more decimal places than {customer.currency.upper()} has.", param=param
        )
    if amount < bounds.minimum:
        raise InvalidInput(f"{param} must be at least {bounds.minimum_display}.", param=param)
    if amount > bounds.maximum:
        raise OutOfRange(
            f"{param} must be at most {bounds.maximum_display}.", param=param, max=f"{bounds.maximum:f}"
        )
    return round_money(amount, customer.currency)


STRIPE_CHECKOUT_ORIGIN = "https://checkout.stripe.com"


def checkout_page_origin() -> str:
    """Where Stripe's payment pages are: the page whose forms redirect there must allow it in its CSP
    ``form-action`` (browsers check a form's redirects too). With ``STRIPE_API_BASE`` elsewhere (the fake),
    its pages are served from there."""
    base = (settings.STRIPE_API_BASE or DEFAULT_API_BASE).rstrip("/")
    if base == DEFAULT_API_BASE:
        return STRIPE_CHECKOUT_ORIGIN
    parts = urlsplit(base)
    return f"{parts.scheme}://{parts.netloc}"


def credit_packs_for_sale(*, customer: Customer) -> list[CreditPack]:
    """The packs of the customer's plan version, cheapest first: what the page and the API sell."""
    subscription = Subscription.objects.filter(customer=customer).first()
    if subscription is None:
        return []
    return list(CreditPack.objects.filter(plan_version_id=subscription.plan_version_id).order_by("amount"))


def _url_check(value: str, param: str) -> str:
    try:
        _url_validator(value)
    except ValidationError:
        raise InvalidInput(f"{param} must be an absolute http(s) URL.", param=param) from None
    if len(value) > 2000:
        raise InvalidInput(f"{param} is longer than 2,000 characters.", param=param)
    return value


def checkout_session_create(
    *,
    customer: Customer,
    kind: str,
    success_url: str,
    cancel_url: str,
    amount: Decimal | None = None,
    pack_id: int | None = None,
    client: stripe.StripeClient | None = None,
    now: datetime | None = None,
) -> CheckoutSession:
    """Open a Stripe Checkout Session for a top-up of ``amount`` or the credit pack ``pack_id``.

    ``success_url`` may hold ``{CHECKOUT_SESSION_ID}``, which Stripe replaces with the session's id. Nothing is
    credited here: only a paid session is (``checkout_session_fulfil``).
    """
    now = now or timezone.now()
    if kind not in CheckoutKind.values:
        raise InvalidInput(f"kind must be one of {', '.join(CheckoutKind.values)}.", param="kind")
    _url_check(success_url, "success_url")
    _url_check(cancel_url, "cancel_url")
    pack: CreditPack | None = None
    if kind == CheckoutKind.TOP_UP:
        if amount is None:
            raise InvalidInput("A top-up needs an amount.", param="amount")
        if pack_id is not None:
            raise InvalidInput("A top-up takes an amount, not a pack.", param="pack")
        amount = top_up_amount_check(customer=customer, amount=amount)
    else:
        if pack_id is None:
            raise InvalidInput("A credit pack purchase needs the pack's id.", param="pack")
        if amount is not None:
            raise InvalidInput("A credit pack has its own price; leave amount out.", param="amount")
        pack = next((p for p in credit_packs_for_sale(customer=customer) if p.pk == pack_id), None)
        if pack is None:
            raise NotFound(f"The customer's plan sells no credit pack {pack_id}.", param="pack")
        amount = pack.amount
    try:
        client = client or stripe_client()
    except StripeNotConnected as error:
        raise PaymentsUnavailable("Card payments are not available: Stripe is not connected.") from error
    lifetime = timedelta(minutes=settings.CHECKOUT_SESSION_MINUTES)
    try:
        stripe_customer_id = customer.stripe_customer_id or customer_sync(customer=customer, client=client)
    except stripe.StripeError as error:
        raise PaymentsUnavailable("Stripe did not answer; nothing was charged. Try again.") from error
    checkout = CheckoutSession.objects.create(
        customer=customer,
        kind=kind,
        currency=customer.currency,
        amount=amount,
        credit_pack=pack,
        credits=pack.credits if pack else None,
        success_url=success_url,
        cancel_url=cancel_url,
        expires_at=now + lifetime,
    )
    try:
        session = client.v1.checkout.sessions.create(
            _session_params(checkout, stripe_customer_id=stripe_customer_id),
            # The row's id and birth make the key: a retry of this call (the SDK's, after a dropped
            # connection) gets the same session back, never a second one.
            {"idempotency_key": f"checkout-session-{checkout.pk}-{int(checkout.created_at.timestamp())}"},
        )
    except stripe.StripeError as error:
        logger.warning("Stripe refused or did not answer a Checkout Session for %s: %s", customer, error)
        checkout.delete()
        raise PaymentsUnavailable(
            "Stripe could not open a payment page; nothing was charged. Try again."
        ) from error
    checkout.stripe_session_id = session.id
    checkout.url = session.url or ""
    checkout.save(update_fields=["stripe_session_id", "url"])
    return checkout


def _session_params(checkout: CheckoutSession, *, stripe_customer_id: str) -> Any:
    if checkout.kind == CheckoutKind.TOP_UP:
        name = f"Wallet top-up of {format_money(checkout.amount, checkout.currency)}"
    else:
        credits = checkout.credits or Decimal(0)
        name = f"{credits.normalize():,f} credits"
    metadata = {
        "checkout_session_id": str(checkout.pk),
        "customer_external_id": checkout.customer.external_id,
        "kind": checkout.kind,
    }
    return {
        "mode": "payment",
        "customer": stripe_customer_id,
        "line_items": [
            {
                "quantity": 1,
                "price_data": {
                    "currency": checkout.currency,
                    "unit_amount": to_minor_units(checkout.amount, checkout.currency),
                    "product_data": {"name": name},
                },
            }
        ],
        # Saved for off-session charges: the automatic top-up charges this card later.
        "payment_intent_data": {"setup_future_usage": "off_session", "metadata": metadata},
        "metadata": metadata,
        "client_reference_id": checkout.customer.external_id,
        "success_url": checkout.success_url,
        "cancel_url": checkout.cancel_url,
        "expires_at": int(checkout.expires_at.timestamp()) if checkout.expires_at else None,
    }


# --- what Stripe says happened ---------------------------------------------------------------------------


def checkout_session_retrieve(
    *, stripe_session_id: str, client: stripe.StripeClient | None = None
) -> dict[str, Any]:
    """The session as Stripe has it now, with its PaymentIntent and card: what fulfilment trusts."""
    client = client or stripe_client()
    session = client.v1.checkout.sessions.retrieve(
        stripe_session_id, {"expand": ["payment_intent.payment_method"]}
    )
    return session.to_dict()


def checkout_session_refresh(
    *, checkout: CheckoutSession, client: stripe.StripeClient | None = None
) -> CheckoutSession:
    """Look the session up in Stripe and act on what it says (the return page and the sweep do this)."""
    if not checkout.stripe_session_id or checkout.status == CheckoutStatus.COMPLETE:
        return checkout
    session = checkout_session_retrieve(stripe_session_id=checkout.stripe_session_id, client=client)
    return checkout_session_apply(session=session) or checkout


def checkout_session_apply(*, session: dict[str, Any]) -> CheckoutSession | None:
    """Credit a paid session, or mark an expired one; anything else changes nothing. None: not ours."""
    checkout = (
        CheckoutSession.objects.filter(stripe_session_id=session.get("id")).select_related("customer").first()
    )
    if checkout is None:
        logger.info("Checkout Session %s is not one of ours; ignored", session.get("id"))
        return None
    if session.get("status") == "expired":
        CheckoutSession.objects.filter(pk=checkout.pk, status=CheckoutStatus.OPEN).update(
            status=CheckoutStatus.EXPIRED, expired_at=timezone.now()
        )
        checkout.refresh_from_db()
        return checkout
    if session.get("status") == "complete" and session.get("payment_status") == "paid":
        return checkout_session_fulfil(checkout=checkout, session=session)
    return checkout


class CheckoutAmountMismatch(BillingError):
    code = "checkout_amount_mismatch"
    http_status = 409


@transaction.atomic
def checkout_session_fulfil(*, checkout: CheckoutSession, session: dict[str, Any]) -> CheckoutSession:
    """Credit what a paid session bought, once: under the customer's lock, by the session's id.

    The lock comes first (as for every balance write), then the session row is read again: a webhook and a
    look-up racing each other both wait here, and the second finds the session complete. The ledger row's
    unique ``reference`` backs this in the database.
    """
    customer = checkout.customer
    customer_balance_for_update(customer)
    checkout = CheckoutSession.objects.select_for_update().select_related("customer").get(pk=checkout.pk)
    if checkout.status == CheckoutStatus.COMPLETE:
        return checkout
    paid = (session.get("amount_total"), str(session.get("currency", "")).lower())
    expected = (to_minor_units(checkout.amount, checkout.currency), checkout.currency)
    if paid != expected:
        # Never credit what was not paid; an operator must look (the webhook answers 500 and is kept).
        raise CheckoutAmountMismatch(
            f"Checkout Session {checkout.stripe_session_id} was paid {paid}, but sold {expected}."
        )
    reference = checkout.ledger_reference
    if checkout.kind == CheckoutKind.TOP_UP:
        entry = wallet_top_up(
            customer=customer,
            amount=checkout.amount,
            note=f"Top-up paid by card ({checkout.stripe_session_id})"[:200],
            reference=reference,
        )
    else:
        if checkout.credit_pack is None:
            raise InvalidInput("A credit pack session without its pack.", param="pack")
        credit_pack_purchase(
            customer=customer,
            pack=checkout.credit_pack,
            reference=reference,
            credits=checkout.credits,
            amount=checkout.amount,
        )
        entry = CreditLedgerEntry.objects.get(
            customer=customer, reference=reference, kind=LedgerEntryKind.GRANT
        )
    payment_method_save(customer=customer, session=session)
    checkout.status = CheckoutStatus.COMPLETE
    checkout.completed_at = timezone.now()
    checkout.ledger_entry = entry
    checkout.save(update_fields=["status", "completed_at", "ledger_entry"])
    return checkout


def payment_method_save(*, customer: Customer, session: dict[str, Any]) -> SavedPaymentMethod | None:
    """Keep the card a paid session saved to the customer (only one attached to them can be charged later)."""
    intent = session.get("payment_intent")
    method = intent.get("payment_method") if isinstance(intent, dict) else None
    if not isinstance(method, dict) or method.get("customer") != customer.stripe_customer_id:
        return None
    card = method.get("card") or {}
    saved, _ = SavedPaymentMethod.objects.update_or_create(
        stripe_payment_method_id=method["id"],
        defaults={
            "customer": customer,
            "brand": card.get("brand") or "",
            "last4": card.get("last4") or "",
            "exp_month": card.get("exp_month"),
            "exp_year": card.get("exp_year"),
            "detached_at": None,
        },
    )
    return saved


def checkout_sessions_sweep(*, client: stripe.StripeClient | None = None, now: datetime | None = None) -> int:
    """Look up open sessions no webhook settled within a few minutes (a missed delivery); returns how many
    changed. Sessions are short-lived, so this reads a handful of rows."""
    now = now or timezone.now()
    client = client or stripe_client()
    stale = CheckoutSession.objects.filter(
        status=CheckoutStatus.OPEN,
        stripe_session_id__isnull=False,
        created_at__lte=now - timedelta(minutes=5),
    ).select_related("customer")
    changed = 0
    for checkout in stale.order_by("id")[:200]:
        if checkout_session_refresh(checkout=checkout, client=client).status != CheckoutStatus.OPEN:
            changed += 1
    return changed
