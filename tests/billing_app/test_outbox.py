"""The outbox drain: only overage money reaches Stripe, in whole cents, with deterministic identifiers,
through outages and crashes."""

import threading
from datetime import timedelta
from decimal import Decimal

import pytest
import stripe
import time_machine
from django.db import connection
from django.utils import timezone

from billing_app.models import MeterEventStatus, OperatorAlert, OperatorAlertKind, StripeMeterEvent
from billing_app.stripe import outbox
from billing_app.stripe.carries import usage_carries_finalize
from billing_app.stripe.outbox import meter_event_timestamp, outbox_drain
from billing_app.stripe.sync.pending import stripe_sync_pending
from billing_app.tasks import stripe_outbox_drain_task
from customers.models import Subscription
from plans.models import Meter
from tests.billing_app.conftest import calls, ingest
from tests.catalog_fixtures import event
from usage.models import OutboxStatus, StripeUsageOutbox
from usage.services import credit_grant_create, wallet_top_up

METER_EVENTS = "/v1/billing/meter_events"


def stripe_total(fake, customer, key="api_call"):
    return fake.meter_total(Meter.objects.get(key=key).stripe_meter_id, customer.stripe_customer_id, 0, 2**31)


def accepted_identifiers(fake):
    return [record.identifier for record in fake.meter_events()]


def ledger_cents(customer):
    """The overage money we rated, in cents: what Stripe's meters must add up to."""
    return sum(row.amount for row in StripeUsageOutbox.objects.filter(customer=customer)) * 100


def test_only_post_paid_overage_reaches_stripe(synced_customer, stripe_on, mid_hour):
    # 100 calls are included; $2 of credits and $1 of wallet pay for 30 more; 20 are overage: $2.00.
    credit_grant_create(customer=synced_customer, amount=Decimal("2.00"), unit="usd")
    wallet_top_up(customer=synced_customer, amount=Decimal("1.00"))
    ingest(*calls("a", 150))

    outbox_drain()

    assert stripe_total(stripe_on, synced_customer) == 200
    [meter_event] = stripe_on.meter_events()
    assert meter_event.payload == {"stripe_customer_id": synced_customer.stripe_customer_id, "value": "200"}
    assert not StripeUsageOutbox.objects.exclude(status=OutboxStatus.SENT).exists()


def test_rows_of_one_hour_become_one_event_with_an_identifier_from_their_ids(
    synced_customer, stripe_on, mid_hour
):
    ingest(*calls("a", 110))
    ingest(*calls("b", 5))
    ingest(*calls("c", 7))

    outbox_drain()

    rows = list(StripeUsageOutbox.objects.order_by("id"))
    [sent] = stripe_on.meter_events()
    assert sent.value == 220  # cents
    assert sent.identifier == outbox.meter_event_identifier(rows)
    assert sent.identifier.startswith(f"ob-{rows[0].pk}-")
    assert {row.meter_event_identifier for row in rows} == {sent.identifier}


def test_each_hour_is_its_own_event_dated_inside_it(synced_customer, stripe_on):
    start = Subscription.objects.get(customer=synced_customer).current_period_start
    with time_machine.travel(start + timedelta(hours=2), tick=False):
        ingest(*calls("a", 103))
    with time_machine.travel(start + timedelta(hours=5, minutes=30), tick=False):
        ingest(*calls("b", 4))
        outbox_drain()

    events = stripe_on.meter_events()
    assert [event.value for event in events] == [30, 40]
    moments = (start + timedelta(hours=2), start + timedelta(hours=5, minutes=30))
    hours = [moment.replace(minute=0, second=0, microsecond=0) for moment in moments]
    assert [event.timestamp for event in events] == [int(hour.timestamp()) for hour in hours]


def test_fractions_are_carried_into_the_next_event_and_rounded_at_period_close(synced_customer, stripe_on):
    ingest(event("base", quantity=100))
    for i in range(5):
        ingest(event(f"f{i}", quantity="0.04"))
        outbox_drain()

    # 2.0 cents of overage in five events of 0.4 cents: whole cents go out as the running total crosses them.
    assert [event.value for event in stripe_on.meter_events()] == [1, 1]
    ingest(event("last", quantity="0.07"))
    outbox_drain()
    assert stripe_total(stripe_on, synced_customer) == 2  # 2.7 cents so far: the 0.7 waits in the carry

    subscription = Subscription.objects.get(customer=synced_customer)
    with time_machine.travel(subscription.current_period_end + timedelta(minutes=1), tick=False):
        assert usage_carries_finalize() == 1
        outbox_drain()
        assert usage_carries_finalize() == 0

    assert ledger_cents(synced_customer) == Decimal("2.7")
    assert stripe_total(stripe_on, synced_customer) == 3  # rounded half up, once


def test_a_stripe_outage_queues_usage_and_loses_nothing(synced_customer, stripe_on):
    ingest(*calls("included", 100))
    stripe_on.fail("error_500", paths=[METER_EVENTS])
    start = timezone.now()
    # A minute of Stripe being down while usage keeps coming; each drain attempt fails and changes nothing.
    for second in range(0, 60, 15):
        with time_machine.travel(start + timedelta(seconds=second), tick=False):
            ingest(*calls(f"s{second}", 40))
            with pytest.raises(stripe.APIError):
                outbox_drain()

    assert stripe_on.meter_events() == []
    assert StripeUsageOutbox.objects.filter(status=OutboxStatus.PENDING).count() == 4
    stripe_on.clear_faults()

    with time_machine.travel(start + timedelta(seconds=75), tick=False):
        outbox_drain()

    assert stripe_total(stripe_on, synced_customer) == ledger_cents(synced_customer) == 1600
    identifiers = accepted_identifiers(stripe_on)
    assert len(identifiers) == len(set(identifiers))
    posts = stripe_on.requests(METER_EVENTS, method="POST")
    assert [post.status for post in posts].count(200) == len(identifiers)
    assert not StripeUsageOutbox.objects.exclude(status=OutboxStatus.SENT).exists()


def test_a_crash_after_stripe_accepted_resends_the_same_identifier(
    synced_customer, stripe_on, monkeypatch, mid_hour
):
    ingest(*calls("a", 125))
    real_mark = outbox._mark

    def crash_on_sent(event, status, **kwargs):
        if status == MeterEventStatus.SENT:
            raise SystemExit("worker killed after Stripe answered")
        real_mark(event, status, **kwargs)

    monkeypatch.setattr(outbox, "_mark", crash_on_sent)
    with pytest.raises(SystemExit):
        outbox_drain()
    monkeypatch.setattr(outbox, "_mark", real_mark)
    assert StripeMeterEvent.objects.get().status == MeterEventStatus.PENDING

    # The dead drain's lease on the event runs out; the next drain posts it again.
    with time_machine.travel(timezone.now() + timedelta(minutes=3), tick=False):
        outbox_drain()

    assert stripe_total(stripe_on, synced_customer) == 250
    [first, again] = stripe_on.requests(METER_EVENTS, method="POST")
    assert first.params["identifier"] == again.params["identifier"]
    assert (first.status, again.status) == (200, 400)  # "An event already exists with identifier ..."
    assert StripeMeterEvent.objects.get().status == MeterEventStatus.SENT
    assert set(StripeUsageOutbox.objects.values_list("status", flat=True)) == {OutboxStatus.SENT}


def test_usage_waits_until_the_customer_is_in_stripe(stripe_on, pro_plan, make_customer):
    customer = make_customer("pro")
    ingest(*calls("a", 130))

    assert outbox_drain().rows_claimed == 0
    stripe_sync_pending()
    outbox_drain()

    customer.refresh_from_db()
    assert stripe_total(stripe_on, customer) == 300


def test_usage_too_old_for_stripe_is_flagged_for_a_manual_invoice(stripe_on, pro_plan, make_customer):
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        customer = make_customer("pro")
        ingest(*calls("a", 120))
    # Stripe stayed disconnected for over five weeks; when it comes back the hour is out of its window.
    with time_machine.travel(start + timedelta(days=35, hours=2), tick=False):
        stripe_sync_pending()
        result = outbox_drain()

    assert result.rows_too_old == 1
    assert stripe_on.meter_events() == []
    row = StripeUsageOutbox.objects.get()
    assert row.status == OutboxStatus.TOO_OLD
    alert = OperatorAlert.objects.get(kind=OperatorAlertKind.TOO_OLD_USAGE)
    assert alert.customer == customer
    assert "invoice them manually" in alert.message
    assert "2.00 USD" in alert.message
    [hour] = alert.data["hours"]
    assert hour["quantity"] == "20.000000"
    assert hour["outbox_ids"] == [row.pk]


def test_event_timestamps_stay_in_the_hour_the_period_and_stripes_window():
    now = timezone.now().replace(minute=30, second=0, microsecond=0)
    hour = now.replace(minute=0)
    far = now + timedelta(days=20)

    def stamp(window_start, period_start, period_end=far):
        return meter_event_timestamp(
            window_start=window_start, period_start=period_start, period_end=period_end, now=now
        )

    assert stamp(hour, hour - timedelta(days=3)) == hour
    # A period that began inside the hour: its first usage is dated at its first whole second, in it.
    late_start = hour + timedelta(minutes=12, seconds=5, microseconds=250)
    assert stamp(hour, late_start) == hour + timedelta(minutes=12, seconds=5)
    # A period that began in the hour's last second still dates its usage in the period.
    assert stamp(hour, hour + timedelta(minutes=59, seconds=59, microseconds=1)) == hour + timedelta(
        minutes=59, seconds=59
    )
    # A period that ends a fraction of a second into the hour: Stripe's ends at the whole second before.
    assert stamp(hour, hour - timedelta(days=3), hour + timedelta(microseconds=500)) == hour - timedelta(
        seconds=1
    )
    edge = (now - timedelta(days=35)).replace(minute=0)
    long_ago = edge - timedelta(days=1)
    assert stamp(edge - timedelta(hours=1), long_ago) is None
    stamped = stamp(edge, long_ago)
    assert stamped is not None and now - timedelta(days=35) < stamped < edge + timedelta(hours=1)


def test_dimensional_overage_goes_to_the_meter_of_its_value(stripe_on, make_plan, make_customer):
    make_plan(
        "ai",
        prices=[
            {
                "meter": "llm_tokens",
                "model": "dimensional",
                "dimension": "model",
                "included": "1000",
                "rates": {"gpt-4o": "0.00001", "mini": "0.000001"},
                "default_rate": "0.000002",
            }
        ],
    )
    customer = make_customer("ai")
    stripe_sync_pending()
    customer.refresh_from_db()
    tokens = [
        event("t1", meter="llm_tokens", quantity=101_000, properties={"model": "gpt-4o"}),
        event("t2", meter="llm_tokens", quantity=300_000, properties={"model": "mini"}),
        event("t3", meter="llm_tokens", quantity=70_000, properties={"model": "other"}),
    ]
    ingest(*tokens)

    outbox_drain()

    by_name = {record.event_name: record.value for record in stripe_on.meter_events()}
    # Cents: 100,000 billable tokens at $0.00001, 300,000 at $0.000001, 70,000 at the default $0.000002.
    assert by_name == {"llm_tokens.gpt-4o": 100, "llm_tokens.mini": 30, "llm_tokens": 14}


@pytest.mark.django_db(transaction=True)
def test_concurrent_drains_send_each_row_once(stripe_on, pro_plan, make_customer):
    customer = make_customer("pro")
    stripe_sync_pending()
    customer.refresh_from_db()
    for batch in range(12):
        ingest(*calls(f"b{batch}", 20 if batch else 120))
    errors = []

    def drain():
        try:
            outbox_drain(batch_size=3)
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=drain) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert stripe_total(stripe_on, customer) == ledger_cents(customer) == 2400
    identifiers = accepted_identifiers(stripe_on)
    assert len(identifiers) == len(set(identifiers))
    assert not StripeUsageOutbox.objects.exclude(status=OutboxStatus.SENT).exists()


def test_without_a_key_the_drain_task_leaves_everything_queued(settings, pro_plan, make_customer):
    settings.STRIPE_API_KEY = ""
    make_customer("pro")
    ingest(*calls("a", 120))

    assert "skipped" in stripe_outbox_drain_task.apply().get()
    assert StripeUsageOutbox.objects.get().status == OutboxStatus.PENDING


def test_the_drain_task_retries_transient_stripe_errors_with_backoff():
    assert set(stripe_outbox_drain_task.autoretry_for) == {
        stripe.APIConnectionError,
        stripe.RateLimitError,
        stripe.APIError,
    }
    assert stripe_outbox_drain_task.retry_backoff is True
    assert not issubclass(stripe.InvalidRequestError, tuple(stripe_outbox_drain_task.autoretry_for))


def test_one_customers_stuck_rows_do_not_hold_back_the_others(stripe_on, pro_plan, make_plan, make_customer):
    make_plan("exports", prices=[{"meter": "export", "model": "per_unit", "unit_amount": "0.50"}])
    stuck = make_customer("exports", "stuck")
    acme = make_customer("pro")
    stripe_sync_pending()
    # The export meter lost its Stripe meter (a plan change to a version not synced yet, say): the stuck
    # customer's rows cannot be routed, and they are the oldest in the outbox.
    Meter.objects.filter(key="export").update(stripe_meter_id="")
    for batch in range(4):
        ingest(event(f"x{batch}", customer="stuck", meter="export", quantity=2))
    ingest(*calls("a", 130))

    result = outbox_drain(batch_size=2)

    acme.refresh_from_db()
    assert stripe_total(stripe_on, acme) == 300
    assert result.waiting_for_sync == 4
    assert StripeUsageOutbox.objects.filter(customer=stuck, status=OutboxStatus.PENDING).count() == 4
    assert not OperatorAlert.objects.filter(kind=OperatorAlertKind.OUTBOX_STUCK).exists()

    with time_machine.travel(timezone.now() + timedelta(minutes=16), tick=False):
        assert outbox_drain(batch_size=2).rows_stuck == 4
        outbox_drain(batch_size=2)

    [alert] = OperatorAlert.objects.filter(kind=OperatorAlertKind.OUTBOX_STUCK)
    assert alert.customer == stuck
    assert alert.data["rows"] == 4
