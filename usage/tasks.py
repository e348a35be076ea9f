"""Periodic housekeeping of holds, grants and the ledger's partitions. Each task is safe to run twice or
concurrently."""

from celery import shared_task

from usage.partitions import usage_partitions_maintain
from usage.services import credit_grants_expire, credit_grants_expiring_announce, reservations_expire


@shared_task
def reservations_expire_task() -> int:
    return reservations_expire()


@shared_task
def credit_grants_expire_task() -> int:
    """Announce the grants about to expire (``credits.expiring``), then void those past their expiry."""
    credit_grants_expiring_announce()
    return credit_grants_expire()


@shared_task
def usage_partitions_maintain_task() -> dict[str, list[str]]:
    """Make the ledger's months ahead; detach those past ``USAGE_EVENT_RETENTION_MONTHS``, if set."""
    report = usage_partitions_maintain()
    return {
        "created": report.created,
        "detached": [partition.table_name for partition in report.detached],
        "kept_open": report.kept_open,
    }
