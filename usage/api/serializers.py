"""The API's answers, one output serializer each, so the OpenAPI schema types every response body.

Views hand these the model rows or selector results they already have; the serializers only pick and
format fields. Quantities, rates and per-event amounts go out at full precision (``DecimalString``);
amounts charged or shown as a balance with their currency's minor-unit places (``AmountString``).
"""

from typing import Any

from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from customers.models import CustomerStatus, SoftLimitSource, SubscriptionStatus
from usage.api.fields import AmountString, DecimalString, Timestamp, amount_string, decimal_string
from usage.api.pagination import ListOutput
from usage.corrections import CorrectionResult, CorrectionStatus
from usage.models import (
    CorrectionFlag,
    CreditGrant,
    GrantKind,
    LedgerEntryKind,
    Reservation,
    ReservationStatus,
)
from usage.selectors.breakdowns import MemberTotal
from usage.selectors.meter_lines import MeterLine, UsageLevel

# --- events and reservations ---------------------------------------------------------------------


class EventResultOutput(serializers.Serializer):
    idempotency_key = serializers.CharField()
    status = serializers.ChoiceField(choices=["accepted", "duplicate", "refused"])
    id = serializers.IntegerField(allow_null=True, help_text="The recorded event; null when refused.")
    code = serializers.CharField(
        allow_null=True, help_text="Why it was refused; a `402` code of `/check`. Null when recorded."
    )
    message = serializers.CharField(allow_null=True)


class EventsOutput(serializers.Serializer):
    results = EventResultOutput(many=True, help_text="One per event sent, in the order sent.")


class EventCoverageOutput(serializers.Serializer):
    included = DecimalString(source="included_quantity", help_text="Meter units in the included allowance.")
    credits = DecimalString(source="credits_amount")
    wallet = DecimalString(source="wallet_amount")
    overage = DecimalString(source="overage_amount")


class EventOutput(serializers.Serializer):
    id = serializers.IntegerField()
    idempotency_key = serializers.CharField()
    customer = serializers.CharField(source="customer.external_id")
    meter = serializers.CharField(source="meter.key")
    quantity = DecimalString()
    timestamp = Timestamp()
    billable = serializers.BooleanField()
    cost = DecimalString(help_text="At the ledger's precision, in `cost_unit`.")
    cost_unit = serializers.CharField(help_text="The plan currency or `credits`.")
    covered_by = EventCoverageOutput(source="*")
    user = serializers.CharField(
        source="member.external_id", allow_null=True, help_text="The member's external id; null: none sent."
    )
    properties = serializers.DictField(help_text="As sent.")


class EventListOutput(ListOutput):
    # Named like Serializer.data, which mypy sees; the metaclass takes declared fields off the class.
    data = EventOutput(many=True, help_text="Newest recorded first.")  # type: ignore[assignment]


class ReservationHeldOutput(serializers.Serializer):
    cost = DecimalString(source="held_cost")
    credits = DecimalString(source="held_credits")
    wallet = DecimalString(source="held_wallet")
    overage = DecimalString(source="held_overage")


class ReservationOutput(serializers.Serializer):
    id = serializers.UUIDField()
    object = serializers.ChoiceField(choices=["reservation"], default="reservation")
    status = serializers.ChoiceField(choices=ReservationStatus.choices)
    customer = serializers.CharField(source="customer.external_id")
    meter = serializers.CharField(source="meter.key")
    quantity = DecimalString()
    unit = serializers.CharField()
    held = ReservationHeldOutput(source="*")
    idempotency_key = serializers.CharField()
    expires_at = Timestamp()
    created_at = Timestamp()
    committed_quantity = DecimalString(
        allow_null=True, help_text="Units recorded by the commit; null until then."
    )
    settled_at = Timestamp(allow_null=True)


class ReservationCommitOutput(ReservationOutput):
    """The committed reservation, with the event it recorded (``context["event"]``) and the units it gave
    back."""

    event = serializers.SerializerMethodField()
    released = serializers.SerializerMethodField(help_text="Held units not used, given back.")

    @extend_schema_field(EventOutput)
    def get_event(self, reservation: Reservation) -> dict[str, Any]:
        return EventOutput(self.context["event"]).data

    @extend_schema_field(DecimalString())
    def get_released(self, reservation: Reservation) -> str | None:
        return decimal_string(reservation.quantity - self.context["event"].quantity)


# --- asking before the work ----------------------------------------------------------------------


class CheckOutput(serializers.Serializer):
    allowed = serializers.BooleanField()
    code = serializers.CharField(allow_null=True, help_text="When not allowed: the `402` code it would be.")
    message = serializers.CharField(allow_null=True)
    remaining = DecimalString(allow_null=True, help_text="Units the plan's cap still allows; null: uncapped.")


class EstimateCoverageOutput(serializers.Serializer):
    included = DecimalString(help_text="Meter units.")
    credits = DecimalString()
    wallet = DecimalString()
    overage = DecimalString()


class EstimateOutput(CheckOutput):
    amount = DecimalString(allow_null=True, help_text="The cost's money value, in `currency`.")
    currency = serializers.CharField()
    cost = DecimalString(allow_null=True)
    cost_unit = serializers.CharField(allow_null=True)
    covered_by = EstimateCoverageOutput(
        help_text="How it would be paid: `included` in units, the rest in `cost_unit`."
    )


# --- customers ------------------------------------------------------------------------------------


class SubscriptionOutput(serializers.Serializer):
    plan = serializers.CharField(source="plan_version.plan.code")
    plan_version = serializers.IntegerField(source="plan_version.number")
    status = serializers.ChoiceField(choices=SubscriptionStatus.choices)
    current_period_start = Timestamp()
    current_period_end = Timestamp()
    grandfathered = serializers.BooleanField()


class LimitsOutput(serializers.Serializer):
    soft_limit = DecimalString(
        allow_null=True, help_text="The customer's own soft limit; null when none is set."
    )
    hard_limit = DecimalString(allow_null=True)
    block_overage = serializers.BooleanField()
    default_soft_limit = DecimalString(
        allow_null=True,
        help_text="This period's default soft limit: 80% of the median usage charges of the last three closed "
        "periods, to the cent; null with no closed period or nothing charged. It applies when `soft_limit` is "
        "null and `default_soft_limit_off` is false.",
    )
    default_soft_limit_off = serializers.BooleanField(
        help_text="The customer turned the default soft limit off."
    )
    soft_limit_in_force = DecimalString(
        allow_null=True,
        help_text="What the customer is warned at: `soft_limit`, else the default when it applies.",
    )
    soft_limit_source = serializers.ChoiceField(
        choices=SoftLimitSource.choices,
        allow_null=True,
        help_text="Where `soft_limit_in_force` comes from; null when no soft limit is in force.",
    )
    meter_limits = serializers.DictField(
        child=serializers.CharField(),
        help_text="The customer's stops in units a period, by meter key, as decimal strings: past one, usage of "
        "that meter is refused with `402 hard_limit_reached`.",
    )


class CustomerOutput(serializers.Serializer):
    object = serializers.ChoiceField(choices=["customer"], default="customer")
    external_id = serializers.CharField()
    name = serializers.CharField()
    email = serializers.CharField()
    currency = serializers.CharField()
    status = serializers.ChoiceField(choices=CustomerStatus.choices)
    subscription = SubscriptionOutput(allow_null=True)
    limits = LimitsOutput(allow_null=True)
    wallet_balance = AmountString()
    credits_remaining = serializers.DictField(
        child=DecimalString(), help_text="Active credit grants' remaining amount, per unit."
    )


class CreditGrantOutput(serializers.Serializer):
    id = serializers.IntegerField()
    object = serializers.ChoiceField(choices=["credit_grant"], default="credit_grant")
    kind = serializers.ChoiceField(choices=GrantKind.choices)
    unit = serializers.CharField()
    amount = DecimalString()
    remaining = serializers.SerializerMethodField(help_text="What is left to draw now; 0 once it has ended.")
    ended = serializers.SerializerMethodField(help_text="Voided, or past `expires_at`.")
    priority = serializers.IntegerField()
    description = serializers.CharField()
    effective_at = Timestamp()
    expires_at = Timestamp(allow_null=True)
    expired_at = Timestamp(allow_null=True, help_text="When what was left was voided.")
    created_at = Timestamp()

    @extend_schema_field(DecimalString())
    def get_remaining(self, grant: CreditGrant) -> str | None:
        return decimal_string(grant.remaining_at(timezone.now()))

    @extend_schema_field(serializers.BooleanField())
    def get_ended(self, grant: CreditGrant) -> bool:
        return grant.has_ended(timezone.now())


class CreditGrantListOutput(ListOutput):
    # Named like Serializer.data, which mypy sees; the metaclass takes declared fields off the class.
    data = CreditGrantOutput(many=True, help_text="Newest first, ended grants included.")  # type: ignore[assignment]


class CreditLedgerEntryOutput(serializers.Serializer):
    id = serializers.IntegerField()
    object = serializers.ChoiceField(choices=["credit_ledger_entry"], default="credit_ledger_entry")
    kind = serializers.ChoiceField(choices=LedgerEntryKind.choices)
    amount = DecimalString(
        help_text="Signed, in `unit`: positive adds to the balance, negative takes from it."
    )
    unit = serializers.CharField(help_text="`credits` or the currency.")
    grant = serializers.IntegerField(
        source="grant_id", allow_null=True, help_text="The grant it changed; null: the wallet."
    )
    event = serializers.IntegerField(
        source="usage_event_id", allow_null=True, help_text="The usage event that drew it, if any."
    )
    reservation = serializers.UUIDField(source="reservation_id", allow_null=True)
    note = serializers.CharField()
    created_at = Timestamp()


class CreditLedgerListOutput(ListOutput):
    # Named like Serializer.data, which mypy sees; the metaclass takes declared fields off the class.
    data = CreditLedgerEntryOutput(many=True, help_text="Newest first.")  # type: ignore[assignment]


class CustomerListOutput(ListOutput):
    # Named like Serializer.data, which mypy sees; the metaclass takes declared fields off the class.
    data = CustomerOutput(many=True, help_text="Newest first.")  # type: ignore[assignment]


class WalletTopUpOutput(serializers.Serializer):
    wallet_balance = AmountString(
        help_text="The wallet after the top-up, with the currency's minor-unit places."
    )
    currency = serializers.CharField()


# --- the usage summary ---------------------------------------------------------------------------


class UsagePeriodOutput(serializers.Serializer):
    start = Timestamp()
    end = Timestamp(help_text="Exclusive.")
    is_current = serializers.BooleanField()
    key = serializers.CharField(help_text="What `?period=` takes: the start date.")


class UsageMeterOutput(serializers.Serializer):
    key = serializers.CharField()
    name = serializers.CharField()
    unit = serializers.CharField()
    quantity = DecimalString(help_text="Billable units used this period.")
    non_billable_quantity = DecimalString(help_text="Units not billed (cache hits).")
    included = DecimalString(help_text="The allowance this period, in units.")
    included_used = DecimalString()
    cap = DecimalString(allow_null=True, help_text="The plan's per-period cap, in units.")
    cost_unit = serializers.CharField(help_text="The plan currency or `credits`.")
    cost = AmountString(unit_source="cost_unit")
    credits_amount = AmountString(unit_source="cost_unit", help_text="Of `cost`, paid by credit grants.")
    wallet_amount = AmountString(unit_source="cost_unit", help_text="Of `cost`, paid from the wallet.")
    overage_amount = AmountString(unit_source="cost_unit", help_text="Of `cost`, billed after the period.")
    projected_quantity = DecimalString()
    projected_cost = AmountString(unit_source="cost_unit")
    level = serializers.ChoiceField(choices=UsageLevel.choices)
    percent_of_included = serializers.IntegerField(allow_null=True)
    remaining = DecimalString(
        source="included_remaining",
        help_text="Units of the period's allowance left: not used, nor pinned by an open reservation.",
    )
    overage = DecimalString(
        source="overage_quantity", help_text="Units past the allowance: billed, whatever paid for them."
    )
    display_quantity = serializers.SerializerMethodField(
        help_text="What the customer is shown: for a meter shown in money, its cost in `display_unit` (the "
        "currency, with its minor-unit places); for a product unit, `quantity` divided by the meter's divisor "
        "(exact); else `quantity`."
    )
    display_unit = serializers.CharField(
        help_text='The currency code (upper case) for a meter shown in money, else the unit shown ("messages", '
        '"tokens").'
    )

    @extend_schema_field(DecimalString())
    def get_display_quantity(self, line: MeterLine) -> str | None:
        if line.in_money:
            return amount_string(line.money_cost, line.currency)
        return decimal_string(line.display_quantity)


class UsageSpendOutput(serializers.Serializer):
    spend = AmountString(source="spend.spend", help_text="Usage charges so far.")
    held = AmountString(source="spend.held", help_text="Held by reservations in flight.")
    soft_limit = DecimalString(source="spend.soft_limit", allow_null=True)
    hard_limit = DecimalString(source="spend.hard_limit", allow_null=True)
    block_overage = serializers.BooleanField(source="spend.block_overage")
    level = serializers.ChoiceField(source="spend.level", choices=UsageLevel.choices)


class UsageProjectionOutput(serializers.Serializer):
    total = AmountString(source="projection.total", help_text="Base fee and usage charges.")
    usage_spend = AmountString(source="projection.usage_spend")
    credits = DecimalString(source="projection.credits", help_text="Credit-priced usage, in credits.")
    billed = AmountString(source="projection.billed", help_text="What the invoice would be.")
    limited_by = serializers.CharField(source="projection.limited_by")
    hard_limit_reached_on = serializers.DateField(source="projection.hard_limit_reached_on", allow_null=True)
    daily_rate_window_days = serializers.IntegerField(source="projection.daily_rate_window_days")
    method = serializers.CharField(source="projection.method")
    available = serializers.BooleanField(
        source="projection.available",
        help_text="False until the period is a day old: the projected figures are then usage so far.",
    )


class UsageRunwayOutput(serializers.Serializer):
    # Named like Field.source, which mypy sees; the serializer's metaclass takes declared fields off the class.
    source = serializers.ChoiceField(choices=["credits", "prepaid"])  # type: ignore[assignment]
    unit = serializers.CharField()
    remaining = AmountString(unit_source="unit")
    daily_burn = DecimalString()
    runs_out_on = serializers.DateField(allow_null=True)


class UsageChargeLineOutput(serializers.Serializer):
    description = serializers.CharField()
    meter = serializers.CharField(allow_null=True, help_text="The meter's key; null for the base fee.")
    quantity = DecimalString(allow_null=True, help_text="Billable units; null for the base fee.")
    amount = AmountString(help_text="Money, credit-priced usage at the plan's credit-pack rate.")


class UsageChargesOutput(serializers.Serializer):
    lines = UsageChargeLineOutput(many=True)
    total = AmountString(help_text="The sum of the lines.")


class UsageMemberOutput(serializers.Serializer):
    user = serializers.CharField(
        allow_null=True, help_text="The member's external id; null: usage sent without one."
    )
    name = serializers.CharField()
    meters = serializers.DictField(
        child=DecimalString(), help_text="Units recorded per meter key, cache hits included."
    )
    amount = AmountString(help_text="What those units cost, in money.")


class UsageSummaryOutput(serializers.Serializer):
    """The numbers of the customer's usage page. Money in ``currency``."""

    customer_id = serializers.CharField()
    customer_name = serializers.CharField()
    plan_name = serializers.CharField()
    plan_version = serializers.IntegerField(allow_null=True)
    currency = serializers.CharField()
    period = UsagePeriodOutput()
    as_of = Timestamp()
    days_in_period = DecimalString()
    days_elapsed = DecimalString()
    days_remaining = DecimalString()
    meters = UsageMeterOutput(many=True)
    base_fee = AmountString()
    credit_unit_amount = DecimalString(allow_null=True, help_text="Money per credit; a rate, full precision.")
    spend = UsageSpendOutput(source="*")
    projection = UsageProjectionOutput(source="*")
    wallet_balance = AmountString()
    credits_remaining = DecimalString()
    monetary_credits_remaining = AmountString()
    runways = UsageRunwayOutput(many=True)
    account_frozen = serializers.BooleanField()
    frozen_reason = serializers.CharField()
    charges = UsageChargesOutput(help_text="This period so far: the base fee and each meter's usage charge.")
    projected_total = AmountString(source="projection.total", help_text="`projection.total`.")
    limits = LimitsOutput(source="spend", help_text="The customer's spend limits.")


class CustomerUsageOutput(UsageSummaryOutput):
    """``GET /customers/{id}/usage``: the summary, with the team's totals (``context["members"]``, from
    ``usage_member_totals``: the page's "who drives usage" added up per member)."""

    members = serializers.SerializerMethodField(help_text="Who on the team drives usage, largest cost first.")

    @extend_schema_field(UsageMemberOutput(many=True))
    def get_members(self, summary: Any) -> list[dict[str, Any]]:
        members: tuple[MemberTotal, ...] = self.context["members"]
        return list(UsageMemberOutput(members, many=True).data)


# --- corrections -----------------------------------------------------------------------------------


class CorrectionEventOutput(EventOutput):
    """The adjusting event a correction records: the signed difference, pointing at the event it corrects."""

    id = serializers.IntegerField(allow_null=True, help_text="Null in a dry run: nothing was written.")
    quantity = DecimalString(help_text="The difference: negative when units were taken back.")
    corrects = serializers.IntegerField(source="corrects_id", help_text="The event corrected.")
    reason = serializers.CharField(source="correction_reason")
    corrected_by = serializers.CharField(help_text="The API key (`api key <name> (<prefix>)`) or staff user.")
    received_at = Timestamp(help_text="When the correction was made; `timestamp` is the corrected event's.")


class CorrectionOutput(serializers.Serializer):
    """``POST /events/{id}/corrections``: what the correction did, or would do in a dry run."""

    object = serializers.ChoiceField(choices=["usage_correction"], default="usage_correction")
    status = serializers.SerializerMethodField(
        help_text="`recorded`; `unchanged`: the event already has this quantity, nothing was written; "
        "`preview`: a dry run, nothing was written."
    )
    event = serializers.IntegerField(source="event.pk", help_text="The event corrected.")
    corrected_quantity = DecimalString(
        help_text="The event's quantity with all its corrections, after this one."
    )
    correction = CorrectionEventOutput(allow_null=True)
    flags = serializers.ListField(
        child=serializers.ChoiceField(choices=CorrectionFlag.choices),
        help_text="Limits the units added went past; the correction was recorded anyway.",
    )
    before = UsageChargesOutput(allow_null=True, help_text="Dry run only: this period's charges now.")
    after = UsageChargesOutput(allow_null=True, help_text="Dry run only: the charges after the correction.")

    @extend_schema_field(serializers.ChoiceField(choices=CorrectionStatus.choices))
    def get_status(self, result: CorrectionResult) -> str:
        return result.status
