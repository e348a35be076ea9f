"""The one way to lock a customer for a write that moves usage or money."""

import uuid
from dataclasses import dataclass
from datetime import datetime

from core.sql_rows import selects_run
from customers.models import Customer, Subscription
from usage.models import CustomerBalance, Reservation
from usage.sql_reads import (
    BALANCE,
    RESERVATION,
    ConsumptionRows,
    Statement,
    consumption_rows_build,
    consumption_statements,
    reservation_pk,
)


def customer_balance_for_update(customer: Customer) -> CustomerBalance:
    """Lock and return the customer's balance row, creating it on first use.

    Every ingest, reservation, commit, release, grant and top-up takes this lock first, so writes
    for one customer run one after another (no two can both see the same credits as available),
    while different customers proceed in parallel. Callers that lock several customers do so in
    primary-key order to avoid deadlocks. Outside a transaction Django refuses select_for_update.
    """
    balance = CustomerBalance.objects.select_for_update().filter(customer=customer).first()
    if balance is not None:
        return balance
    # First use: insert without a race (a concurrent creator makes this a no-op), then both lock.
    CustomerBalance.objects.bulk_create(
        [CustomerBalance(customer=customer, currency=customer.currency)], ignore_conflicts=True
    )
    return CustomerBalance.objects.select_for_update().get(customer=customer)


def customer_balances_for_update(customers: list[Customer]) -> dict[int, CustomerBalance]:
    """Lock several customers' balance rows, by customer id, in one statement in primary-key order.

    A batch of events for many customers takes all its locks here before it reads anything. Rows
    seen for the first time are created in primary-key order too, then locked.
    """
    ids = sorted(customer.pk for customer in customers)
    locked = CustomerBalance.objects.select_for_update().filter(customer_id__in=ids).order_by("customer_id")
    balances = {balance.customer_id: balance for balance in locked}
    missing = sorted((c for c in customers if c.pk not in balances), key=lambda c: c.pk)
    if missing:
        CustomerBalance.objects.bulk_create(
            [CustomerBalance(customer=c, currency=c.currency) for c in missing], ignore_conflicts=True
        )
        created = (
            CustomerBalance.objects.select_for_update().filter(customer__in=missing).order_by("customer_id")
        )
        balances.update({balance.customer_id: balance for balance in created})
    return balances


@dataclass
class LockedCustomer:
    """A customer's balance row, locked, and what was read after the lock in the same round trip."""

    balance: CustomerBalance
    rows: ConsumptionRows  # empty when no subscription was given
    reservation: Reservation | None  # the reservation asked for, as last committed


def customer_consumption_for_update(
    *,
    customer: Customer,
    subscription: Subscription | None,
    now: datetime,
    reservation_key: str | None = None,
    reservation_id: uuid.UUID | None = None,
    grants_at: datetime | None = None,
) -> LockedCustomer:
    """Lock the customer's balance row and read what the consumption engine needs after it, in one trip.

    The lock is held until the transaction ends, and every read after it sees what the previous
    holder committed, so the time the lock is held is this trip, the deciding and the writes.
    Reserve passes ``reservation_key`` to find a replay; commit and release pass ``reservation_id``
    to read its status again under the lock, which also leaves its own hold out of the holds. The grants
    read are those usable at ``grants_at`` (default ``now``).
    """
    lock: Statement = (
        f"SELECT {BALANCE.sql} FROM {CustomerBalance._meta.db_table} b "  # noqa: S608
        "WHERE b.customer_id = %s FOR UPDATE",
        [customer.pk],
    )
    reservations = f"SELECT {RESERVATION.sql} FROM {Reservation._meta.db_table} r "  # noqa: S608
    reservation: Statement = (
        (reservations + "WHERE r.id = %s", [reservation_pk(reservation_id)])
        if reservation_id is not None
        else (
            reservations + "WHERE r.customer_id = %s AND r.idempotency_key = %s",
            [customer.pk, reservation_key],
        )
    )
    statements: list[Statement] = [lock, reservation]
    if subscription is not None:
        statements += consumption_statements(
            customer_ids=[customer.pk],
            period_starts=[subscription.current_period_start],
            now=now,
            exclude_reservation_id=reservation_id,
            grants_at=grants_at,
        )
    results = selects_run(statements)
    if not results[0]:
        # The customer's first write: create the row without a race, then lock and read again.
        CustomerBalance.objects.bulk_create(
            [CustomerBalance(customer=customer, currency=customer.currency)], ignore_conflicts=True
        )
        results = selects_run(statements)
    rows = (
        consumption_rows_build(results[2:], current_start={customer.pk: subscription.current_period_start})[
            customer.pk
        ]
        if subscription is not None
        else ConsumptionRows()
    )
    return LockedCustomer(
        balance=BALANCE.build(results[0][0]),
        rows=rows,
        reservation=RESERVATION.build(results[1][0]) if results[1] else None,
    )
