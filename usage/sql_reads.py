"""The metering API's reads as SQL written or compiled once: the hot paths of /check, reserve, commit and ingest.

Every request reads a customer with their plan and limits, a meter or a reservation, then, under the
customer's lock, what the consumption engine decides with: usable grants, active holds and current period
totals. Through the ORM that was 5-8 compiled queries a request, more time than the database spent
answering them; here each read is one statement made once per process (``core.sql_rows``), and the lock
with the reads that follow it is one round trip (``usage.locks.customer_consumption_for_update``).

Which grants are usable and in what order, and which holds count, are the models' rules
(``CreditGrant.objects.usable``, ``Reservation.objects.active``): their statements are compiled from them.
"""

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any, cast

from django.db import connection
from django.db.models import BooleanField, DateTimeField, Field, Sum, UUIDField, Value
from django.db.models.expressions import RawSQL
from django.db.models.functions import Greatest

from core.errors import NotFound
from core.sql_rows import (
    Columns,
    CompiledSelect,
    ModelColumns,
    Slot,
    Statement,
    placeholders,
    related_cache,
    row_slices,
    select_compile,
    selects_run,
)
from customers.models import Customer, Member, SpendControls, Subscription
from plans.models import Meter, PlanVersion
from usage.models import GRANT_DRAW_ORDER, CreditGrant, CustomerBalance, PeriodUsage, Reservation

ZERO = Decimal(0)

CUSTOMER = ModelColumns(Customer, "c")
SUBSCRIPTION = ModelColumns(Subscription, "s")
PLAN_VERSION = ModelColumns(PlanVersion, "v")
BALANCE = ModelColumns(CustomerBalance, "b")
SPEND_CONTROLS = ModelColumns(SpendControls, "sc")
METER = ModelColumns(Meter, "m")
MEMBER = ModelColumns(Member, "mb")
RESERVATION = ModelColumns(Reservation, "r")
GRANT = ModelColumns(CreditGrant, "g")  # its statement is compiled from the ORM, in the same columns
PERIOD_USAGE = ModelColumns(PeriodUsage, "p")


def reservation_pk(value: uuid.UUID | str) -> Any:
    """A reservation id as the driver takes it."""
    pk = Reservation._meta.pk
    return pk.get_db_prep_value(pk.to_python(value), connection)


def _reservation_field(name: str) -> Field:
    return cast(Field, Reservation._meta.get_field(name))


# The columns of the active holds' sums (``_active_holds_select``), each typed by the field it sums.
HOLD_SUMS = Columns(
    [
        (name, _reservation_field(field_name))
        for name, field_name in (
            ("customer_id", "customer"),
            ("meter_id", "meter"),
            ("unit", "unit"),
            ("quantity", "quantity"),
            ("included", "held_included"),
            ("cost", "held_cost"),
            ("credits", "held_credits"),
            ("wallet", "held_wallet"),
        )
    ]
)

# What joins a customer ``c`` to their plan, balance and limits.
_CUSTOMER_JOINS = (
    f"LEFT JOIN {Subscription._meta.db_table} s ON s.customer_id = c.id "
    f"LEFT JOIN {PlanVersion._meta.db_table} v ON v.id = s.plan_version_id "
    f"LEFT JOIN {CustomerBalance._meta.db_table} b ON b.customer_id = c.id "
    f"LEFT JOIN {SpendControls._meta.db_table} sc ON sc.customer_id = c.id"
)
_CUSTOMER_COLUMNS = (
    f"{CUSTOMER.sql}, {SUBSCRIPTION.sql}, {PLAN_VERSION.sql}, {BALANCE.sql}, {SPEND_CONTROLS.sql}"
)
_CUSTOMER_WIDTHS = (len(CUSTOMER), len(SUBSCRIPTION), len(PLAN_VERSION), len(BALANCE), len(SPEND_CONTROLS))


def _customer_joined(values: tuple[Any, ...]) -> Customer:
    """The customer with subscription, plan version, balance and limits cached as ``select_related`` would.

    A missing subscription, balance or limits row is cached as missing, so reading it raises
    ``DoesNotExist`` without another query, as it does after ``select_related``.
    """
    customer_values, subscription_values, version_values, balance_values, controls_values = row_slices(
        values, *_CUSTOMER_WIDTHS
    )
    customer = CUSTOMER.build(customer_values)
    subscription = SUBSCRIPTION.build_joined(subscription_values)
    if subscription is not None:
        related_cache(subscription, "plan_version", PLAN_VERSION.build(version_values))
        related_cache(subscription, "customer", customer)
    for name, related in (
        ("subscription", subscription),
        ("balance", BALANCE.build_joined(balance_values)),
        ("spend_controls", SPEND_CONTROLS.build_joined(controls_values)),
    ):
        related_cache(customer, name, related)
    return customer


_CUSTOMER_BY_EXTERNAL_ID = (
    f"SELECT {_CUSTOMER_COLUMNS} FROM {Customer._meta.db_table} c {_CUSTOMER_JOINS} "  # noqa: S608
    "WHERE c.external_id = %s"
)
_METER_BY_KEY = f"SELECT {METER.sql} FROM {Meter._meta.db_table} m WHERE m.key = %s"  # noqa: S608


def _customer_found(rows: list[tuple[Any, ...]], external_id: str) -> Customer:
    if not rows:
        raise NotFound(f"No customer with external id {external_id!r}.", param="customer")
    return _customer_joined(rows[0])


def _meter_found(rows: list[tuple[Any, ...]], key: str) -> Meter:
    if not rows:
        raise NotFound(f"No meter with key {key!r}.", param="meter")
    return METER.build(rows[0])


def customer_for_decision(external_id: str) -> Customer:
    """The customer with subscription, plan version, balance and limits joined in: one statement."""
    [rows] = selects_run([(_CUSTOMER_BY_EXTERNAL_ID, [external_id])])
    return _customer_found(rows, external_id)


def meter_by_key(key: str) -> Meter:
    [rows] = selects_run([(_METER_BY_KEY, [key])])
    return _meter_found(rows, key)


def customer_and_meter(external_id: str, meter_key: str) -> tuple[Customer, Meter]:
    """``customer_for_decision`` and ``meter_by_key`` in one round trip: what /check and reserve ask first.

    An unknown customer is reported before an unknown meter, as when they were read one after the other.
    """
    customer_rows, meter_rows = selects_run(
        [(_CUSTOMER_BY_EXTERNAL_ID, [external_id]), (_METER_BY_KEY, [meter_key])]
    )
    return _customer_found(customer_rows, external_id), _meter_found(meter_rows, meter_key)


def reservation_for_settling(reservation_id: uuid.UUID | str) -> Reservation:
    """A reservation with its meter, member and customer (with plan and limits), in one round trip.

    Read before the customer's lock is taken; the status is read again under it. Two statements,
    not one join of eight tables: planning that join took PostgreSQL longer than both statements.
    """
    reservation_sql = (
        f"SELECT {RESERVATION.sql}, {METER.sql}, {MEMBER.sql} "  # noqa: S608
        f"FROM {Reservation._meta.db_table} r "
        f"JOIN {Meter._meta.db_table} m ON m.id = r.meter_id "
        f"LEFT JOIN {Member._meta.db_table} mb ON mb.id = r.member_id "
        "WHERE r.id = %s"
    )
    customer_sql = (
        f"SELECT {_CUSTOMER_COLUMNS} FROM {Customer._meta.db_table} c {_CUSTOMER_JOINS} "  # noqa: S608
        f"WHERE c.id = (SELECT customer_id FROM {Reservation._meta.db_table} WHERE id = %s)"
    )
    reservation_rows, customer_rows = selects_run(
        [
            (reservation_sql, [reservation_pk(reservation_id)]),
            (customer_sql, [reservation_pk(reservation_id)]),
        ]
    )
    if not reservation_rows:
        raise NotFound(f"No reservation {reservation_id}.")
    reservation_values, meter_values, member_values = row_slices(
        reservation_rows[0], len(RESERVATION), len(METER), len(MEMBER)
    )
    reservation = RESERVATION.build(reservation_values)
    for name, related in (
        ("meter", METER.build(meter_values)),
        ("member", MEMBER.build_joined(member_values)),
        ("customer", _customer_joined(customer_rows[0])),
    ):
        related_cache(reservation, name, related)
    return reservation


# --- what the consumption engine decides with: grants, holds and period totals ------------------------


@dataclass(frozen=True)
class HoldRow:
    """What a customer's active holds of one meter and unit hold together; amounts in ``unit``."""

    meter_id: int
    unit: str
    quantity: Decimal
    included: Decimal  # of ``quantity``, the allowance pinned
    cost: Decimal
    credits: Decimal
    wallet: Decimal


@dataclass
class ConsumptionRows:
    """What the consumption engine reads of one customer under their lock, besides the balance row."""

    grants: list[CreditGrant] = field(default_factory=list)  # usable now (or at a hold's time), in draw order
    holds: list[HoldRow] = field(default_factory=list)  # active holds summed per meter and unit
    period_rows: list[PeriodUsage] = field(default_factory=list)  # the current period's totals


def _of_customers(model: Any) -> RawSQL:
    return RawSQL(  # noqa: S611  (a constant table name; the ids are a parameter)
        f'"{model._meta.db_table}"."customer_id" = ANY(%s)',
        (Slot("customer_ids"),),
        output_field=BooleanField(),
    )


_NOW = Slot("now", DateTimeField())


@lru_cache(maxsize=1)
def _usable_grants_select() -> CompiledSelect:
    return select_compile(
        CreditGrant.objects.usable(_NOW)
        .filter(_of_customers(CreditGrant))
        .order_by("customer_id", *GRANT_DRAW_ORDER)
    )


@lru_cache(maxsize=2)
def _active_holds_select(*, excluding_one: bool) -> CompiledSelect:
    holds = Reservation.objects.active(_NOW).filter(_of_customers(Reservation))
    if excluding_one:
        holds = holds.exclude(pk=Slot("excluded", UUIDField()))
    return select_compile(
        holds.values("customer_id", "meter_id", "unit")
        .annotate(
            quantity=Sum("quantity"),
            included=Sum("held_included"),
            # A hold that volume pricing made negative (a cheaper tier reached) frees nothing for others:
            # it may never be committed, so it counts as zero, never as headroom.
            cost=Sum(Greatest("held_cost", Value(ZERO))),
            credits=Sum(Greatest("held_credits", Value(ZERO))),
            wallet=Sum(Greatest("held_wallet", Value(ZERO))),
        )
        .order_by()
    )


def consumption_statements(
    *,
    customer_ids: list[int],
    period_starts: list[datetime],
    now: datetime,
    exclude_reservation_id: Any = None,
    grants_at: datetime | None = None,
) -> list[Statement]:
    """The three reads of ``consumption_rows_read``, to be run after the customers' locks.

    The grants are those usable at ``grants_at`` (default ``now``): a commit of a hold that pinned credits
    draws from the grants in force when the hold was taken.
    """
    grants = _usable_grants_select()
    holds = _active_holds_select(excluding_one=exclude_reservation_id is not None)
    values = {"customer_ids": customer_ids, "now": now}
    if exclude_reservation_id is not None:
        values["excluded"] = reservation_pk(exclude_reservation_id)
    period_rows = (
        f"SELECT {PERIOD_USAGE.sql} FROM {PeriodUsage._meta.db_table} p "  # noqa: S608
        f"WHERE p.customer_id IN ({placeholders(len(customer_ids))}) "
        f"AND p.period_start IN ({placeholders(len(period_starts))})"
    )
    return [
        (grants.sql, grants.bind({**values, "now": grants_at or now})),
        (holds.sql, holds.bind(values)),
        (period_rows, [*customer_ids, *period_starts]),
    ]


def consumption_rows_build(
    results: list[list[tuple[Any, ...]]], *, current_start: dict[int, datetime]
) -> dict[int, ConsumptionRows]:
    """Each customer's ``ConsumptionRows`` from the results of ``consumption_statements``."""
    grant_rows, hold_rows, period_rows = results
    loaded = {customer_id: ConsumptionRows() for customer_id in current_start}
    for values in grant_rows:
        grant = GRANT.build(values)
        loaded[grant.customer_id].grants.append(grant)
    for values in hold_rows:
        customer_id, *sums = HOLD_SUMS.convert(values)
        loaded[customer_id].holds.append(HoldRow(*sums))
    for values in period_rows:
        row = PERIOD_USAGE.build(values)
        if row.period_start == current_start[row.customer_id]:
            loaded[row.customer_id].period_rows.append(row)
    return loaded


def consumption_rows_read(
    *, subscriptions: list[Subscription], now: datetime, exclude_reservation_id: Any = None
) -> dict[int, ConsumptionRows]:
    """The grants, holds and current period totals of any number of customers, in one round trip.

    A batch of events for many customers reads them all at once, after taking all their locks.
    """
    if not subscriptions:
        return {}
    current_start = {s.customer_id: s.current_period_start for s in subscriptions}
    statements = consumption_statements(
        customer_ids=list(current_start),
        period_starts=sorted(set(current_start.values())),
        now=now,
        exclude_reservation_id=exclude_reservation_id,
    )
    return consumption_rows_build(selects_run(statements), current_start=current_start)


def active_holds_read(*, customer: Customer, now: datetime) -> list[HoldRow]:
    """The customer's active holds summed per meter and unit, outside any lock (for the usage pages)."""
    holds = _active_holds_select(excluding_one=False)
    [rows] = selects_run([(holds.sql, holds.bind({"customer_ids": [customer.pk], "now": now}))])
    return [HoldRow(*HOLD_SUMS.convert(values)[1:]) for values in rows]
