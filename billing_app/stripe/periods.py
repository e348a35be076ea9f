"""A local billing period as Stripe holds it."""

from datetime import datetime


def stripe_period_bounds(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """A local billing period as Stripe holds it: in whole seconds, both ends rounded down (our anchor has
    microseconds, Stripe's timestamps do not). Meter events are dated inside these bounds."""
    return start.replace(microsecond=0), end.replace(microsecond=0)
