"""Errors of the catalog."""

from core.errors import BillingError


class PlanVersionInUse(BillingError):
    code = "plan_version_in_use"
    http_status = 409
