"""Period close: move subscriptions whose period ended into the next one."""

from celery import shared_task
from django.db import transaction
from django.utils import timezone

from customers.models import Subscription, SubscriptionStatus
from customers.services import subscription_roll_period


@shared_task
def subscriptions_roll_periods_task() -> int:
    """Roll every subscription past its period end, each under its own row lock (skipping busy ones)."""
    now = timezone.now()
    rolled = 0
    due = Subscription.objects.filter(current_period_end__lte=now, status=SubscriptionStatus.ACTIVE)
    for subscription_id in due.values_list("pk", flat=True):
        with transaction.atomic():
            subscription = (
                Subscription.objects.select_for_update(skip_locked=True)
                .select_related("plan_version")
                .filter(pk=subscription_id)
                .first()
            )
            if subscription is not None and subscription_roll_period(subscription=subscription, now=now):
                rolled += 1
    return rolled
