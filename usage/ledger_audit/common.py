"""What every proof shares: the mismatch it reports, exact comparison, and the periods still whole."""

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

from django.db.models import QuerySet

from customers.models import Subscription
from plans.terms import PlanTerms
from usage.partitions import retained_since

ZERO = Decimal(0)


def differs(cached: Decimal, summed: Decimal) -> bool:
    """PostgreSQL sums decimals exactly, so a cached total and its rows agree to the last digit."""
    return Decimal(cached) != Decimal(summed)


@dataclass
class Mismatch:
    """Two numbers that must be equal (or ``cached`` at most ``summed``, for a bound) and are not."""

    what: str
    cached: Decimal
    summed: Decimal
    cached_label: str = "cached"
    summed_label: str = "rows sum to"

    def __str__(self) -> str:
        return f"{self.what}: {self.cached_label} {self.cached}, {self.summed_label} {self.summed}"


_Rows = TypeVar("_Rows", bound=QuerySet[Any])


def retained(rows: _Rows, period_start: str = "period_start") -> _Rows:
    """The rows of billing periods whose events are all still in the ledger (all, when nothing was detached)."""
    since = retained_since()
    return rows.filter(**{f"{period_start}__gte": since}) if since else rows


class TermsByCustomer:
    """The terms of each customer's current plan version, read once per proof."""

    def __init__(self) -> None:
        self._terms: dict[int, PlanTerms | None] = {}

    def of(self, customer_id: int) -> PlanTerms | None:
        if customer_id not in self._terms:
            subscription = (
                Subscription.objects.filter(customer_id=customer_id).select_related("plan_version").first()
            )
            self._terms[customer_id] = (
                PlanTerms.of_version(subscription.plan_version) if subscription else None
            )
        return self._terms[customer_id]

    def credit_rate(self, customer_id: int) -> Decimal | None:
        terms = self.of(customer_id)
        return terms.credit_rate if terms else None
