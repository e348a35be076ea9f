"""The money in admin: every ledger table readable, linked, with amounts in their unit, and read-only; holds
released through the API's own service."""

from decimal import Decimal

import pytest
from django.urls import reverse

from plans.models import Meter
from tests.catalog_fixtures import event
from usage.ingest import usage_events_ingest
from usage.models import (
    CreditGrant,
    CreditLedgerEntry,
    CustomerBalance,
    Reservation,
    ReservationStatus,
    StripeUsageOutbox,
    UsageEvent,
)
from usage.services import credit_grant_create, reservation_create, wallet_top_up

pytestmark = pytest.mark.django_db
MODELS = [
    "customerbalance",
    "creditgrant",
    "creditledgerentry",
    "usageevent",
    "reservation",
    "stripeusageoutbox",
]


@pytest.fixture
def money(pro_plan, make_customer):
    """Acme on Pro: a $1 wallet, a $1.50 promotion, 130 calls: 30 past the allowance cost $3.00, of which
    $0.50 is overage for Stripe; and a hold of 5 calls."""
    customer = make_customer("pro")
    wallet_top_up(customer=customer, amount=Decimal("1.00"), note="Prepaid top-up")
    credit_grant_create(customer=customer, amount=Decimal("1.50"), unit="usd", description="Launch promotion")
    usage_events_ingest(raw_events=[event(f"c{n}") for n in range(130)])
    reservation_create(
        customer=customer,
        meter=Meter.objects.get(key="api_call"),
        quantity=Decimal(5),
        idempotency_key="hold-1",
    )
    return customer


@pytest.mark.parametrize("model", MODELS)
def test_every_ledger_table_lists_and_shows_its_rows(admin_client, money, model):
    listing = admin_client.get(reverse(f"admin:usage_{model}_changelist"))
    assert listing.status_code == 200
    assert "acme" in listing.content.decode()

    rows = {
        "customerbalance": CustomerBalance,
        "creditgrant": CreditGrant,
        "creditledgerentry": CreditLedgerEntry,
        "usageevent": UsageEvent,
        "reservation": Reservation,
        "stripeusageoutbox": StripeUsageOutbox,
    }[model].objects.all()
    assert admin_client.get(reverse(f"admin:usage_{model}_change", args=[rows.first().pk])).status_code == 200


def test_amounts_read_with_their_unit(admin_client, money):
    wallets = admin_client.get(reverse("admin:usage_customerbalance_changelist")).content.decode()
    ledger = admin_client.get(reverse("admin:usage_creditledgerentry_changelist")).content.decode()

    assert "$" in wallets and "0.000000000000" not in wallets
    assert "+$1.00" in ledger and "Prepaid top-up" in ledger
    assert "Launch promotion" in ledger  # the grant a row drew from, linked


@pytest.mark.parametrize("model", MODELS)
def test_nobody_adds_edits_or_deletes_ledger_rows_by_hand(admin_client, money, model):
    assert admin_client.get(reverse(f"admin:usage_{model}_add")).status_code == 403


def test_releasing_a_hold_goes_through_the_service(admin_client, money):
    hold = Reservation.objects.get(idempotency_key="hold-1")

    response = admin_client.post(
        reverse("admin:usage_reservation_changelist"),
        {"action": "release", "_selected_action": [str(hold.pk)]},
        follow=True,
    )

    assert response.status_code == 200
    hold.refresh_from_db()
    assert hold.status == ReservationStatus.RELEASED


def test_the_customer_page_names_its_parts(admin_client, money):
    page = admin_client.get(reverse("admin:customers_customer_change", args=[money.pk])).content.decode()

    assert "Plan and billing period" in page
    assert "SpendControls object" not in page
