"""Staff grant credits and top up wallets in admin, through the API's services; a second click does nothing."""

from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model

from usage.ledger_audit import ledger_mismatches
from usage.models import CreditGrant, CreditLedgerEntry, CustomerBalance

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client):
    client.force_login(get_user_model().objects.create_superuser("ops", "ops@example.com", "ops"))
    return client


def test_staff_grant_credits_once_per_form(staff, pro_plan, make_customer):
    customer = make_customer("pro")
    url = f"/admin/usage/customerbalance/{customer.pk}/grant-credits/"
    assert staff.get(url).status_code == 200
    form = {
        "amount": "25",
        "unit": "",
        "expires_at": "",
        "description": "Outage credit",
        "idempotency_key": "k1",
    }

    first = staff.post(url, form)
    again = staff.post(url, form)

    assert first.status_code == again.status_code == 302
    grant = CreditGrant.objects.get(customer=customer)
    assert (grant.amount, grant.unit) == (Decimal(25), "usd")
    assert grant.description == "Outage credit (by staff ops)"
    assert not ledger_mismatches()


def test_staff_top_up_once_per_form_and_bad_amounts_are_refused(staff, pro_plan, make_customer):
    customer = make_customer("pro")
    url = f"/admin/usage/customerbalance/{customer.pk}/top-up/"
    form = {"amount": "10.00", "note": "Paid by wire", "idempotency_key": "k2"}

    staff.post(url, form)
    staff.post(url, form)
    refused = staff.post(url, {**form, "amount": "-5", "idempotency_key": "k3"})

    assert refused.status_code == 200 and b"errorlist" in refused.content
    assert CustomerBalance.objects.get(customer=customer).wallet_balance == 10
    assert CreditLedgerEntry.objects.get(customer=customer).note == "Paid by wire (by staff ops)"
    assert not ledger_mismatches()


def test_staff_without_the_permission_are_refused(client, pro_plan, make_customer):
    customer = make_customer("pro")
    user = get_user_model().objects.create_user("viewer", password="x", is_staff=True)
    client.force_login(user)

    response = client.post(f"/admin/usage/customerbalance/{customer.pk}/top-up/", {"amount": "5"})

    assert response.status_code == 403
    assert not CreditLedgerEntry.objects.exists()
