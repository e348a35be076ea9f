"""Writes for customers, members, subscriptions, spend controls and notifications."""

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from core.errors import Conflict, InvalidInput, NotFound, OutOfRange
from core.money import ISO_4217_CURRENCIES, LEDGER_PLACES, QUANTITY_PLACES
from customers.events import CustomerEventType, customer_event_announce, instant
from customers.models import (
    Customer,
    CustomerStatus,
    Member,
    MemberRole,
    Notification,
    NotificationKind,
    SpendControls,
    Subscription,
    external_id_validator,
)
from customers.periods import period_bounds
from plans.errors import UnknownMeter
from plans.models import QUANTITY, BillingInterval, Meter, Plan, PlanVersion
from plans.selectors import plan_latest_published_version

# A meter limit is compared with a period's quantity column (24 digits, 6 places): it must fit one.
MAX_METER_LIMIT = Decimal(10) ** (QUANTITY["max_digits"] - QUANTITY["decimal_places"]) - QUANTITY_PLACES


def customer_create(
    *, external_id: str, name: str, email: str = "", plan_code: str | None = None, currency: str | None = None
) -> Customer:
    """Create a customer, subscribed to the latest version of ``plan_code`` when given."""
    try:
        external_id_validator(external_id)
    except ValidationError as error:
        raise InvalidInput(error.messages[0], param="external_id") from None
    if currency is not None and currency.lower() not in ISO_4217_CURRENCIES:
        raise InvalidInput(f"{currency!r} is not an ISO 4217 currency code.", param="currency")
    plan_version = plan_version_for_code(plan_code) if plan_code else None
    with transaction.atomic():
        try:
            customer = Customer.objects.create(
                external_id=external_id,
                name=name,
                email=email,
                currency=(currency or (plan_version.currency if plan_version else "usd")).lower(),
            )
        except IntegrityError as error:
            raise Conflict(f"A customer with external id {external_id!r} already exists.") from error
        subscription = (
            subscription_start(customer=customer, plan_version=plan_version)
            if plan_version is not None
            else None
        )
        # A new customer's first period has no closed period before it, so no default soft limit: known
        # now, and stored for the period so that nothing computes it again.
        SpendControls.objects.create(
            customer=customer,
            default_soft_limit_period_start=subscription.current_period_start if subscription else None,
        )
    return customer


def plan_version_for_code(plan_code: str) -> PlanVersion:
    plan = Plan.objects.filter(code=plan_code).first()
    version = plan_latest_published_version(plan) if plan else None
    if version is None:
        raise NotFound(f"No published plan with code {plan_code!r}.", param="plan")
    return version


@transaction.atomic
def subscription_start(
    *,
    customer: Customer,
    plan_version: PlanVersion,
    at: datetime | None = None,
    usage_so_far: dict[int, tuple[Decimal, Decimal]] | None = None,
) -> Subscription:
    """Put the customer on ``plan_version`` from ``at`` (now).

    A first subscription opens a billing period anchored at ``at``. A plan change keeps the billing
    period (when the interval is the same): usage so far keeps the prices it was rated at, and the new
    plan's allowance is prorated for the time left and added to the allowance already used, its tiers
    counting from the change. ``usage_so_far`` is what the period had used per meter id, (allowance
    units, billable units); ``usage.services.subscription_change`` reads it under the customer's lock.
    A change of interval (monthly to yearly) opens a new period at the change. Subscribing again to
    the version in force changes nothing.
    """
    at = at or timezone.now()
    if plan_version.currency != customer.currency:
        raise InvalidInput(
            f"The plan is priced in {plan_version.currency.upper()} but the customer pays in "
            f"{customer.currency.upper()}.",
            param="plan",
        )
    current = Subscription.objects.select_for_update().filter(customer=customer).first()
    if current is not None and current.plan_version_id == plan_version.pk:
        # A new period here would hand out a second allowance and reset the spend the limits count.
        return current
    if (
        current is not None
        and current.interval == plan_version.interval
        and current.current_period_start <= at < current.current_period_end
    ):
        # The plan leaving is owed its base fee for the part of the period it covered, as Stripe prorates.
        current.base_fee_before_plan = current.period_base_fee(current.plan_version.base_fee) - (
            current.plan_version.base_fee * current.period_share_from(at)
        ).quantize(LEDGER_PLACES)
        current.plan_version = plan_version
        current.plan_started_at = at
        current.usage_at_plan_start = {
            str(meter_id): {"included": str(included), "billable": str(billable)}
            for meter_id, (included, billable) in (usage_so_far or {}).items()
        }
        current.grandfathered = False
        current.pending_plan_version = None
        current.save()
        return current
    start, end = period_bounds(anchor=at, interval=BillingInterval(plan_version.interval), moment=at)
    subscription, _ = Subscription.objects.update_or_create(
        customer=customer,
        defaults={
            "plan_version": plan_version,
            "billing_anchor": at,
            "current_period_start": start,
            "current_period_end": end,
            "plan_started_at": None,
            "usage_at_plan_start": {},
            "base_fee_before_plan": Decimal(0),
            "base_fee_charged": plan_version.base_fee,
            "grandfathered": False,
            "pending_plan_version": None,
        },
    )
    return subscription


def subscription_roll_period(*, subscription: Subscription, now: datetime | None = None) -> bool:
    """Move the subscription to the period containing ``now``; apply a pending migration at renewal.

    Returns whether it moved. Safe to run twice: a subscription already current does not move.
    """
    now = now or timezone.now()
    if now < subscription.current_period_end:
        return False
    if subscription.pending_plan_version is not None:
        subscription.plan_version = subscription.pending_plan_version
        subscription.pending_plan_version = None
        subscription.grandfathered = False
    # A new period: the plan in force covers all of it.
    subscription.plan_started_at = None
    subscription.usage_at_plan_start = {}
    subscription.base_fee_before_plan = Decimal(0)
    subscription.base_fee_charged = subscription.plan_version.base_fee
    start, end = period_bounds(
        anchor=subscription.billing_anchor,
        interval=BillingInterval(subscription.plan_version.interval),
        moment=now,
    )
    subscription.current_period_start, subscription.current_period_end = start, end
    subscription.save()
    return True


def spend_controls_update(
    *,
    customer: Customer,
    soft_limit: Decimal | None,
    hard_limit: Decimal | None,
    block_overage: bool,
    meter_limits: Mapping[str, Decimal | None] | None = None,
    default_soft_limit_off: bool | None = None,
) -> SpendControls:
    """Save the customer's own limits. They apply to the next check, reservation or event at once.

    ``meter_limits`` changes the stops in units of the meters it names: a quantity sets one, None removes
    it; meters it does not name keep theirs, and leaving it out keeps them all. ``default_soft_limit_off``
    turns the default soft limit off (True) or on again (False); None keeps the customer's choice.
    """
    errors = {}
    for field, value in (("soft_limit", soft_limit), ("hard_limit", hard_limit)):
        if value is not None and value < 0:
            errors[field] = "must be zero or more"
    if soft_limit is not None and hard_limit is not None and hard_limit < soft_limit:
        errors["hard_limit"] = "must be at least the soft limit"
    if errors:
        field, message = next(iter(errors.items()))
        raise InvalidInput(f"{field.replace('_', ' ').capitalize()} {message}.", param=field, fields=errors)
    if meter_limits:
        _meter_limits_check(meter_limits)
    with transaction.atomic():
        # Locked, so that two saves naming different meters both keep what the other set.
        controls = SpendControls.objects.select_for_update().filter(customer=customer).first()
        if controls is None:
            controls = SpendControls(customer=customer)
        controls.soft_limit, controls.hard_limit, controls.block_overage = (
            soft_limit,
            hard_limit,
            block_overage,
        )
        if default_soft_limit_off is not None:
            controls.default_soft_limit_off = default_soft_limit_off
        if meter_limits:
            stops = dict(controls.meter_limits or {})
            for key, quantity in meter_limits.items():
                if quantity is None:
                    stops.pop(key, None)
                else:
                    stops[key] = f"{quantity.normalize():f}"
            controls.meter_limits = dict(sorted(stops.items()))
        controls.save()
    return controls


def _meter_limits_check(meter_limits: Mapping[str, Decimal | None]) -> None:
    """Stops name meters of the catalog and are quantities the usage columns can hold, above zero."""
    known = set(Meter.objects.filter(key__in=list(meter_limits)).values_list("key", flat=True))
    for key, quantity in meter_limits.items():
        if key not in known:
            raise UnknownMeter(f"No meter with key {key!r}.", param=f"meter_limits.{key}")
        if quantity is None:
            continue
        if not quantity.is_finite() or quantity <= 0:
            raise InvalidInput(
                f"The limit for {key} must be a quantity above zero (null removes it).",
                param=f"meter_limits.{key}",
            )
        if quantity > MAX_METER_LIMIT or quantity != quantity.quantize(QUANTITY_PLACES):
            raise OutOfRange(
                f"The limit for {key} must be at most {MAX_METER_LIMIT:f}, with at most "
                f"{QUANTITY['decimal_places']} decimal places.",
                param=f"meter_limits.{key}",
                max=f"{MAX_METER_LIMIT:f}",
            )


def customer_freeze(*, customer: Customer, reason: str, period_start: datetime) -> None:
    """Refuse the customer's further billable usage until an operator unfreezes them; announce the freeze
    when the customer was not frozen already."""
    customers = Customer.objects.filter(pk=customer.pk)
    newly_frozen = customers.exclude(status=CustomerStatus.FROZEN).update(
        status=CustomerStatus.FROZEN, frozen_reason=reason
    )
    if not newly_frozen:
        customers.update(frozen_reason=reason)
    customer.status, customer.frozen_reason = CustomerStatus.FROZEN, reason
    # Once per hour frozen in: a freeze, an unfreeze and a freeze again within it tell the customer once.
    Notification.objects.get_or_create(
        customer=customer,
        kind=NotificationKind.ACCOUNT_FROZEN,
        period_start=period_start,
        frozen_hour=timezone.now().replace(minute=0, second=0, microsecond=0),
        defaults={"message": f"Billable usage is paused: {reason}"},
    )
    if newly_frozen:
        customer_event_announce(
            event_type=CustomerEventType.FROZEN,
            customer=customer,
            data={"reason": reason, "frozen_at": instant(timezone.now())},
        )


def customer_unfreeze(*, customer: Customer) -> None:
    Customer.objects.filter(pk=customer.pk).update(status=CustomerStatus.ACTIVE, frozen_reason="")
    customer.status, customer.frozen_reason = CustomerStatus.ACTIVE, ""


def notification_mark_read(*, customer: Customer, notification_id: int) -> None:
    Notification.objects.filter(customer=customer, pk=notification_id, read_at__isnull=True).update(
        read_at=timezone.now()
    )


def member_create(
    *,
    customer: Customer,
    external_id: str,
    name: str = "",
    email: str = "",
    role: str = MemberRole.MEMBER,
    user=None,
) -> Member:
    return Member.objects.create(
        customer=customer, external_id=external_id, name=name, email=email, role=role, user=user
    )


def members_get_or_create(wanted: set[tuple[int, str]]) -> dict[tuple[int, str], int]:
    """Member ids by (customer id, external id), creating the members seen for the first time."""
    if not wanted:
        return {}

    def read() -> dict[tuple[int, str], int]:
        found = Member.objects.filter(
            customer_id__in={customer_id for customer_id, _ in wanted},
            external_id__in={external_id for _, external_id in wanted},
        ).values_list("customer_id", "external_id", "id")
        return {(customer_id, external_id): pk for customer_id, external_id, pk in found}

    members = read()
    missing = wanted - set(members)
    if missing:
        Member.objects.bulk_create(
            [
                Member(customer_id=customer_id, external_id=external_id)
                for customer_id, external_id in sorted(missing)
            ],
            ignore_conflicts=True,
        )
        members = read()
    return members
