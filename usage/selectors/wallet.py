"""The wallet and credit grants, with the latest ledger lines and top-ups."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.db.models import Q, Sum
from django.utils import timezone

from core.money import format_money
from customers.models import Customer
from usage.models import CreditGrant, CreditLedgerEntry, CustomerBalance, LedgerEntryKind
from usage.selectors.formatting import format_amount
from usage.selectors.units import ZERO

# Top-ups are looked for among this many latest ledger rows, so finding them costs the same however
# many draw-downs a busy customer has.
TOP_UP_LOOKBACK_ROWS = 500


@dataclass(frozen=True)
class GrantLine:
    kind: str
    kind_label: str
    unit: str
    amount: Decimal
    remaining: Decimal
    effective_at: datetime
    expires_at: datetime | None
    expired: bool  # voided or past its expiry
    description: str

    @property
    def remaining_display(self) -> str:
        return format_amount(self.remaining, self.unit)

    @property
    def amount_display(self) -> str:
        return format_amount(self.amount, self.unit)


@dataclass(frozen=True)
class LedgerLine:
    created_at: datetime
    kind: str
    kind_label: str
    amount: Decimal  # signed: positive adds to the balance
    unit: str
    note: str
    is_grant: bool  # a grant's row, else the wallet's

    @property
    def label(self) -> str:
        if self.kind == LedgerEntryKind.DRAWDOWN:
            return "Credits used" if self.is_grant else "Paid from wallet"
        if self.kind == LedgerEntryKind.GRANT:
            return "Credits granted"
        if self.kind in (LedgerEntryKind.EXPIRY, LedgerEntryKind.REFUND, LedgerEntryKind.ADJUSTMENT):
            return f"{self.kind_label} ({'credits' if self.is_grant else 'wallet'})"
        return self.kind_label

    @property
    def amount_display(self) -> str:
        sign = "+" if self.amount > 0 else ""
        return sign + format_amount(self.amount, self.unit)


@dataclass(frozen=True)
class WalletView:
    currency: str
    balance: Decimal  # money
    grants: tuple[GrantLine, ...]  # active first, then those that ended in the last 30 days
    # The two lists split the ledger, so no row is shown twice: what usage took (and gave back), and the rest.
    recent: tuple[LedgerLine, ...]  # the latest draw-downs
    top_ups: tuple[LedgerLine, ...]  # the latest top-ups, grants, refunds, expiries and adjustments

    @property
    def balance_display(self) -> str:
        return format_money(self.balance, self.currency)


def usage_wallet(*, customer: Customer, now: datetime | None = None, recent_limit: int = 10) -> WalletView:
    now = now or timezone.now()
    balance = CustomerBalance.objects.filter(customer=customer).first()
    grants = CreditGrant.objects.filter(customer=customer).filter(
        Q(expired_at__isnull=True) | Q(expired_at__gte=now - timedelta(days=30))
    )
    grant_lines = []
    for grant in grants.in_draw_order()[:50]:
        expired = grant.has_ended(now)
        if expired and grant.expires_at is not None and grant.expires_at < now - timedelta(days=30):
            continue
        grant_lines.append(
            GrantLine(
                kind=grant.kind,
                kind_label=grant.get_kind_display(),
                unit=grant.unit,
                amount=grant.amount,
                remaining=grant.remaining_at(now),
                effective_at=grant.effective_at,
                expires_at=grant.expires_at,
                expired=expired,
                description=grant.description,
            )
        )
    grant_lines.sort(key=lambda line: line.expired)
    entries = CreditLedgerEntry.objects.filter(customer=customer).order_by("-created_at", "-id")
    recent = tuple(
        _ledger_line(entry) for entry in entries.filter(kind=LedgerEntryKind.DRAWDOWN)[:recent_limit]
    )
    # Only the latest rows are looked at, so a busy customer's draw-downs never make this a scan.
    window = entries.values("pk")[:TOP_UP_LOOKBACK_ROWS]
    top_ups = tuple(
        _ledger_line(entry)
        for entry in CreditLedgerEntry.objects.filter(pk__in=window)
        .exclude(kind=LedgerEntryKind.DRAWDOWN)
        .order_by("-created_at", "-id")[:5]
    )
    return WalletView(
        currency=balance.currency if balance else customer.currency,
        balance=balance.wallet_balance if balance else ZERO,
        grants=tuple(grant_lines),
        recent=recent,
        top_ups=top_ups,
    )


def _ledger_line(entry: CreditLedgerEntry) -> LedgerLine:
    return LedgerLine(
        created_at=entry.created_at,
        kind=entry.kind,
        kind_label=entry.get_kind_display(),
        amount=entry.amount,
        unit=entry.unit,
        note=entry.note,
        is_grant=entry.grant_id is not None,
    )


def credits_remaining_by_unit(*, customer: Customer, now: datetime | None = None) -> dict[str, Decimal]:
    """What the customer's usable grants have left, per unit (credits, or a currency for monetary credits)."""
    return credits_remaining_by_customer(customer_ids=[customer.pk], now=now).get(customer.pk, {})


def credits_remaining_by_customer(
    *, customer_ids: Sequence[int], now: datetime | None = None
) -> dict[int, dict[str, Decimal]]:
    """``credits_remaining_by_unit`` of several customers in one query, by customer id."""
    totals: dict[int, dict[str, Decimal]] = {}
    rows = (
        CreditGrant.objects.usable(now or timezone.now())
        .filter(customer_id__in=customer_ids)
        .values_list("customer_id", "unit")
        .annotate(remaining=Sum("remaining"))
        .order_by("customer_id", "unit")
    )
    for customer_id, unit, remaining in rows:
        totals.setdefault(customer_id, {})[unit] = remaining
    return totals
