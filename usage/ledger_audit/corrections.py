"""No event is corrected below zero, and a correction corrects an original event of its own customer,
meter and period."""

from datetime import datetime
from decimal import Decimal

from django.db.models import F, Sum

from usage.ledger_audit.common import ZERO, Mismatch
from usage.models import (
    UsageEvent,
)


def correction_mismatches(now: datetime | None = None) -> list[Mismatch]:
    """Every corrected event's quantity with its corrections is at least zero, and every correction corrects
    an event of its own customer, meter and period that is not itself a correction."""
    mismatches: list[Mismatch] = []
    for event_id, corrected in (
        UsageEvent.objects.filter(corrections__isnull=False)
        .annotate(corrected=F("quantity") + Sum("corrections__quantity"))
        .filter(corrected__lt=0)
        .values_list("id", "corrected")
    ):
        mismatches.append(
            Mismatch(
                f"event {event_id} with its corrections", corrected, ZERO, "counts", "must count at least"
            )
        )
    strays = UsageEvent.objects.filter(corrects__isnull=False).exclude(
        corrects__customer_id=F("customer_id"),
        corrects__meter_id=F("meter_id"),
        corrects__period_start=F("period_start"),
        corrects__corrects__isnull=True,
    )
    for correction_id, corrects_id in strays.values_list("id", "corrects_id"):
        mismatches.append(
            Mismatch(
                f"correction {correction_id} of event {corrects_id}: not an original event of its customer, "
                "meter and period",
                Decimal(corrects_id),
                Decimal(correction_id),
                "corrects",
                "correction",
            )
        )
    return mismatches
