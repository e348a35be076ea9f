"""Reads behind /settings/usage and ``GET /api/v1/customers/{id}/usage``.

Every number the page shows comes from here, and the API serializes the same ``UsageSummary``
(``usage.api.serializers.UsageSummaryOutput``), so the page and the API cannot disagree.

Only ``PeriodUsage``, ``DailyUsageRollup``, the credit tables, reservations in flight and
notifications are read, never ``UsageEvent``: the cost of a read grows with days, members and
actions, not with the number of events in the period.

Units: quantities are in the meter's unit (tokens, actions, credits); costs are in the price's
unit (the plan currency, or credits for a credit-priced meter); "spend" is money in the plan
currency, credits converted at the plan's credit-pack rate by ``plans.terms.PlanTerms``, which the
consumption engine (``usage.consumption``) checks the limits with too.

The reads live in this package's modules, one concept each; the names callers import are
re-exported here.
"""

from usage.selectors.breakdowns import usage_member_breakdown, usage_member_totals, usage_top_actions
from usage.selectors.formatting import format_amount, format_quantity, format_quantity_short, unit_label
from usage.selectors.notifications import usage_notifications
from usage.selectors.periods import (
    BillingPeriod,
    NoBillingPeriod,
    PeriodNotFound,
    usage_period_resolve,
    usage_periods,
)
from usage.selectors.projection import PROJECTION_DECAY
from usage.selectors.series import DailySeries, usage_daily_series
from usage.selectors.summary import UsageLevel, UsageSummary, usage_period_summary
from usage.selectors.wallet import credits_remaining_by_unit, usage_wallet

__all__ = [
    "PROJECTION_DECAY",
    "BillingPeriod",
    "DailySeries",
    "NoBillingPeriod",
    "PeriodNotFound",
    "UsageLevel",
    "UsageSummary",
    "credits_remaining_by_unit",
    "format_amount",
    "format_quantity",
    "format_quantity_short",
    "unit_label",
    "usage_daily_series",
    "usage_member_breakdown",
    "usage_member_totals",
    "usage_notifications",
    "usage_period_resolve",
    "usage_period_summary",
    "usage_periods",
    "usage_top_actions",
    "usage_wallet",
]
