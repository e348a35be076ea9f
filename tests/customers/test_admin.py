"""The customers admin, driven as a superuser."""

from decimal import Decimal

import pytest
from django.urls import reverse

from customers.models import Customer, CustomerStatus, Notification, NotificationKind
from tests.customers.factories import (
    CustomerFactory,
    MemberFactory,
    SpendControlsFactory,
    SubscriptionFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db


def url(name, *args):
    return reverse(f"admin:customers_{name}", args=args)


@pytest.fixture
def customer():
    subscription = SubscriptionFactory(customer__name="Acme Robotics", customer__email="ap@acme.test")
    SpendControlsFactory(customer=subscription.customer)
    MemberFactory(customer=subscription.customer, user=UserFactory(), email="ada@acme.test")
    Notification.objects.create(
        customer=subscription.customer,
        kind=NotificationKind.SOFT_LIMIT_CROSSED,
        period_start=subscription.current_period_start,
        limit=Decimal("100"),
        message="You have spent $100 this period.",
    )
    return subscription.customer


@pytest.mark.parametrize("model", ["customer", "member", "notification"])
def test_every_changelist_renders(admin_client, customer, model):
    assert admin_client.get(url(f"{model}_changelist")).status_code == 200


def test_every_change_page_renders(admin_client, customer):
    for model, obj in [
        ("customer", customer),
        ("member", customer.members.get()),
        ("notification", customer.notifications.get()),
    ]:
        assert admin_client.get(url(f"{model}_change", obj.pk)).status_code == 200, model
    assert admin_client.get(url("customer_add")).status_code == 200
    assert admin_client.get(url("member_add")).status_code == 200


def test_the_customer_page_shows_members_subscription_and_spend_controls(admin_client, customer):
    response = admin_client.get(url("customer_change", customer.pk))
    assert 'name="members-0-external_id"' in response.text
    assert 'name="subscription-0-plan_version"' in response.text
    assert 'name="spend_controls-0-hard_limit"' in response.text


def test_customers_are_searched_by_name_external_id_and_email(admin_client, customer):
    CustomerFactory(name="Globex")
    for term in ("acme", customer.external_id, "ap@acme.test"):
        result = admin_client.get(url("customer_changelist"), {"q": term}).context["cl"].result_list
        assert list(result) == [customer], term


def test_customers_are_filtered_by_status(admin_client, customer):
    frozen = CustomerFactory(status=CustomerStatus.FROZEN)
    response = admin_client.get(url("customer_changelist"), {"status__exact": "frozen"})
    assert list(response.context["cl"].result_list) == [frozen]


def test_members_are_searched_by_email(admin_client, customer):
    MemberFactory()
    result = admin_client.get(url("member_changelist"), {"q": "ada@acme"}).context["cl"].result_list
    assert list(result) == [customer.members.get()]


def test_the_unfreeze_action_reactivates_frozen_customers(admin_client, customer):
    Customer.objects.filter(pk=customer.pk).update(status=CustomerStatus.FROZEN, frozen_reason="Hard limit")
    active = CustomerFactory()

    response = admin_client.post(
        url("customer_changelist"),
        {"action": "unfreeze", "_selected_action": [customer.pk, active.pk]},
        follow=True,
    )

    customer.refresh_from_db()
    assert (customer.status, customer.frozen_reason) == (CustomerStatus.ACTIVE, "")
    assert "Unfroze 1 customer(s) (1 were not frozen)." in response.text


def test_notifications_are_read_only(admin_client, customer):
    response = admin_client.get(url("notification_change", customer.notifications.get().pk))
    assert 'name="_save"' not in response.text
    assert admin_client.get(url("notification_add")).status_code == 403
