"""The API's answers, one output serializer each, so the OpenAPI schema types every response body.

Views hand these the model rows or selector results they already have; the serializers only pick and
format fields. Quantities, rates and per-event amounts go out at full precision (``DecimalString``);
amounts charged or shown as a balance with their currency's minor-unit places (``AmountString``).
"""

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from customers.models import CustomerStatus, SubscriptionStatus
from usage.api.fields import AmountString, DecimalString, Timestamp, decimal_string
from usage.models import GrantKind, Reservation, ReservationStatus
from usage.selectors.meter_lines import UsageLevel

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
    committed_quantity = DecimalString(allow_null=True, help_text="Null until the reservation is committed.")
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
    soft_limit = DecimalString(allow_null=True)
    hard_limit = DecimalString(allow_null=True)
    block_overage = serializers.BooleanField()


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
    remaining = DecimalString()
    priority = serializers.IntegerField()
    expires_at = Timestamp(allow_null=True)
    created_at = Timestamp()


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


class UsageSummaryOutput(serializers.Serializer):
    """``GET /customers/{id}/usage``: the numbers of the customer's usage page. Money in ``currency``."""

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
