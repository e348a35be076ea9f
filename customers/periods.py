"""Billing period arithmetic: pure functions of an anchor, an interval and a moment."""

import calendar
from datetime import datetime

from plans.models import BillingInterval


def _shift_months(anchor: datetime, months: int) -> datetime:
    """The anchor moved by whole months, clamped to the month's last day (Jan 31 → Feb 28)."""
    month_index = anchor.month - 1 + months
    year, month = anchor.year + month_index // 12, month_index % 12 + 1
    day = min(anchor.day, calendar.monthrange(year, month)[1])
    return anchor.replace(year=year, month=month, day=day)


def period_bounds(
    *, anchor: datetime, interval: BillingInterval, moment: datetime
) -> tuple[datetime, datetime]:
    """The [start, end) of the billing period that contains ``moment``.

    Periods are counted from the anchor so that a subscription started on the 31st keeps the
    31st (or the month's last day) as its renewal date instead of drifting to the 28th.
    """
    step = 12 if interval == BillingInterval.YEAR else 1
    months_apart = (moment.year - anchor.year) * 12 + (moment.month - anchor.month)
    index = months_apart // step
    start = _shift_months(anchor, index * step)
    if start > moment:
        index -= 1
        start = _shift_months(anchor, index * step)
    end = _shift_months(anchor, (index + 1) * step)
    if end <= moment:
        start, end = end, _shift_months(anchor, (index + 2) * step)
    return start, end
