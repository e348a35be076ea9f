"""Customers, members and subscriptions for tests. A subscription's period is the one containing now
(`customers.periods.period_bounds`), so it follows time-machine."""

from datetime import datetime

import factory
from django.contrib.auth import get_user_model
from django.utils import timezone
from factory.django import DjangoModelFactory

from customers.models import (
    Customer,
    CustomerStatus,
    Member,
    MemberRole,
    SpendControls,
    Subscription,
    SubscriptionStatus,
)
from customers.periods import period_bounds
from plans.models import BillingInterval
from tests.plans.factories import PlanVersionFactory


class UserFactory(DjangoModelFactory):
    """A dashboard login; its password is "password"."""

    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda user: f"{user.username}@example.com")
    password = factory.django.Password("password")


class CustomerFactory(DjangoModelFactory):
    class Meta:
        model = Customer

    external_id = factory.Sequence(lambda n: f"cus_{n}")
    name = factory.Sequence(lambda n: f"Customer {n}")
    email = factory.LazyAttribute(lambda customer: f"billing@{customer.external_id}.example.com")
    currency = "usd"
    status = CustomerStatus.ACTIVE


class MemberFactory(DjangoModelFactory):
    """A member without a login; `MemberFactory(user=UserFactory())` for one who can sign in."""

    class Meta:
        model = Member

    customer = factory.SubFactory(CustomerFactory)
    external_id = factory.Sequence(lambda n: f"member_{n}")
    name = factory.Sequence(lambda n: f"Member {n}")
    email = factory.LazyAttribute(lambda member: f"{member.external_id}@example.com")
    role = MemberRole.MEMBER
    user = None


def _period(subscription: Subscription) -> tuple[datetime, datetime]:
    return period_bounds(
        anchor=subscription.billing_anchor,
        interval=BillingInterval(subscription.plan_version.interval),
        moment=timezone.now(),
    )


class SubscriptionFactory(DjangoModelFactory):
    """An active subscription anchored now (or at `billing_anchor`), in its current period."""

    class Meta:
        model = Subscription

    customer = factory.SubFactory(CustomerFactory)
    plan_version = factory.SubFactory(PlanVersionFactory)
    status = SubscriptionStatus.ACTIVE
    billing_anchor = factory.LazyFunction(timezone.now)
    current_period_start = factory.LazyAttribute(lambda subscription: _period(subscription)[0])
    current_period_end = factory.LazyAttribute(lambda subscription: _period(subscription)[1])


class SpendControlsFactory(DjangoModelFactory):
    """No limits and overage allowed, as a new customer starts."""

    class Meta:
        model = SpendControls
        django_get_or_create = ("customer",)

    customer = factory.SubFactory(CustomerFactory)
    soft_limit = None
    hard_limit = None
    block_overage = False
