"""The one way to lock a customer for a write that moves usage or money."""

from customers.models import Customer
from usage.models import CustomerBalance


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


def existing_customer_balance_for_update(customer_id: int) -> CustomerBalance:
    """Lock the balance row of a customer known to have one, such as the customer of a reservation."""
    return CustomerBalance.objects.select_for_update().get(customer_id=customer_id)


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
