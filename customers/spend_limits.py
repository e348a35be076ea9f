"""Spend limits: which of a customer's limits a change in spend crosses, and telling it once.

Ingest asks as it records usage (spend before the batch, spend after it); the alerting job asks again for
limits set or lowered below spend already made. Both record through ``limit_crossing_record``, keyed by the
limit's amount and the period, so a crossing seen by both is told once.
"""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from customers.events import CustomerEventType, customer_event_announce, exact, instant
from customers.models import Customer, Notification, NotificationKind, SpendControls
from plans.terms import PlanTerms


def overage_blocked(*, terms: PlanTerms, controls: SpendControls) -> bool:
    """Whether usage past the included allowance, credits and wallet is refused rather than billed: the plan
    blocks overage (a prepaid plan never spends more than was bought), or the customer chose to. The
    customer's switch can tighten a plan that allows overage, never loosen one that blocks it."""
    return terms.overage_blocked or controls.block_overage


@dataclass(frozen=True)
class LimitCrossing:
    kind: NotificationKind  # SOFT_LIMIT_CROSSED or HARD_LIMIT_REACHED
    limit: Decimal  # money, in the plan currency

    @property
    def label(self) -> str:
        return "soft" if self.kind == NotificationKind.SOFT_LIMIT_CROSSED else "hard"

    @property
    def event_type(self) -> CustomerEventType:
        if self.kind == NotificationKind.SOFT_LIMIT_CROSSED:
            return CustomerEventType.SOFT_LIMIT_CROSSED
        return CustomerEventType.HARD_LIMIT_REACHED


def spend_limit_crossings(
    *, before: Decimal | None, after: Decimal, controls: SpendControls
) -> list[LimitCrossing]:
    """The limits that spend reaching ``after`` from ``before`` crosses (``before`` None: every limit at or
    under ``after``). A limit equal to ``after`` is reached, so crossed."""
    crossings = []
    for kind, limit in (
        (NotificationKind.SOFT_LIMIT_CROSSED, controls.soft_limit),
        (NotificationKind.HARD_LIMIT_REACHED, controls.hard_limit),
    ):
        if limit is not None and (before is None or before < limit) and limit <= after:
            crossings.append(LimitCrossing(kind, limit))
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
