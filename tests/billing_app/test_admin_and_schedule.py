"""What staff see in the admin, and the beat schedule."""

import importlib

from celery.schedules import crontab

from billing_app.schedule import CELERY_BEAT_SCHEDULE
from billing_app.stripe.outbox import outbox_drain
from tests.billing_app.conftest import calls, ingest

NOT_CONNECTED = "Stripe not connected"


def test_the_admin_says_when_stripe_is_not_connected(admin_client, settings):
    settings.STRIPE_API_KEY = ""

    page = admin_client.get("/admin/").content.decode()

    assert NOT_CONNECTED in page
    assert "STRIPE_API_KEY" in page


def test_the_admin_is_quiet_when_stripe_is_connected(admin_client, stripe_on):
    assert NOT_CONNECTED not in admin_client.get("/admin/").content.decode()


def test_the_admin_lists_alerts_invoices_webhooks_and_meter_events(admin_client, synced_customer, stripe_on):
    ingest(*calls("a", 130))
    outbox_drain()

    for path in ("operatoralert", "stripeinvoice", "stripewebhookevent", "reconciliationdivergence"):
        assert admin_client.get(f"/admin/billing_app/{path}/").status_code == 200
    page = admin_client.get("/admin/billing_app/stripemeterevent/").content.decode()
    assert "api_call" in page and "Sent" in page


def test_the_meter_event_admin_shows_the_backlog(admin_client, settings, pro_plan, make_customer):
    settings.STRIPE_API_KEY = ""
    make_customer("pro")
    ingest(*calls("a", 130))

    page = admin_client.get("/admin/billing_app/stripemeterevent/").content.decode()

    assert "1 outbox row(s)" in page
    assert NOT_CONNECTED in page


def test_the_beat_schedule_runs_every_job_on_its_interval():
    tasks = {entry["task"]: entry["schedule"] for entry in CELERY_BEAT_SCHEDULE.values()}

    assert tasks["billing_app.tasks.stripe_outbox_drain_task"] == 60
    assert tasks["billing_app.tasks.spend_alerts_task"] == 60
    assert tasks["billing_app.tasks.circuit_breaker_task"] == 300
    assert tasks["billing_app.tasks.stripe_reconcile_task"] == crontab(minute=17)
    for housekeeping in (
        "usage.tasks.reservations_expire_task",
        "usage.tasks.credit_grants_expire_task",
        "customers.tasks.subscriptions_roll_periods_task",
    ):
        assert housekeeping in tasks
    for name in tasks:
        module, function = name.rsplit(".", 1)
        assert getattr(importlib.import_module(module), function).name == name
