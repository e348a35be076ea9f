"""Settings of the real Celery worker the worker tests start: the suite's settings, with a short outbox lease
so that a drain after a killed worker need not wait two minutes for the dead worker's claim to lapse."""

from tests.settings import *  # noqa: F403

STRIPE_OUTBOX_LEASE_SECONDS = 2
STRIPE_MAX_NETWORK_RETRIES = 0
STRIPE_TIMEOUT_SECONDS = 5
