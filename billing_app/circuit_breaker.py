"""The circuit breaker: freeze a customer whose usage runs away, and tell operators.

A customer whose usage of a meter in the last hour is more than ``CIRCUIT_BREAKER_MULTIPLE`` times a normal
hour of it is frozen: their billable usage is refused until an operator unfreezes them in the customer admin.
A normal hour is the largest of:

- their typical hour: the average hour of the last ``CIRCUIT_BREAKER_HISTORY_DAYS`` whole days (from the
  daily rollups), counted from their first day of usage in that window;
- their plan's hour: the meter's included allowance spread over the hours of the billing period, so a
  plan that includes 100,000 actions a month expects about 139 an hour;
- the meter's floor: ``CIRCUIT_BREAKER_METER_FLOORS[meter key]``, else ``CIRCUIT_BREAKER_MIN_HOURLY_QUANTITY``
  (meter units an hour).

A customer with no usage of the meter in the history window (new, or back after a quiet spell) has no
typical hour to judge by: they are not frozen while the period's usage of the meter stays within the plan's
allowance for the period, whatever the pace. Past the allowance they are measured like everyone else.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Min, Sum
from django.utils import timezone

from billing_app.models import OperatorAlert, OperatorAlertKind
from billing_app.operator_alerts import operator_alert_raise, setting_decimal
from customers.models import Customer, CustomerStatus, Subscription
from customers.services import customer_freeze
from plans.models import Meter, Price
from usage.locks import customer_balance_for_update
from usage.models import DailyUsageRollup, PeriodUsage, UsageEvent

DEFAULT_CIRCUIT_BREAKER_MULTIPLE = Decimal(10)
DEFAULT_CIRCUIT_BREAKER_MIN_HOURLY_QUANTITY = Decimal(100)
DEFAULT_CIRCUIT_BREAKER_HISTORY_DAYS = 14
CUSTOMERS_PER_QUERY = 500
ZERO = Decimal(0)


@dataclass(frozen=True)
class RunawayUsage:
    customer: Customer
    meter: Meter
    last_hour: Decimal  # meter units received in the last hour
    typical_hourly: Decimal  # meter units in an average hour of the history (0 without history)
    plan_hourly: Decimal  # the plan's allowance of the meter per hour of the billing period (0 without one)
    floor: Decimal  # the meter's floor, in units an hour
    threshold: Decimal  # multiple × max(typical, plan, floor)


@dataclass(frozen=True)
class PlanAllowance:
    """What the customer's plan includes of one meter."""

    hourly: Decimal  # the period's allowance spread over its hours
    within: bool  # the current period's usage of the meter has not gone past its allowance


def meter_floors() -> dict[str, Decimal]:
    """The floor of each meter key that has its own (``CIRCUIT_BREAKER_METER_FLOORS``), in units an hour."""
    floors = getattr(settings, "CIRCUIT_BREAKER_METER_FLOORS", None) or {}
    return {key: Decimal(str(value)) for key, value in floors.items()}


def plan_allowance(*, customer_id: int, meter_id: int) -> PlanAllowance:
    """The plan's hourly allowance of a meter, and whether this period's usage is still within it."""
    subscription = Subscription.objects.filter(customer_id=customer_id).first()
    price = (
        Price.objects.filter(plan_version_id=subscription.plan_version_id, meter_id=meter_id).first()
        if subscription
        else None
    )
    if subscription is None or price is None or not price.included_quantity:
        return PlanAllowance(hourly=ZERO, within=False)
    start, end = subscription.current_period_start, subscription.current_period_end
    hours = Decimal(int((end - start).total_seconds())) / 3600
    allowance = subscription.period_allowance(
        meter_id=meter_id, plan_included=price.included_quantity, period_start=start
    )
    used = (
        PeriodUsage.objects.filter(customer_id=customer_id, meter_id=meter_id, period_start=start)
        .values_list("quantity", flat=True)
        .first()
    )
    return PlanAllowance(hourly=price.included_quantity / hours, within=(used or ZERO) <= allowance)


def runaway_usage_find(*, now: datetime | None = None) -> list[RunawayUsage]:
    """Unfrozen customers whose last hour of a meter is over the breaker's threshold.

    Reads the last hour of events through the (customer, received_at) index and the history from the
    daily rollups: never a scan of the ledger.
    """
    now = now or timezone.now()
    since = now - timedelta(hours=1)
    multiple = setting_decimal("CIRCUIT_BREAKER_MULTIPLE", DEFAULT_CIRCUIT_BREAKER_MULTIPLE)
    default_floor = setting_decimal(
        "CIRCUIT_BREAKER_MIN_HOURLY_QUANTITY", DEFAULT_CIRCUIT_BREAKER_MIN_HOURLY_QUANTITY
    )
    floors = meter_floors()
    meters = Meter.objects.in_bulk()
    history_days = int(
        getattr(settings, "CIRCUIT_BREAKER_HISTORY_DAYS", DEFAULT_CIRCUIT_BREAKER_HISTORY_DAYS)
    )
    # Index-driven: the last hour of each unfrozen customer's events through (customer, received_at), a
    # chunk of customers per query. ``timestamp`` keeps a backfill of old usage from looking like a burst.
    customer_ids = list(
        Customer.objects.exclude(status=CustomerStatus.FROZEN).order_by("pk").values_list("pk", flat=True)
    )
    last_hour: list[dict[str, Any]] = []
    for chunk in range(0, len(customer_ids), CUSTOMERS_PER_QUERY):
        last_hour += (
            UsageEvent.objects.filter(
                customer_id__in=customer_ids[chunk : chunk + CUSTOMERS_PER_QUERY],
                received_at__gte=since,
                timestamp__gte=since,
            )
            .values("customer_id", "meter_id")
            .annotate(total=Sum("quantity"))
        )
    today = now.date()
    found = []
    for row in last_hour:
        meter = meters[row["meter_id"]]
        floor = floors.get(meter.key, default_floor)
        # No threshold can be below multiple × floor: only heavier hours need their history read.
        if row["total"] <= multiple * floor:
            continue
        history = DailyUsageRollup.objects.filter(
            customer_id=row["customer_id"],
            meter_id=row["meter_id"],
            day__gte=today - timedelta(days=history_days),
            day__lt=today,
        ).aggregate(total=Sum("quantity"), first=Min("day"))
        days = (today - history["first"]).days if history["first"] else 0
        typical = history["total"] / (24 * days) if days else ZERO
        plan = plan_allowance(customer_id=row["customer_id"], meter_id=row["meter_id"])
        if not days and plan.within:
            continue  # nothing to call normal yet, and what they use is what their plan includes
        threshold = multiple * max(typical, plan.hourly, floor)
        if row["total"] > threshold:
            found.append(
                RunawayUsage(
                    customer=Customer.objects.get(pk=row["customer_id"]),
                    meter=meter,
                    last_hour=row["total"],
                    typical_hourly=typical,
                    plan_hourly=plan.hourly,
                    floor=floor,
                    threshold=threshold,
                )
            )
    return found


def circuit_breaker_check(*, now: datetime | None = None) -> list[Customer]:
    """Freeze customers with runaway usage and alert operators; returns the customers frozen now.

    A customer whose circuit-breaker alert an operator acknowledged in the last hour is left alone: the
    operator looked and let them through.
    """
    now = now or timezone.now()
    frozen = []
    for runaway in runaway_usage_find(now=now):
        customer = runaway.customer
        if OperatorAlert.objects.filter(
            kind=OperatorAlertKind.CIRCUIT_BREAKER,
            customer=customer,
            acknowledged_at__gte=now - timedelta(hours=1),
        ).exists():
            continue
        reason = (
            f"{runaway.last_hour.normalize():f} {runaway.meter.unit} of {runaway.meter.name} in the last hour, "
            f"over the threshold of {runaway.threshold.normalize():f} "
            f"(typical hour {runaway.typical_hourly:.2f}, plan's hour {runaway.plan_hourly:.2f}, "
            f"floor {runaway.floor.normalize():f})"
        )
        with transaction.atomic():
            # Under the customer's lock, so a batch being ingested finishes before the freeze and the next
            # one sees it.
            customer_balance_for_update(customer)
            customer.refresh_from_db()
            if customer.is_frozen:
                continue
            subscription = Subscription.objects.filter(customer=customer).first()
            period_start = subscription.current_period_start if subscription else now
            customer_freeze(customer=customer, reason=f"circuit breaker: {reason}", period_start=period_start)
            operator_alert_raise(
                kind=OperatorAlertKind.CIRCUIT_BREAKER,
                customer=customer,
                message=f"{customer} was frozen: {reason}. Unfreeze them in the customer admin once it is safe.",
                data={
                    "meter": runaway.meter.key,
                    "last_hour": str(runaway.last_hour),
                    "typical_hourly": str(runaway.typical_hourly),
                    "plan_hourly": str(runaway.plan_hourly),
                    "floor": str(runaway.floor),
                    "threshold": str(runaway.threshold),
                },
                dedupe_key=f"circuit-breaker-{customer.pk}-{now:%Y%m%dT%H%M}",
            )
        frozen.append(customer)
    return frozen
