"""Errors of the catalog."""

from core.errors import BillingError


class PlanVersionInUse(BillingError):
    code = "plan_version_in_use"
    http_status = 409


class UnknownMeter(BillingError):
    """A meter key the catalog does not have; ``param`` names where it was given."""

    code = "unknown_meter"
