"""The API's request and response bodies, as TypedDicts.

Each response type has the fields of the schema component named in its docstring (``/api/schema``); the
test suite checks them against the schema the server serves. Decimals are strings, as on the wire
(``"0.000002"``): turn them into ``decimal.Decimal``, never ``float``. Timestamps are ISO 8601 strings
in UTC.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

EventStatus = Literal["accepted", "duplicate", "refused", "buffered"]
ReservationStatus = Literal["held", "committed", "released", "expired"]
GrantKind = Literal["purchased", "promotional"]
CustomerStatus = Literal["active", "frozen"]
# recorded; unchanged: the event already had the quantity, nothing written; preview: a dry run, nothing written.
CorrectionStatus = Literal["recorded", "unchanged", "preview"]
# A limit the units a correction adds went past; the correction was recorded anyway.
CorrectionFlag = Literal["entitlement_limit", "hard_limit", "meter_limit", "overage_blocked"]

# --- requests -------------------------------------------------------------------------------------


class _EventParamsRequired(TypedDict):
    customer: str
    meter: str


class EventParams(_EventParamsRequired, total=False):
    """One event for ``events.create_batch``; a missing ``idempotency_key`` or ``timestamp`` is filled in."""

    idempotency_key: str
    quantity: Any  # Decimal, int or a decimal string; never float
    timestamp: Any  # an aware datetime or an ISO 8601 string
    user: str
    properties: dict[str, Any]


# --- events and reservations ----------------------------------------------------------------------


class EventResult(TypedDict):
    """``EventResultOutput``. ``buffered`` is this client's own status: kept on disk, delivered later."""

    idempotency_key: str
    status: EventStatus
    id: int | None
    code: str | None  # why it was refused; null otherwise
    message: str | None


class EventCoverage(TypedDict):
    """``EventCoverageOutput``: ``included`` in meter units, the rest in ``cost_unit``."""

    included: str
    credits: str
    wallet: str
    overage: str


class _EventFields(TypedDict):
    """The fields of a recorded event and of the adjusting event a correction records."""

    idempotency_key: str
    customer: str
    meter: str
    quantity: str
    timestamp: str
    billable: bool
    cost: str
    cost_unit: str
    covered_by: EventCoverage
    user: str | None  # the member's external id
    properties: dict[str, Any]


class Event(_EventFields):
    """``EventOutput``: a recorded event."""

    id: int


class ReservationHeld(TypedDict):
    """``ReservationHeldOutput``."""

    cost: str
    credits: str
    wallet: str
    overage: str


class Reservation(TypedDict):
    """``ReservationOutput``."""

    id: str
    object: Literal["reservation"]
    status: ReservationStatus
    customer: str
    meter: str
    quantity: str
    unit: str
    held: ReservationHeld
    idempotency_key: str
    expires_at: str
    created_at: str
    committed_quantity: str | None  # null until committed
    settled_at: str | None


class ReservationCommit(Reservation):
    """``ReservationCommitOutput``: the committed reservation, its event and the units given back."""

    event: Event
    released: str


# --- corrections ----------------------------------------------------------------------------------


class CorrectionEvent(_EventFields):
    """``CorrectionEventOutput``: the adjusting event a correction records, pointing at the event it corrects.

    ``quantity`` and ``cost`` are the signed difference (negative when units were taken back);
    ``timestamp`` is the corrected event's, ``received_at`` when the correction was made.
    """

    id: int | None  # null in a preview: nothing was written
    corrects: int  # the id of the event corrected
    reason: str
    corrected_by: str  # the API key ("api key <name> (<prefix>)") or the staff user
    received_at: str


class UsageCorrection(TypedDict):
    """``CorrectionOutput``: what a correction did, or would do in a preview."""

    object: Literal["usage_correction"]
    status: CorrectionStatus
    event: int  # the id of the event corrected
    corrected_quantity: str  # the event's quantity with all its corrections, after this one
    correction: CorrectionEvent | None  # null when the event already had the quantity
    flags: list[CorrectionFlag]
    before: UsageCharges | None  # a preview's: the period's charges now; null otherwise
    after: UsageCharges | None  # a preview's: the period's charges after the correction


# --- asking before the work -----------------------------------------------------------------------


class CheckResult(TypedDict):
    """``CheckOutput``."""

    allowed: bool
    code: str | None
    message: str | None
    remaining: str | None


class EstimateCoverage(TypedDict):
    """``EstimateCoverageOutput``."""

    included: str
    credits: str
    wallet: str
    overage: str


class Estimate(CheckResult):
    """``EstimateOutput``."""

    amount: str | None
    currency: str
    cost: str | None
    cost_unit: str | None
    covered_by: EstimateCoverage


# --- customers ------------------------------------------------------------------------------------


class Subscription(TypedDict):
    """``SubscriptionOutput``."""

    plan: str
    plan_version: int
    status: str
    current_period_start: str
    current_period_end: str
    grandfathered: bool


class Limits(TypedDict):
    """``LimitsOutput``."""

    soft_limit: str | None  # the customer's own
    hard_limit: str | None
    block_overage: bool
    default_soft_limit: str | None  # this period's default: 80% of typical spend
    default_soft_limit_off: bool
    soft_limit_in_force: str | None
    soft_limit_source: Literal["customer", "default"] | None  # None: no soft limit in force
    meter_limits: dict[str, str]  # the customer's stops in units a period, by meter key


class Customer(TypedDict):
    """``CustomerOutput``."""

    object: Literal["customer"]
    external_id: str
    name: str
    email: str
    currency: str
    status: CustomerStatus
    subscription: Subscription | None
    limits: Limits | None
    wallet_balance: str
    credits_remaining: dict[str, str]


class CreditGrant(TypedDict):
    """``CreditGrantOutput``."""

    id: int
    object: Literal["credit_grant"]
    kind: GrantKind
    unit: str
    amount: str
    remaining: str  # "0" once it has ended
    ended: bool  # voided, or past expires_at
    priority: int
    description: str
    effective_at: str
    expires_at: str | None
    expired_at: str | None
    created_at: str


class WalletTopUp(TypedDict):
    """``WalletTopUpOutput``."""

    wallet_balance: str
    currency: str


# --- the usage summary ----------------------------------------------------------------------------


class UsagePeriod(TypedDict):
    """``UsagePeriodOutput``."""

    start: str
    end: str
    is_current: bool
    key: str


class UsageMeter(TypedDict):
    """``UsageMeterOutput``."""

    key: str
    name: str
    unit: str
    quantity: str
    non_billable_quantity: str
    included: str
    included_used: str
    cap: str | None
    cost_unit: str
    cost: str
    credits_amount: str
    wallet_amount: str
    overage_amount: str
    projected_quantity: str
    projected_cost: str
    level: str
    percent_of_included: int | None
    remaining: str  # units of the allowance left (usage taken and open holds counted)
    overage: str  # units past the allowance
    display_quantity: str  # what the customer is shown: money for a meter shown in money, else units
    display_unit: str  # the currency code (upper case) for a money meter, else the unit shown ("messages")


class UsageSpend(TypedDict):
    """``UsageSpendOutput``."""

    spend: str
    held: str
    soft_limit: str | None
    hard_limit: str | None
    block_overage: bool
    level: str


class UsageProjection(TypedDict):
    """``UsageProjectionOutput``."""

    total: str
    usage_spend: str
    credits: str
    billed: str
    limited_by: str
    hard_limit_reached_on: str | None
    daily_rate_window_days: int
    method: str
    available: bool


class UsageRunway(TypedDict):
    """``UsageRunwayOutput``."""

    source: Literal["credits", "prepaid"]
    unit: str
    remaining: str
    daily_burn: str
    runs_out_on: str | None


class UsageChargeLine(TypedDict):
    """``UsageChargeLineOutput``."""

    description: str
    meter: str | None  # null for the base fee
    quantity: str | None
    amount: str


class UsageCharges(TypedDict):
    """``UsageChargesOutput``: the period so far as invoice lines."""

    lines: list[UsageChargeLine]
    total: str


class UsageMember(TypedDict):
    """``UsageMemberOutput``."""

    user: str | None
    name: str
    meters: dict[str, str]
    amount: str


class UsageSummary(TypedDict):
    """``CustomerUsageOutput``: the numbers of the customer's usage page."""

    customer_id: str
    customer_name: str
    plan_name: str
    plan_version: int | None
    currency: str
    period: UsagePeriod
    as_of: str
    days_in_period: str
    days_elapsed: str
    days_remaining: str
    meters: list[UsageMeter]
    base_fee: str
    credit_unit_amount: str | None
    spend: UsageSpend
    projection: UsageProjection
    wallet_balance: str
    credits_remaining: str
    monetary_credits_remaining: str
    runways: list[UsageRunway]
    account_frozen: bool
    frozen_reason: str
    charges: UsageCharges
    projected_total: str
    limits: Limits
    members: list[UsageMember]
