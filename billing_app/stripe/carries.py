"""Period close for usage sent to Stripe: the last carried fraction of each ended period.

The drain sends whole minor units of money and carries the fraction of one (``billing_app.stripe.outbox``); once a period has
ended and nothing of it is still queued, the remaining fraction is rounded half up, once.
"""

from datetime import datetime
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from billing_app.models import StripeMeterEvent, StripeUsageCarry
from billing_app.stripe.outbox import meter_event_timestamp
from customers.models import Customer
from usage.models import OutboxStatus, StripeUsageOutbox


def usage_carries_finalize(*, now: datetime | None = None, customer: Customer | None = None) -> int:
    """Round the last fraction of each ended period half up, once, so Stripe bills the rounded total.

    A carry is finalized when its period has ended and none of the customer's usage for that period is
    still waiting in the outbox or unsent. With ``customer``, every open carry of that customer is due
    whatever its period's end: its subscription was canceled, and the final invoice is made now. Returns the
    number of carries finalized.
    """
    now = now or timezone.now()
    finalized = 0
    due = StripeUsageCarry.objects.filter(finalized_at__isnull=True)
    due = due.filter(customer=customer) if customer is not None else due.filter(period_end__lte=now)
    for carry_id in list(due.values_list("pk", flat=True)):
        with transaction.atomic():
            carry = (
                StripeUsageCarry.objects.select_for_update(skip_locked=True)
                .select_related("customer")
                .filter(pk=carry_id, finalized_at__isnull=True)
                .first()
            )
            if carry is None or _period_busy(carry):
                continue
            remainder = carry.minor_units - carry.value
            last = (
                StripeMeterEvent.objects.filter(
                    customer=carry.customer, event_name=carry.event_name, period_start=carry.period_start
                )
                .order_by("-window_start")
                .first()
            )
            if remainder >= Decimal("0.5") and last is not None:
                timestamp = meter_event_timestamp(
                    window_start=last.window_start,
                    period_start=carry.period_start,
                    period_end=carry.period_end,
                    now=now,
                )
                if timestamp is not None:
                    StripeMeterEvent.objects.create(
                        identifier=f"carry-{carry.pk}-{int(carry.period_start.timestamp())}",
                        customer=carry.customer,
                        meter_id=last.meter_id,
                        dimension_value=last.dimension_value,
                        event_name=carry.event_name,
                        stripe_meter_id=last.stripe_meter_id,
                        stripe_customer_id=last.stripe_customer_id,
                        period_start=carry.period_start,
                        window_start=last.window_start,
                        timestamp=timestamp,
                        quantity=Decimal(0),
                        value=1,
                        row_count=0,
                    )
                    carry.value += 1
            carry.finalized_at = now
            carry.save(update_fields=["value", "finalized_at"])
            finalized += 1
    return finalized


def _period_busy(carry: StripeUsageCarry) -> bool:
    waiting_rows = StripeUsageOutbox.objects.filter(
        customer=carry.customer, period_start=carry.period_start, status=OutboxStatus.PENDING
    )
    return waiting_rows.exists()
