"""Periodic housekeeping of holds and grants. Each task is safe to run twice or concurrently."""

from celery import shared_task

from usage.services import credit_grants_expire, reservations_expire


@shared_task
def reservations_expire_task() -> int:
    return reservations_expire()


@shared_task
def credit_grants_expire_task() -> int:
    return credit_grants_expire()
