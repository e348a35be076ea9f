"""Periodic housekeeping of holds and grants. Each task is safe to run twice or concurrently."""

from celery import shared_task

from usage.services import credit_grants_expire, credit_grants_expiring_announce, reservations_expire


@shared_task
def reservations_expire_task() -> int:
    return reservations_expire()


@shared_task
def credit_grants_expire_task() -> int:
    """Announce the grants about to expire (``credits.expiring``), then void those past their expiry."""
    credit_grants_expiring_announce()
    return credit_grants_expire()
