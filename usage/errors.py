"""Why usage is refused. Each code is part of the public API contract (see docs/api.md)."""

from typing import Any

from core.errors import BillingError, Conflict, InvalidInput


class UsageRefused(BillingError):
    """The customer may not use this now. The API answers 402 with the code.

    A refusal a plan could lift (a cap, a plan that blocks overage) says which: ``upgrade_for`` is "cap" or
    "overage", with the customer and meter it is about, and the API's answer names the cheapest plan that
    would allow it (``usage.selectors.upgrades``).
    """

    http_status = 402
    upgrade_for: str | None = None
    customer: Any = None
    meter: Any = None

    def liftable_by(self, kind: str, *, customer: Any, meter: Any) -> "UsageRefused":
        self.upgrade_for, self.customer, self.meter = kind, customer, meter
        return self


class HardLimitReached(UsageRefused):
    code = "hard_limit_reached"


class InsufficientBalance(UsageRefused):
    code = "insufficient_balance"


class AccountFrozen(UsageRefused):
    code = "account_frozen"


class NotEntitled(UsageRefused):
    code = "not_entitled"


class EntitlementLimitReached(UsageRefused):
    code = "entitlement_limit_reached"


class SubscriptionCanceled(UsageRefused):
    code = "subscription_canceled"


class ReservationNotHeld(Conflict):
    code = "reservation_not_held"


class InvalidCost(InvalidInput):
    """An event's or a reservation's ``properties.cost`` is not a serving cost: a non-negative decimal."""

    code = "invalid_cost"


class InvalidBatch(BillingError):
    """At least one event of a batch is invalid; ``events`` lists each problem by index."""

    code = "invalid_batch"


class NoSubscription(BillingError):
    code = "no_subscription"
    http_status = 409


class PeriodClosed(Conflict):
    """A correction of usage in a billing period that has ended: its invoice is made."""

    code = "period_closed"


class CorrectionUncovered(Conflict):
    """Usage a correction adds that nothing can pay for: credits on a plan that sells none."""

    code = "correction_uncovered"
