"""Billing periods: the customer's current and earlier periods, and resolving the one a request names."""

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from core.errors import InvalidInput, NotFound
from customers.models import Customer, Subscription
from usage.models import PeriodUsage


class NoBillingPeriod(NotFound):
    code = "no_billing_period"


class PeriodNotFound(NotFound):
    code = "period_not_found"


@dataclass(frozen=True)
class BillingPeriod:
    start: datetime
    end: datetime  # exclusive
    is_current: bool

    @property
    def key(self) -> str:
        """What ``?period=`` takes: the start date."""
        return self.start.date().isoformat()

    @property
    def last_day(self) -> date:
        return (self.end - timedelta(microseconds=1)).date()

    @property
    def label(self) -> str:
        start, last = self.start.date(), self.last_day
        text = f"{start:%b} {start.day} – {last:%b} {last.day}, {last.year}"
        return f"{text} (current)" if self.is_current else text


def usage_periods(*, customer: Customer) -> tuple[BillingPeriod, ...]:
    """The current period and every earlier one with usage, newest first."""
    subscription = Subscription.objects.filter(customer=customer).first()
    periods: dict[datetime, BillingPeriod] = {}
    if subscription is not None:
        start, end = subscription.current_period_start, subscription.current_period_end
        periods[start] = BillingPeriod(start=start, end=end, is_current=True)
    rows = (
        PeriodUsage.objects.filter(customer=customer)
        .values_list("period_start", "period_end")
        .distinct()
        .order_by("-period_start")
    )
    for start, end in rows:
        periods.setdefault(start, BillingPeriod(start=start, end=end, is_current=False))
    return tuple(sorted(periods.values(), key=lambda period: period.start, reverse=True))


PeriodStart = date | datetime | str | BillingPeriod | None


def usage_period_resolve(*, customer: Customer, period_start: PeriodStart = None) -> BillingPeriod:
    """The period ``period_start`` names, the current one for None or "".

    ``period_start`` is a start date, the exact start, or a start date as text ("2025-03-14", as
    ``?period=`` gives it). Raises ``InvalidInput`` for text that is not a date, ``PeriodNotFound``
    for a date no period of this customer starts on.
    """
    if isinstance(period_start, BillingPeriod):
        return period_start  # resolved already, by a caller that resolved it for this customer
    if isinstance(period_start, str):
        period_start = _parse_period_key(period_start)
    periods = usage_periods(customer=customer)
    if not periods:
        raise NoBillingPeriod("This customer has no subscription and no usage yet.")
    if period_start is None:
        return periods[0]
    for period in periods:
        if isinstance(period_start, datetime):
            if period.start == period_start:
                return period
        elif period.start.date() == period_start:
            return period
    raise PeriodNotFound(f"No billing period of this customer starts on {period_start:%Y-%m-%d}.")


def _parse_period_key(text: str) -> date | None:
    if not text.strip():
        return None
    try:
        return date.fromisoformat(text.strip())
    except ValueError as error:
        raise InvalidInput(
            f"period must be a period's start date as YYYY-MM-DD, not {text[:40]!r}.", param="period"
        ) from error
