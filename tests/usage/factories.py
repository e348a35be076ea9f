"""Usage-ledger rows for read tests: period totals, daily rollups, grants, ledger rows, notifications.

These write the tables the pages read directly, to set up exact numbers; tests of the numbers
against the API build their data through the services instead.
"""

from decimal import Decimal

import factory
from django.utils import timezone
from factory.django import DjangoModelFactory

from customers.models import Notification, NotificationKind
from tests.customers.factories import CustomerFactory
from tests.plans.factories import MeterFactory
from usage.models import (
    CreditGrant,
    CreditLedgerEntry,
    CustomerBalance,
    DailyUsageRollup,
    GrantKind,
    LedgerEntryKind,
    PeriodUsage,
)


class PeriodUsageFactory(DjangoModelFactory):
    class Meta:
        model = PeriodUsage

    customer = factory.SubFactory(CustomerFactory)
    meter = factory.SubFactory(MeterFactory)
    period_start = factory.LazyAttribute(lambda row: row.customer.subscription.current_period_start)
    period_end = factory.LazyAttribute(lambda row: row.customer.subscription.current_period_end)
    unit = "usd"
    quantity = Decimal(0)


class DailyUsageRollupFactory(DjangoModelFactory):
    """One day of one meter; ``quantity`` counts every unit, ``billable_quantity`` those past the allowance."""

    class Meta:
        model = DailyUsageRollup

    customer = factory.SubFactory(CustomerFactory)
    meter = factory.SubFactory(MeterFactory)
    member = None
    action = ""
    dimension_value = ""
    day = factory.LazyFunction(lambda: timezone.now().date())
    period_start = factory.LazyAttribute(lambda row: row.customer.subscription.current_period_start)
    quantity = Decimal(0)
    billable_quantity = Decimal(0)
    event_count = 1
    cost = Decimal(0)


class CreditGrantFactory(DjangoModelFactory):
    class Meta:
        model = CreditGrant

    customer = factory.SubFactory(CustomerFactory)
    kind = GrantKind.PURCHASED
    unit = "credits"
    amount = Decimal(1000)
    remaining = factory.LazyAttribute(lambda grant: grant.amount)
    effective_at = factory.LazyFunction(timezone.now)
    expires_at = None


class CreditLedgerEntryFactory(DjangoModelFactory):
    class Meta:
        model = CreditLedgerEntry

    customer = factory.SubFactory(CustomerFactory)
    kind = LedgerEntryKind.TOPUP
    amount = Decimal(10)
    unit = "usd"


class CustomerBalanceFactory(DjangoModelFactory):
    class Meta:
        model = CustomerBalance
        django_get_or_create = ("customer",)

    customer = factory.SubFactory(CustomerFactory)
    currency = "usd"
    wallet_balance = Decimal(0)


class NotificationFactory(DjangoModelFactory):
    class Meta:
        model = Notification

    customer = factory.SubFactory(CustomerFactory)
    kind = NotificationKind.SOFT_LIMIT_CROSSED
    period_start = factory.LazyAttribute(lambda n: n.customer.subscription.current_period_start)
    limit = factory.Sequence(lambda n: Decimal(100 + n))
    message = "Usage charges reached 100.00 USD this period (soft limit 100.00 USD)."
