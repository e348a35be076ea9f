"""Invoices the customer reads: those Stripe issued (mirrored from its webhooks), and the next one, previewed.

The preview is computed locally from the rules that make Stripe's invoice, so it is what Stripe will bill at
the end of the current period:

- one line per Stripe meter: the overage we rated in the period, rounded once (``outbox_period_lines``, the
  figures reconciliation compares each finalized invoice with);
- the base-fee adjustment of plan changes in the period (``Subscription.base_fee_adjustment``, which the sync
  sends to Stripe as an invoice item);
- the next period's base fee, billed in advance (the migration at renewal's, if one is planned).

Credits, grants and the wallet never reach Stripe's invoice: they are settled here as usage happens.
"""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from billing_app.models import StripeInvoice, StripeInvoiceStatus
from billing_app.stripe.outbox import outbox_period_lines
from core.errors import NotFound
from core.money import format_money, round_money
from customers.models import Customer, Subscription, SubscriptionStatus
from plans.models import Meter
from usage.errors import NoSubscription

MAX_PAGE = 100


@dataclass(frozen=True)
class InvoicePage:
    invoices: list[StripeInvoice]
    has_more: bool


def customer_invoices(
    *, customer: Customer, limit: int = 10, starting_after: str | None = None
) -> InvoicePage:
    """The customer's issued invoices, newest first, a page at a time (Stripe's cursor: ``starting_after`` is
    the last invoice id of the previous page). Drafts are left out: Stripe may still change them."""
    invoices = (
        StripeInvoice.objects.filter(customer=customer)
        .exclude(status=StripeInvoiceStatus.DRAFT)
        .prefetch_related("lines")
        .order_by("-stripe_created_at", "-id")
    )
    if starting_after:
        cursor = invoices.filter(stripe_invoice_id=starting_after).first()
        if cursor is None:
            raise NotFound(f"The customer has no invoice {starting_after!r}.", param="starting_after")
        invoices = invoices.filter(stripe_created_at__lte=cursor.stripe_created_at).exclude(
            stripe_created_at=cursor.stripe_created_at, id__gte=cursor.pk
        )
    page = list(invoices[: limit + 1])
    return InvoicePage(invoices=page[:limit], has_more=len(page) > limit)


@dataclass(frozen=True)
class PreviewLine:
    kind: str  # "usage", "base_fee_adjustment" or "base_fee"
    description: str
    amount: Decimal  # money, rounded to the currency's minor unit
    currency: str
    period_start: datetime
    period_end: datetime

    @property
    def amount_display(self) -> str:
        return format_money(self.amount, self.currency)


@dataclass(frozen=True)
class UpcomingInvoice:
    currency: str
    period_start: datetime  # the period whose usage it bills
    period_end: datetime  # when Stripe issues it
    lines: tuple[PreviewLine, ...]

    @property
    def total(self) -> Decimal:
        # Stripe bills a negative total as nothing due (the rest is a credit on the customer's balance).
        return sum((line.amount for line in self.lines), Decimal(0))

    @property
    def amount_due(self) -> Decimal:
        return max(self.total, Decimal(0))

    @property
    def total_display(self) -> str:
        return format_money(self.total, self.currency)

    @property
    def amount_due_display(self) -> str:
        return format_money(self.amount_due, self.currency)


def _usage_line_label(event_name: str, meters: dict[str, str]) -> str:
    if not event_name:
        return "Usage not yet routed to Stripe"
    key, _, value = event_name.partition(".")
    name = meters.get(key, key)
    return f"{name} · {value}" if value else name


def upcoming_invoice_preview(*, customer: Customer) -> UpcomingInvoice:
    subscription = (
        Subscription.objects.filter(customer=customer)
        .select_related("plan_version__plan", "pending_plan_version__plan")
        .first()
    )
    if subscription is None or subscription.status == SubscriptionStatus.CANCELED:
        raise NoSubscription(f"Customer {customer.external_id!r} has no subscription to invoice.")
    currency = subscription.plan_version.currency
    start, end = subscription.current_period_start, subscription.current_period_end
    lines: list[PreviewLine] = []
    meters = dict(Meter.objects.values_list("key", "name"))
    usage = outbox_period_lines(customer=customer, period_start=start)
    for event_name in sorted(usage):
        amount = round_money(usage[event_name], currency)
        if amount:
            lines.append(
                PreviewLine("usage", _usage_line_label(event_name, meters), amount, currency, start, end)
            )
    adjustment = round_money(subscription.base_fee_adjustment(), currency)
    if adjustment:
        changed_at = subscription.plan_started_at or start
        lines.append(
            PreviewLine(
                "base_fee_adjustment",
                f"Base fee after the change to {subscription.plan_version.plan.name}",
                adjustment,
                currency,
                changed_at,
                end,
            )
        )
    next_version = subscription.pending_plan_version or subscription.plan_version
    if next_version.base_fee > 0:
        next_start, next_end = subscription.period_containing(end)
        lines.append(
            PreviewLine(
                "base_fee",
                f"{next_version.plan.name} base fee, next period (billed in advance)",
                round_money(next_version.base_fee, currency),
                currency,
                next_start,
                next_end,
            )
        )
    return UpcomingInvoice(currency=currency, period_start=start, period_end=end, lines=tuple(lines))
