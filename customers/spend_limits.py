"""Spend limits: which of a customer's limits a change in spend crosses, and telling it once.

Ingest asks as it records usage (spend before the batch, spend after it); the alerting job asks again for
limits set or lowered below spend already made. Both record through ``limit_crossing_record``, keyed by the
limit's amount and the period, so a crossing seen by both is told once.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from statistics import median

from core.money import round_money
from customers.events import CustomerEventType, customer_event_announce, exact, instant
from customers.models import Customer, Notification, NotificationKind, SoftLimitSource, SpendControls
from plans.terms import PlanTerms

# With no soft limit of their own, a customer is warned at this share of their typical spend: the median
# usage charges of their last ``TYPICAL_SPEND_PERIODS`` closed periods. The median, so that one unusual
# period (a launch, a quiet holiday) does not move the warning.
DEFAULT_SOFT_LIMIT_SHARE = Decimal("0.8")
TYPICAL_SPEND_PERIODS = 3


def default_soft_limit_of(*, period_charges: Sequence[Decimal], currency: str) -> Decimal | None:
    """The default soft limit from the usage charges of closed periods, newest first, in money: the share
    of the median of the latest ``TYPICAL_SPEND_PERIODS``, rounded to the currency's minor unit. None when
    there is no closed period or nothing typical was charged (a warning at zero would fire on day one)."""
    latest = list(period_charges[:TYPICAL_SPEND_PERIODS])
    if not latest:
        return None
    typical = median(latest)
    if typical <= 0:
        return None
    amount = round_money(typical * DEFAULT_SOFT_LIMIT_SHARE, currency)
    return amount if amount > 0 else None


def overage_blocked(*, terms: PlanTerms, controls: SpendControls) -> bool:
    """Whether usage past the included allowance, credits and wallet is refused rather than billed: the plan
    blocks overage (a prepaid plan never spends more than was bought), or the customer chose to. The
    customer's switch can tighten a plan that allows overage, never loosen one that blocks it."""
    return terms.overage_blocked or controls.block_overage


@dataclass(frozen=True)
class LimitCrossing:
    kind: NotificationKind  # SOFT_LIMIT_CROSSED or HARD_LIMIT_REACHED
    limit: Decimal  # money, in the plan currency
    is_default: bool = False  # the default soft limit, not one the customer set

    @property
    def label(self) -> str:
        if self.kind == NotificationKind.HARD_LIMIT_REACHED:
            return "hard"
        return "default soft" if self.is_default else "soft"

    @property
    def event_type(self) -> CustomerEventType:
        if self.kind == NotificationKind.SOFT_LIMIT_CROSSED:
            return CustomerEventType.SOFT_LIMIT_CROSSED
        return CustomerEventType.HARD_LIMIT_REACHED


def spend_limit_crossings(
    *, before: Decimal | None, after: Decimal, controls: SpendControls
) -> list[LimitCrossing]:
    """The limits that spend reaching ``after`` from ``before`` crosses (``before`` None: every limit at or
    under ``after``). A limit equal to ``after`` is reached, so crossed. The soft limit is the one in
    force: the customer's own, else the default for the period (refreshed by the caller)."""
    crossings = []
    is_default = controls.soft_limit_source == SoftLimitSource.DEFAULT
    for kind, limit, default in (
        (NotificationKind.SOFT_LIMIT_CROSSED, controls.soft_limit_in_force, is_default),
        (NotificationKind.HARD_LIMIT_REACHED, controls.hard_limit, False),
    ):
        if limit is not None and (before is None or before < limit) and limit <= after:
            crossings.append(LimitCrossing(kind, limit, default))
    return crossings


def limit_crossing_record(
    *,
    customer: Customer,
    crossing: LimitCrossing,
    period_start: datetime,
    spend: Decimal,
    currency: str,
) -> Notification | None:
    """Record the crossing for the customer once per limit amount and period, and announce it (the
    operator's webhooks); None if it already was."""
    code = currency.upper()
    notification, created = Notification.objects.get_or_create(
        customer=customer,
        kind=crossing.kind,
        period_start=period_start,
        limit=crossing.limit,
        defaults={
            "message": f"Usage charges reached {spend:.2f} {code} in the billing period that began "
            f"{period_start:%b} {period_start.day} ({crossing.label} limit {crossing.limit:.2f} {code}).",
        },
    )
    if not created:
        return None
    customer_event_announce(
        event_type=crossing.event_type,
        customer=customer,
        data={
            "limit": exact(crossing.limit),
            "spend": exact(spend),
            "currency": currency,
            "period_start": instant(period_start),
        },
    )
    return notification
