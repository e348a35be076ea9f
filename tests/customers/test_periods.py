"""Billing periods: counted from the anchor, clamped to short months, half-open [start, end)."""

import calendar
from datetime import UTC, datetime

import pytest

from customers.periods import period_bounds
from plans.models import BillingInterval


def at(year, month, day, hour=0, minute=0):
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


MONTH, YEAR = BillingInterval.MONTH, BillingInterval.YEAR


@pytest.mark.parametrize(
    ("moment", "start", "end"),
    [
        (at(2025, 1, 31, 12), at(2025, 1, 31, 9), at(2025, 2, 28, 9)),
        (at(2025, 2, 28, 9), at(2025, 2, 28, 9), at(2025, 3, 31, 9)),
        (at(2025, 3, 15), at(2025, 2, 28, 9), at(2025, 3, 31, 9)),
        (at(2025, 4, 30, 10), at(2025, 4, 30, 9), at(2025, 5, 31, 9)),
        (at(2025, 12, 31, 23, 59), at(2025, 12, 31, 9), at(2026, 1, 31, 9)),
    ],
)
def test_a_monthly_period_anchored_on_the_31st_ends_on_each_months_last_day(moment, start, end):
    assert period_bounds(anchor=at(2025, 1, 31, 9), interval=MONTH, moment=moment) == (start, end)


def test_a_monthly_anchor_on_the_31st_keeps_the_31st_after_february():
    # Clamping to Feb 29 must not stick: the period after February ends on Mar 31, not Mar 29.
    ends = [
        period_bounds(anchor=at(2024, 1, 31), interval=MONTH, moment=at(2024, month, 10))[1]
        for month in (2, 3, 4)
    ]
    assert ends == [at(2024, 2, 29), at(2024, 3, 31), at(2024, 4, 30)]


def test_a_yearly_period_runs_from_anniversary_to_anniversary():
    anchor = at(2023, 6, 15, 8)
    assert period_bounds(anchor=anchor, interval=YEAR, moment=at(2025, 1, 1)) == (
        at(2024, 6, 15, 8),
        at(2025, 6, 15, 8),
    )
    assert period_bounds(anchor=anchor, interval=YEAR, moment=at(2025, 6, 15, 7, 59)) == (
        at(2024, 6, 15, 8),
        at(2025, 6, 15, 8),
    )


def test_a_yearly_period_anchored_on_february_29_renews_on_february_28():
    anchor = at(2024, 2, 29)
    assert period_bounds(anchor=anchor, interval=YEAR, moment=at(2025, 3, 1)) == (
        at(2025, 2, 28),
        at(2026, 2, 28),
    )
    assert period_bounds(anchor=anchor, interval=YEAR, moment=at(2028, 2, 29)) == (
        at(2028, 2, 29),
        at(2029, 2, 28),
    )


@pytest.mark.parametrize("interval", [MONTH, YEAR])
def test_a_moment_exactly_on_a_boundary_starts_the_new_period(interval):
    anchor = at(2025, 1, 31, 9)
    _, end = period_bounds(anchor=anchor, interval=interval, moment=anchor)
    start, next_end = period_bounds(anchor=anchor, interval=interval, moment=end)
    assert start == end
    assert next_end > end
    assert period_bounds(anchor=anchor, interval=interval, moment=anchor) == (anchor, end)


def test_a_moment_just_before_a_boundary_is_still_in_the_old_period():
    anchor = at(2025, 1, 31, 9)
    assert period_bounds(anchor=anchor, interval=MONTH, moment=at(2025, 2, 28, 8, 59)) == (
        anchor,
        at(2025, 2, 28, 9),
    )


def test_periods_are_contiguous_for_three_years():
    anchor = at(2024, 1, 31, 17, 30)
    _, end = period_bounds(anchor=anchor, interval=MONTH, moment=anchor)
    for _ in range(35):
        start, next_end = period_bounds(anchor=anchor, interval=MONTH, moment=end)
        assert start == end
        last_day = calendar.monthrange(next_end.year, next_end.month)[1]
        assert next_end.day == min(31, last_day)
        end = next_end
    assert end == at(2027, 1, 31, 17, 30)
