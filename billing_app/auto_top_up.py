"""Automatic top-up: when the wallet falls below the customer's threshold, charge their saved card.

- **Offered** only with a card saved from a paid Checkout Session, and only to a customer whose overage is
  blocked (``customer_overage_blocked``): there, usage past the credits and wallet is refused, so an empty
  wallet stops the customer's product, and refilling it is what they need. Where overage is billed after the
  period, an empty wallet stops nothing, and charging a card in advance for what Stripe would invoice anyway
  would only move money early.
- **When.** Every transaction that draws wallets sends ``usage.signals.wallet_drawn`` after it commits; a
  wallet left below an enabled threshold queues ``auto_top_up_task``. The task claims a charge
  (``auto_top_up_charge_claim``) under the lock of the customer's ``AutoTopUp`` row: at most one charge is
  pending per customer (a constraint), so the 50 requests that cross the threshold together make one charge.
- **How.** ``auto_top_up_charge_run`` creates and confirms a PaymentIntent off-session with the charge's
  deterministic idempotency key (``auto-top-up:<customer>:<sequence>``): a retried task, or the sweep that
  resumes a charge whose worker died, gets the same PaymentIntent back and never charges twice. A success
  credits the wallet with a ledger row naming the PaymentIntent; ``payment_intent.succeeded`` does the same
  if the worker died first, and the row's unique reference credits once.
- **Never past the monthly cap**: charges pending or succeeded in the calendar month (UTC) plus the next one
  stay within ``monthly_cap``.
- **Failures.** A declined charge is a notification (emailed by ``customer_emails_send``); the next attempt
  waits ``AUTO_TOP_UP_RETRY_MINUTES``; the third decline in a row turns auto top-up off and says so.
"""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import stripe
from django.conf import settings
from django.db import transaction
from django.db.models import Max, Sum
from django.utils import timezone

from billing_app.models import AutoTopUp, AutoTopUpCharge, AutoTopUpChargeStatus, SavedPaymentMethod
from billing_app.stripe.checkout import top_up_amount_check
from core.errors import BillingError, InvalidInput, OutOfRange
from core.money import format_money, to_minor_units
from customers.models import Customer, Notification, NotificationKind, SpendControls, Subscription
from customers.selectors import customer_subscription_terms
from customers.spend_limits import overage_blocked
from usage.locks import customer_balance_for_update
from usage.models import CustomerBalance
from usage.services import wallet_top_up

logger = logging.getLogger(__name__)

FAILURES_BEFORE_OFF = 3
ZERO = Decimal(0)


class AutoTopUpUnavailable(BillingError):
    code = "auto_top_up_unavailable"
    http_status = 409


# --- who may have it, and how it stands -----------------------------------------------------------------


def customer_overage_blocked(*, customer: Customer) -> bool:
    """Whether usage past the credits and wallet is refused for the customer rather than billed later: by
    the plan's overage policy or the customer's own switch (``customers.spend_limits.overage_blocked``)."""
    _, terms = customer_subscription_terms(customer)
    controls = SpendControls.objects.filter(customer=customer).first() or SpendControls(customer=customer)
    return overage_blocked(terms=terms, controls=controls)


def saved_payment_method(*, customer: Customer) -> SavedPaymentMethod | None:
    """The card automatic top-ups charge: the latest one saved and not removed."""
    return (
        SavedPaymentMethod.objects.filter(customer=customer, detached_at__isnull=True)
        .order_by("-created_at", "-id")
        .first()
    )


@dataclass(frozen=True)
class AutoTopUpState:
    """What the page and the API show: the settings, whether they may be turned on, and this month's use."""

    customer: Customer
    settings: AutoTopUp | None
    payment_method: SavedPaymentMethod | None
    overage_blocked: bool
    charged_this_month: Decimal
    last_charge: AutoTopUpCharge | None

    @property
    def currency(self) -> str:
        return self.customer.currency

    @property
    def offered(self) -> bool:
        return self.payment_method is not None and self.overage_blocked

    @property
    def unavailable_reason(self) -> str:
        if self.payment_method is None:
            return "Pay once by card (add funds or buy a pack) to save a card for automatic top-ups."
        if not self.overage_blocked:
            return (
                "Overage is billed after the period on this account, so an empty wallet stops nothing. "
                "Block overage in the limits to use automatic top-ups."
            )
        return ""

    @property
    def enabled(self) -> bool:
        return bool(self.settings and self.settings.enabled)

    @property
    def charged_this_month_display(self) -> str:
        return format_money(self.charged_this_month, self.currency)

    @property
    def threshold_display(self) -> str:
        return format_money(self.settings.threshold, self.currency) if self.settings else ""

    @property
    def amount_display(self) -> str:
        return format_money(self.settings.amount, self.currency) if self.settings else ""

    @property
    def monthly_cap_display(self) -> str:
        return format_money(self.settings.monthly_cap, self.currency) if self.settings else ""


def _month_start(moment: datetime) -> datetime:
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _charged_in_month(customer_id: int, now: datetime) -> Decimal:
    """Charges pending or succeeded this calendar month (UTC): what counts against the cap."""
    total = AutoTopUpCharge.objects.filter(
        customer_id=customer_id,
        created_at__gte=_month_start(now),
        status__in=[AutoTopUpChargeStatus.PENDING, AutoTopUpChargeStatus.SUCCEEDED],
    ).aggregate(total=Sum("amount"))["total"]
    return total or ZERO


def auto_top_up_state(*, customer: Customer, now: datetime | None = None) -> AutoTopUpState:
    now = now or timezone.now()
    return AutoTopUpState(
        customer=customer,
        settings=AutoTopUp.objects.filter(customer=customer).first(),
        payment_method=saved_payment_method(customer=customer),
        overage_blocked=customer_overage_blocked(customer=customer),
        charged_this_month=_charged_in_month(customer.pk, now),
        last_charge=AutoTopUpCharge.objects.filter(customer=customer).order_by("-sequence").first(),
    )


# --- settings -------------------------------------------------------------------------------------------


def auto_top_up_update(
    *, customer: Customer, enabled: bool, threshold: Decimal, amount: Decimal, monthly_cap: Decimal
) -> AutoTopUp:
    """Save the customer's settings. Turning it on needs a saved card and blocked overage, and clears the
    failures that turned it off. If the wallet is already below the threshold, a top-up is queued."""
    if threshold < 0:
        raise InvalidInput("threshold must be zero or more.", param="threshold")
    amount = top_up_amount_check(customer=customer, amount=amount)
    if monthly_cap < amount:
        raise InvalidInput("monthly_cap must be at least the amount of one top-up.", param="monthly_cap")
    if monthly_cap > Decimal(str(settings.WALLET_TOP_UP_MAX)) * 100:
        raise OutOfRange("monthly_cap is too large.", param="monthly_cap")
    if enabled:
        state = auto_top_up_state(customer=customer)
        if not state.offered:
            raise AutoTopUpUnavailable(state.unavailable_reason)
    with transaction.atomic():
        row = AutoTopUp.objects.select_for_update().filter(customer=customer).first() or AutoTopUp(
            customer=customer
        )
        turned_on = enabled and not row.enabled
        row.enabled, row.threshold, row.amount, row.monthly_cap = enabled, threshold, amount, monthly_cap
        if turned_on:
            row.consecutive_failures = 0
            row.disabled_reason = ""
        row.save()
        if enabled:
            customer_id = customer.pk
            transaction.on_commit(lambda: auto_top_up_check_queue(customer_ids=[customer_id]))
    return row


def auto_top_up_check_queue(*, customer_ids: list[int]) -> None:
    from billing_app.tasks import auto_top_up_task  # the tasks module imports this one

    for customer_id in customer_ids:
        auto_top_up_task.delay(customer_id)


def auto_top_up_on_wallet_drawn(*, balances: dict[int, Decimal], **_: Any) -> None:
    """``wallet_drawn``'s receiver: queue a top-up check for each wallet left below an enabled threshold.
    One indexed read, and a task only where one may be due, so usage that draws wallets pays little."""
    due = AutoTopUp.objects.filter(customer_id__in=list(balances), enabled=True).values_list(
        "customer_id", "threshold"
    )
    below = [customer_id for customer_id, threshold in due if balances[customer_id] < threshold]
    if below:
        auto_top_up_check_queue(customer_ids=below)


# --- charging -------------------------------------------------------------------------------------------


def auto_top_up_charge_claim(*, customer_id: int, now: datetime | None = None) -> AutoTopUpCharge | None:
    """Decide, under the lock of the customer's ``AutoTopUp`` row, whether the wallet needs a top-up now, and
    if so record the pending charge. Returns it, or None when nothing is due.

    The lock serializes the checks of one customer; a charge still pending (the one the crossing already
    made) means nothing more is due, so concurrent crossings make one charge.
    """
    now = now or timezone.now()
    with transaction.atomic():
        row = (
            AutoTopUp.objects.select_for_update()
            .select_related("customer")
            .filter(customer_id=customer_id)
            .first()
        )
        if row is None or not row.enabled:
            return None
        customer = row.customer
        wallet = (
            CustomerBalance.objects.filter(customer_id=customer_id)
            .values_list("wallet_balance", flat=True)
            .first()
        )
        if wallet is None or wallet >= row.threshold:
            return None
        charges = AutoTopUpCharge.objects.filter(customer_id=customer_id)
        if charges.filter(status=AutoTopUpChargeStatus.PENDING).exists():
            return None
        last = charges.order_by("-sequence").first()
        if (
            last is not None
            and last.status == AutoTopUpChargeStatus.FAILED
            and last.settled_at is not None
            and last.settled_at > now - timedelta(minutes=settings.AUTO_TOP_UP_RETRY_MINUTES)
        ):
            return None
        if _charged_in_month(customer_id, now) + row.amount > row.monthly_cap:
            logger.info("Auto top-up of %s: the monthly cap of %s is reached", customer, row.monthly_cap)
            return None
        method = saved_payment_method(customer=customer)
        if method is None or not customer_overage_blocked(customer=customer):
            # It was offered when turned on; the card or the blocked overage has gone since.
            return None
        sequence = (charges.aggregate(top=Max("sequence"))["top"] or 0) + 1
        return AutoTopUpCharge.objects.create(
            customer=customer,
            sequence=sequence,
            amount=row.amount,
            currency=customer.currency,
            payment_method=method,
            idempotency_key=f"auto-top-up:{customer_id}:{sequence}",
            created_at=now,
        )


def auto_top_up_charge_run(*, charge: AutoTopUpCharge, client: stripe.StripeClient) -> AutoTopUpCharge:
    """Charge the saved card off-session for a pending charge, and settle it.

    A connection error or a Stripe 5xx propagates (the task retries with the same idempotency key); a decline
    settles the charge as failed.
    """
    if charge.status != AutoTopUpChargeStatus.PENDING:
        return charge
    customer = charge.customer
    try:
        intent = client.v1.payment_intents.create(
            {
                "amount": to_minor_units(charge.amount, charge.currency),
                "currency": charge.currency,
                "customer": customer.stripe_customer_id,
                "payment_method": charge.payment_method.stripe_payment_method_id,
                "confirm": True,
                "off_session": True,
                "description": f"Automatic wallet top-up {charge.sequence}",
                "metadata": {
                    "auto_top_up_charge": str(charge.pk),
                    "customer_external_id": customer.external_id,
                },
            },
            {"idempotency_key": charge.idempotency_key},
        )
    except stripe.CardError as error:
        details = error.error
        code = (
            (getattr(details, "decline_code", None) or error.code or "card_declined")
            if details
            else "card_declined"
        )
        return auto_top_up_charge_failed(
            charge_id=charge.pk, code=str(code), message=error.user_message or str(error)
        )
    except stripe.InvalidRequestError as error:
        # The saved card can no longer be charged (removed, or never attached): a failure like a decline.
        return auto_top_up_charge_failed(
            charge_id=charge.pk, code=error.code or "invalid_request", message=str(error)
        )
    if intent.status == "succeeded":
        return auto_top_up_charge_succeeded(charge_id=charge.pk, payment_intent_id=intent.id)
    # requires_action and the like: the bank wants the customer present, which an automatic top-up is not.
    return auto_top_up_charge_failed(
        charge_id=charge.pk,
        code=intent.status,
        message="The bank asked for the cardholder to confirm the payment.",
    )


def auto_top_up_charge_succeeded(*, charge_id: int, payment_intent_id: str) -> AutoTopUpCharge:
    """Credit the wallet for a succeeded charge, once (the ledger row names the PaymentIntent)."""
    charge = AutoTopUpCharge.objects.select_related("customer").get(pk=charge_id)
    with transaction.atomic():
        # Locks in the one order every writer here takes: the balance, the settings row, the charge.
        customer_balance_for_update(charge.customer)
        AutoTopUp.objects.select_for_update().filter(customer=charge.customer).first()
        charge = AutoTopUpCharge.objects.select_for_update().select_related("customer").get(pk=charge_id)
        if charge.status == AutoTopUpChargeStatus.SUCCEEDED:
            return charge
        entry = wallet_top_up(
            customer=charge.customer,
            amount=charge.amount,
            note=f"Automatic top-up {charge.sequence}",
            reference=f"payment_intent:{payment_intent_id}",
        )
        charge.status = AutoTopUpChargeStatus.SUCCEEDED
        charge.stripe_payment_intent_id = payment_intent_id
        charge.ledger_entry = entry
        charge.settled_at = timezone.now()
        charge.failure_code = charge.failure_message = ""
        charge.save()
        AutoTopUp.objects.filter(customer=charge.customer).update(consecutive_failures=0)
    return charge


def auto_top_up_charge_failed(*, charge_id: int, code: str, message: str) -> AutoTopUpCharge:
    """Settle a declined charge: tell the customer, and turn auto top-up off at the third decline in a row."""
    with transaction.atomic():
        charge = AutoTopUpCharge.objects.select_related("customer").get(pk=charge_id)
        row = AutoTopUp.objects.select_for_update().get(customer=charge.customer)
        charge = AutoTopUpCharge.objects.select_for_update().select_related("customer").get(pk=charge_id)
        if charge.status != AutoTopUpChargeStatus.PENDING:
            return charge
        customer = charge.customer
        charge.status = AutoTopUpChargeStatus.FAILED
        charge.failure_code, charge.failure_message = code[:64], message[:500]
        charge.settled_at = timezone.now()
        charge.save()
        row.consecutive_failures += 1
        amount = format_money(charge.amount, charge.currency)
        card = charge.payment_method
        period_start = _notification_period(customer)
        Notification.objects.create(
            customer=customer,
            kind=NotificationKind.AUTO_TOP_UP_FAILED,
            period_start=period_start,
            message=f"The automatic top-up of {amount} to {card} failed: {message}",
        )
        if row.consecutive_failures >= FAILURES_BEFORE_OFF and row.enabled:
            row.enabled = False
            row.disabled_reason = (
                f"Turned off after {row.consecutive_failures} failed charges in a row to {card}."
            )
            Notification.objects.create(
                customer=customer,
                kind=NotificationKind.AUTO_TOP_UP_DISABLED,
                period_start=period_start,
                message=f"Automatic top-up is off: {row.consecutive_failures} charges in a row to {card} "
                "failed. Update your card and turn it on again.",
            )
        row.save(update_fields=["consecutive_failures", "enabled", "disabled_reason", "updated_at"])
    return charge


def _notification_period(customer: Customer) -> datetime:
    subscription = Subscription.objects.filter(customer=customer).first()
    return subscription.current_period_start if subscription else timezone.now()


def auto_top_up_pending_resume(*, client: stripe.StripeClient, now: datetime | None = None) -> int:
    """Run again the charges left pending a while (a worker died mid-charge): the same idempotency key
    gets Stripe's first answer back, so nothing is charged twice."""
    now = now or timezone.now()
    stale = AutoTopUpCharge.objects.filter(
        status=AutoTopUpChargeStatus.PENDING, created_at__lte=now - timedelta(minutes=2)
    ).select_related("customer", "payment_method")
    resumed = 0
    for charge in stale.order_by("id")[:100]:
        auto_top_up_charge_run(charge=charge, client=client)
        resumed += 1
    return resumed


def auto_top_up_intent_settled(*, intent: dict[str, Any]) -> AutoTopUpCharge | None:
    """``payment_intent.succeeded`` / ``payment_failed`` of one of our charges: settle it if the task did not."""
    charge_id = (intent.get("metadata") or {}).get("auto_top_up_charge")
    if not charge_id or not str(charge_id).isdigit():
        return None
    if not AutoTopUpCharge.objects.filter(pk=int(charge_id)).exists():
        return None
    if intent.get("status") == "succeeded":
        return auto_top_up_charge_succeeded(charge_id=int(charge_id), payment_intent_id=intent["id"])
    error = intent.get("last_payment_error") or {}
    return auto_top_up_charge_failed(
        charge_id=int(charge_id),
        code=str(error.get("decline_code") or error.get("code") or "card_declined"),
        message=str(error.get("message") or "The card was declined."),
    )
