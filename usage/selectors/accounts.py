"""A customer's account as the API shows it: subscription, limits, wallet and credits left."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from customers.models import Customer, SpendControls, Subscription
from usage.default_soft_limit import default_soft_limits_refresh
from usage.models import CustomerBalance
from usage.selectors.units import ZERO
from usage.selectors.wallet import credits_remaining_by_customer


@dataclass(frozen=True)
class CustomerAccount:
    external_id: str
    name: str
    email: str
    currency: str
    status: str
    subscription: Subscription | None
    limits: SpendControls | None
    wallet_balance: Decimal  # money, in ``currency``
    credits_remaining: dict[str, Decimal]  # usable grants' remaining amount, per unit


def customer_accounts(*, customers: Sequence[Customer], now: datetime | None = None) -> list[CustomerAccount]:
    """The accounts of ``customers``, in their order, in four queries however many there are (two more
    once a period, to bring their default soft limits up to date)."""
    ids = [customer.pk for customer in customers]
    subscriptions = {
        row.customer_id: row
        for row in Subscription.objects.filter(customer_id__in=ids).select_related("plan_version__plan")
    }
    limits = {row.customer_id: row for row in SpendControls.objects.filter(customer_id__in=ids)}
    default_soft_limits_refresh(
        controls_and_subscriptions=[
            (controls, subscriptions.get(customer_id)) for customer_id, controls in limits.items()
        ]
    )
    wallets = dict(
        CustomerBalance.objects.filter(customer_id__in=ids).values_list("customer_id", "wallet_balance")
    )
    credits = credits_remaining_by_customer(customer_ids=ids, now=now)
    return [
        CustomerAccount(
            external_id=customer.external_id,
            name=customer.name,
            email=customer.email,
            currency=customer.currency,
            status=customer.status,
            subscription=subscriptions.get(customer.pk),
            limits=limits.get(customer.pk),
            wallet_balance=wallets.get(customer.pk, ZERO),
            credits_remaining=credits.get(customer.pk, {}),
        )
        for customer in customers
    ]


def customer_account(*, customer: Customer) -> CustomerAccount:
    [account] = customer_accounts(customers=[customer])
    return account
