"""The periodic jobs, for django-celery-beat.

Settings import this as ``CELERY_BEAT_SCHEDULE``; beat's ``DatabaseScheduler`` copies the entries into its
``PeriodicTask`` table on start, where staff can see, pause or re-time them in the admin. Every task here is
safe to run twice or concurrently. ``expires`` drops a run that waited longer than its interval (a worker
was down): the next one does the same work.
"""

from typing import Any

from celery.schedules import crontab

MINUTE = 60.0

CELERY_BEAT_SCHEDULE: dict[str, dict[str, Any]] = {
    "stripe-outbox-drain": {
        "task": "billing_app.tasks.stripe_outbox_drain_task",
        "schedule": MINUTE,
        "options": {"expires": MINUTE},
    },
    "stripe-sync": {
        "task": "billing_app.tasks.stripe_sync_task",
        "schedule": 5 * MINUTE,
        "options": {"expires": 5 * MINUTE},
    },
    "stripe-reconcile": {
        "task": "billing_app.tasks.stripe_reconcile_task",
        "schedule": crontab(minute=17),
        "options": {"expires": 3600.0},
    },
    "spend-alerts": {
        "task": "billing_app.tasks.spend_alerts_task",
        "schedule": MINUTE,
        "options": {"expires": MINUTE},
    },
    "circuit-breaker": {
        "task": "billing_app.tasks.circuit_breaker_task",
        "schedule": 5 * MINUTE,
        "options": {"expires": 5 * MINUTE},
    },
    "margins-negative": {
        "task": "billing_app.tasks.margins_negative_task",
        "schedule": 15 * MINUTE,
        "options": {"expires": 15 * MINUTE},
    },
    "reservations-expire": {
        "task": "usage.tasks.reservations_expire_task",
        "schedule": MINUTE,
        "options": {"expires": MINUTE},
    },
    "credit-grants-expire": {
        "task": "usage.tasks.credit_grants_expire_task",
        "schedule": 5 * MINUTE,
        "options": {"expires": 5 * MINUTE},
    },
    "subscriptions-roll-periods": {
        "task": "customers.tasks.subscriptions_roll_periods_task",
        "schedule": MINUTE,
        "options": {"expires": MINUTE},
    },
    "price-changes": {
        "task": "billing_app.tasks.price_changes_task",
        "schedule": 5 * MINUTE,
        "options": {"expires": 5 * MINUTE},
    },
    "idempotency-keys-prune": {
        "task": "billing_app.tasks.idempotency_keys_prune_task",
        "schedule": crontab(hour=4, minute=23),
        "options": {"expires": 24 * 3600.0},
    },
    "usage-carries-finalize": {
        "task": "billing_app.tasks.usage_carries_finalize_task",
        "schedule": 5 * MINUTE,
        "options": {"expires": 5 * MINUTE},
    },
    "auto-top-up-resume": {
        "task": "billing_app.tasks.auto_top_up_resume_task",
        "schedule": 5 * MINUTE,
        "options": {"expires": 5 * MINUTE},
    },
    "webhook-deliveries-send": {
        "task": "billing_app.tasks.webhook_deliveries_send_task",
        "schedule": MINUTE,
        "options": {"expires": MINUTE},
    },
    "usage-partitions-maintain": {
        "task": "usage.tasks.usage_partitions_maintain_task",
        "schedule": crontab(hour=3, minute=41),
        "options": {"expires": 3600.0},
    },
    "checkout-sessions-sweep": {
        "task": "billing_app.tasks.checkout_sessions_sweep_task",
        "schedule": 5 * MINUTE,
        "options": {"expires": 5 * MINUTE},
    },
}
