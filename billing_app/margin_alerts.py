"""Telling operators when serving a customer costs more than their usage brings in this billing period.

Every run reads each customer's current-period margin from the rollups (``usage.selectors.margins``) and raises
a ``margin_negative`` operator alert (emailed, and posted to the Slack-compatible webhook) for a customer whose
margin is below zero. It is raised once per (customer, billing period): the alert's ``dedupe_key`` is unique in
the database, so two runs at once, or a run after a restart, never page twice. A customer whose plan currency is
not the operator's has no margin (``usage.selectors.margins``) and is never alerted on.
"""

from datetime import datetime

from django.db import transaction

from billing_app.models import OperatorAlert, OperatorAlertKind
from billing_app.operator_alerts import operator_alert_raise
from core.money import format_money
from customers.events import CustomerEventType, customer_event_announce, exact, instant
from customers.models import Customer, Subscription
from usage.selectors.margins import MarginGroup, MarginRow, ReportPeriod, margin_report


def margins_negative_check() -> list[OperatorAlert]:
    """Raise the alert for each customer whose current-period margin is negative; returns the alerts raised now."""
    report = margin_report(period=ReportPeriod(label="current"), group_by=MarginGroup.CUSTOMER)
    negative = {row.key: row for row in report.rows if row.margin is not None and row.margin < 0}
    if not negative:
        return []
    subscriptions = Subscription.objects.filter(customer__external_id__in=negative).select_related("customer")
    raised = []
    for subscription in subscriptions:
        alert = margin_negative_alert_raise(
            customer=subscription.customer,
            period_start=subscription.current_period_start,
            row=negative[subscription.customer.external_id],
        )
        if alert is not None:
            raised.append(alert)
    return raised


@transaction.atomic
def margin_negative_alert_raise(
    *, customer: Customer, period_start: datetime, row: MarginRow
) -> OperatorAlert | None:
    """The one place a customer's negative margin is announced, once per billing period (None: already raised).

    Whatever else must hear of it (an outgoing ``margin.negative`` webhook) is sent from here, inside the same
    once-per-period guard, so it is sent exactly when the operators are told.
    """
    currency = row.currency
    margin = row.margin
    if margin is None:
        return None
    alert = operator_alert_raise(
        kind=OperatorAlertKind.MARGIN_NEGATIVE,
        customer=customer,
        message=(
            f"{customer} costs more to serve than their usage brings in this billing period "
            f"(from {period_start:%Y-%m-%d}): revenue {format_money(row.revenue, currency)}, serving cost "
            f"{format_money(row.cost, currency)}, margin {format_money(margin, currency)}. "
            "See the margin report by dimension for the model behind it."
        ),
        data={
            "period_start": period_start.isoformat(),
            "currency": currency,
            "revenue": str(row.revenue),
            "cost": str(row.cost),
            "margin": str(margin),
        },
        dedupe_key=f"margin-negative-{customer.pk}-{period_start:%Y%m%dT%H%M%S}",
    )
    if alert is not None:
        customer_event_announce(
            event_type=CustomerEventType.MARGIN_NEGATIVE,
            customer=customer,
            data={
                "customer": customer.external_id,
                "period_start": instant(period_start),
                "revenue": exact(row.revenue),
                "cost": exact(row.cost),
                "margin": exact(margin),
                "currency": currency,
            },
        )
    return alert
