"""Spend-limit emails, the circuit breaker, invoice spikes and how operators hear about them."""

import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
import time_machine
from django.core import mail
from django.utils import timezone

from billing_app.circuit_breaker import circuit_breaker_check, runaway_usage_find
from billing_app.customer_emails import customer_emails_send
from billing_app.models import OperatorAlert, OperatorAlertKind
from billing_app.tasks import circuit_breaker_task, spend_alerts_task
from customers.models import Customer, CustomerStatus, Notification, NotificationKind, Subscription
from customers.services import spend_controls_update, subscription_roll_period
from tests.billing_app.conftest import calls, ingest
from tests.billing_app.webhook_helpers import invoice_event, signed_post
from tests.catalog_fixtures import event


@pytest.fixture
def slack() -> Iterator[SimpleNamespace]:
    """A Slack-compatible incoming webhook on the loopback interface that keeps what it is sent."""
    received: list[dict] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{server.server_address[1]}/hooks/ops", received=received)
    server.shutdown()
    server.server_close()


@pytest.fixture
def operators(settings, slack):
    settings.OPERATOR_EMAILS = ["ops@example.com"]
    settings.OPERATOR_SLACK_WEBHOOK_URL = slack.url
    settings.CIRCUIT_BREAKER_MULTIPLE = 10
    settings.CIRCUIT_BREAKER_MIN_HOURLY_QUANTITY = 100
    settings.CIRCUIT_BREAKER_HISTORY_DAYS = 14
    return slack


def with_email(customer: Customer) -> Customer:
    customer.email = "billing@acme.test"
    customer.save()
    return customer


# --- spend alerts ----------------------------------------------------------------------------------------


def test_a_soft_limit_crossing_is_emailed_once_per_period(pro_plan, make_customer):
    customer = with_email(make_customer("pro", soft_limit=Decimal("1.00")))
    ingest(*calls("a", 120))  # 20 calls past the allowance: $2.00 of a $1.00 soft limit

    assert customer_emails_send() == 1
    [email] = mail.outbox
    assert email.to == ["billing@acme.test"]
    assert "Soft limit crossed" in email.subject
    assert "2.00 USD" in email.body

    ingest(*calls("b", 30))
    assert customer_emails_send() == 0
    assert len(mail.outbox) == 1
    assert (
        Notification.objects.filter(customer=customer, kind=NotificationKind.SOFT_LIMIT_CROSSED).count() == 1
    )

    subscription = Subscription.objects.select_related("plan_version").get(customer=customer)
    with time_machine.travel(subscription.current_period_end + timedelta(minutes=1), tick=False):
        subscription_roll_period(subscription=subscription, now=timezone.now())
        ingest(*calls("next-period", 120))
        assert spend_alerts_task.apply().get() == 1
    assert len(mail.outbox) == 2


def test_a_limit_lowered_below_the_spend_is_recorded_and_emailed(pro_plan, make_customer):
    customer = with_email(make_customer("pro"))
    ingest(*calls("a", 130))  # $3.00
    spend_controls_update(customer=customer, soft_limit=Decimal("2.50"), hard_limit=None, block_overage=False)

    assert customer_emails_send() == 1

    notification = Notification.objects.get(customer=customer)
    assert notification.kind == NotificationKind.SOFT_LIMIT_CROSSED
    assert notification.emailed_at is not None
    assert "3.00 USD" in mail.outbox[0].body


def test_a_hard_limit_stop_is_emailed_to_the_customer_and_its_admins(pro_plan, make_customer):
    from customers.services import member_create

    customer = with_email(make_customer("pro", hard_limit=Decimal("5.00")))
    member_create(customer=customer, external_id="ana", email="ana@acme.test", role="admin")
    result = ingest(*calls("a", 150), event("over"))
    assert result.results[-1].code == "hard_limit_reached"

    customer_emails_send()

    [email] = mail.outbox
    assert "Hard limit reached" in email.subject
    assert email.to == ["billing@acme.test", "ana@acme.test"]


def test_a_failed_email_is_retried_by_the_next_run(pro_plan, make_customer, monkeypatch):
    with_email(make_customer("pro", soft_limit=Decimal("1.00")))
    ingest(*calls("a", 120))
    monkeypatch.setattr("billing_app.customer_emails.send_mail", lambda *args, **kwargs: 1 / 0)

    assert customer_emails_send() == 0
    monkeypatch.undo()

    assert customer_emails_send() == 1


# --- circuit breaker -------------------------------------------------------------------------------------


@pytest.fixture
def steady_customer(pro_plan, make_customer):
    """Acme, two weeks of 2,400 calls a day: a typical hour is 100 calls."""
    now = timezone.now()
    start = now - timedelta(days=15)
    with time_machine.travel(start, tick=False):
        customer = make_customer("pro")
    for day in range(1, 15):
        with time_machine.travel(start + timedelta(days=day), tick=False):
            ingest(event(f"day-{day}", quantity=2400))
    return customer


def test_the_breaker_trips_on_a_runaway_loop(steady_customer, operators, django_capture_on_commit_callbacks):
    # A loop sends 5,000 calls in the last hour: 50 typical hours.
    ingest(*[event(f"loop-{i}", quantity=100) for i in range(50)])

    with django_capture_on_commit_callbacks(execute=True):
        frozen = circuit_breaker_task.apply().get()

    assert frozen == [steady_customer.pk]
    steady_customer.refresh_from_db()
    assert steady_customer.status == CustomerStatus.FROZEN
    assert "circuit breaker" in steady_customer.frozen_reason
    assert ingest(event("after")).results[0].code == "account_frozen"
    alert = OperatorAlert.objects.get(kind=OperatorAlertKind.CIRCUIT_BREAKER)
    assert alert.customer == steady_customer
    assert alert.data["typical_hourly"].startswith("100")
    assert [email.to for email in mail.outbox] == [["ops@example.com"]]
    assert "Circuit breaker tripped: Acme" in mail.outbox[0].subject
    [posted] = operators.received
    assert "frozen" in posted["text"]
    assert Notification.objects.filter(
        customer=steady_customer, kind=NotificationKind.ACCOUNT_FROZEN
    ).exists()


def test_a_busy_day_does_not_trip_the_breaker(steady_customer, operators):
    # Six times a typical hour, hour after hour: busy, not runaway.
    now = timezone.now()
    for hour in range(8, 0, -1):
        with time_machine.travel(now - timedelta(hours=hour - 1, minutes=10), tick=False):
            ingest(*[event(f"busy-{hour}-{i}", quantity=100) for i in range(6)])

    assert circuit_breaker_check(now=now) == []
    assert Customer.objects.get().status == CustomerStatus.ACTIVE
    assert not OperatorAlert.objects.exists()


def test_a_new_customer_is_measured_against_the_floor(pro_plan, make_customer, operators):
    make_customer("pro")
    ingest(*[event(f"first-{i}", quantity=100) for i in range(8)])
    assert runaway_usage_find() == []  # 800 calls in a first hour: under 10 × the floor of 100

    ingest(*[event(f"more-{i}", quantity=100) for i in range(4)])
    [runaway] = runaway_usage_find()
    assert runaway.typical_hourly == 0
    assert runaway.threshold == 1000
    assert runaway.last_hour == 1200


def test_an_operator_who_unfreezes_is_not_overruled_within_the_hour(
    steady_customer, operators, admin_client, django_capture_on_commit_callbacks
):
    ingest(*[event(f"loop-{i}", quantity=100) for i in range(50)])
    with django_capture_on_commit_callbacks(execute=True):
        circuit_breaker_check()
    alert = OperatorAlert.objects.get()

    admin_client.post(
        "/admin/billing_app/operatoralert/",
        {"action": "unfreeze_and_acknowledge", "_selected_action": [alert.pk]},
    )

    steady_customer.refresh_from_db()
    assert steady_customer.status == CustomerStatus.ACTIVE
    assert circuit_breaker_check() == []
    assert Customer.objects.get().status == CustomerStatus.ACTIVE


# --- the breaker's normal: the plan's allowance, new customers, per-meter floors ---------------------------


@pytest.fixture
def hybrid_plan(make_plan):
    """Hybrid: $999 a month, 100,000 AI actions included, then $0.008 an action."""
    return make_plan(
        "hybrid",
        base_fee="999.00",
        prices=[{"meter": "ai_action", "model": "per_unit", "included": "100000", "unit_amount": "0.008"}],
    )


def hybrid_hourly_allowance(subscription: Subscription) -> Decimal:
    """100,000 actions over the hours of the subscription's current period."""
    seconds = int((subscription.current_period_end - subscription.current_period_start).total_seconds())
    return Decimal(100_000) / (Decimal(seconds) / 3600)


def actions(prefix: str, count: int, quantity: int) -> list[dict]:
    return [event(f"{prefix}-{i}", meter="ai_action", quantity=quantity) for i in range(count)]


def test_a_new_hybrid_customer_using_5_percent_of_its_allowance_in_its_first_hour_is_not_frozen(
    hybrid_plan, make_customer, operators
):
    make_customer("hybrid")
    ingest(*actions("first-hour", 10, 500))  # 5,000 actions within minutes of signup

    assert circuit_breaker_check() == []
    assert Customer.objects.get().status == CustomerStatus.ACTIVE
    assert not OperatorAlert.objects.exists()


def test_a_new_customer_running_past_its_allowance_in_an_hour_is_frozen(
    hybrid_plan, make_customer, operators, django_capture_on_commit_callbacks
):
    customer = make_customer("hybrid")
    ingest(*actions("loop", 110, 1000))  # 110,000 actions: the month's allowance and more, in an hour

    with django_capture_on_commit_callbacks(execute=True):
        assert circuit_breaker_check() == [customer]
    customer.refresh_from_db()
    assert customer.status == CustomerStatus.FROZEN
    alert = OperatorAlert.objects.get(kind=OperatorAlertKind.CIRCUIT_BREAKER)
    assert Decimal(alert.data["plan_hourly"]) == hybrid_hourly_allowance(Subscription.objects.get())
    assert Decimal(alert.data["threshold"]) == 10 * Decimal(alert.data["plan_hourly"])
    assert alert.data["typical_hourly"] == "0"


def test_the_plan_allowance_is_an_established_customers_normal(hybrid_plan, make_customer, operators):
    """A quiet history (1 action an hour) does not make an hour at the plan's own pace a runaway."""
    now = timezone.now()
    start = now - timedelta(days=15)
    with time_machine.travel(start, tick=False):
        make_customer("hybrid")
    for day in range(1, 15):
        with time_machine.travel(start + timedelta(days=day), tick=False):
            ingest(event(f"day-{day}", meter="ai_action", quantity=24))
    ingest(event("warm-up", meter="ai_action", quantity=1))
    plan_hourly = hybrid_hourly_allowance(Subscription.objects.get())  # about 139 actions an hour

    ingest(*actions("busy", 1, int(9 * plan_hourly)))
    assert runaway_usage_find() == []

    ingest(*actions("runaway", 1, int(2 * plan_hourly)))
    [runaway] = runaway_usage_find()
    assert runaway.threshold == 10 * plan_hourly
    assert runaway.typical_hourly == 1


def test_a_meter_floor_is_set_per_meter(make_plan, make_customer, operators, settings):
    make_plan(
        "payg",
        prices=[
            {"meter": "api_call", "model": "per_unit", "unit_amount": "0.10"},
            {"meter": "llm_tokens", "model": "per_unit", "unit_amount": "0.00001"},
        ],
    )
    make_customer("payg")
    settings.CIRCUIT_BREAKER_METER_FLOORS = {"llm_tokens": Decimal(200_000)}
    ingest(event("prompts", meter="llm_tokens", quantity=1_500_000), event("calls", quantity=1_500))

    [runaway] = runaway_usage_find()
    assert runaway.meter.key == "api_call"
    assert runaway.floor == 100
    assert runaway.threshold == 1000

    ingest(event("more-prompts", meter="llm_tokens", quantity=600_000))
    assert sorted((found.meter.key, found.threshold) for found in runaway_usage_find()) == [
        ("api_call", 1000),
        ("llm_tokens", 2_000_000),
    ]


# --- invoice spike ---------------------------------------------------------------------------------------


@pytest.fixture
def billed_customer(pro_plan, make_customer, client):
    """Acme in Stripe, with last month's invoice of $100.00."""
    customer = make_customer("pro")
    Customer.objects.filter(pk=customer.pk).update(stripe_customer_id="cus_acme")
    last_month = int(time.time()) - 30 * 86_400
    previous = invoice_event(
        "evt_prev",
        "invoice.finalized",
        invoice_id="in_prev",
        customer="cus_acme",
        total=10_000,
        created=last_month,
        status="open",
    )
    assert signed_post(client, previous).status_code == 200
    return customer


def spike(client, total):
    created = invoice_event(
        "evt_new",
        "invoice.created",
        invoice_id="in_new",
        customer="cus_acme",
        total=total,
        created=int(time.time()),
    )
    return signed_post(client, created)


def test_an_invoice_sixty_percent_larger_is_flagged_before_it_finalizes(
    billed_customer, client, operators, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        assert spike(client, 16_000).status_code == 200

    alert = OperatorAlert.objects.get(kind=OperatorAlertKind.INVOICE_SPIKE)
    assert alert.customer == billed_customer
    assert "160.00 USD, 60% more than the previous one (100.00 USD)" in alert.message
    assert alert.data["previous_invoice"] == "in_prev"
    assert "Invoice spike" in mail.outbox[0].subject
    assert "60% more" in operators.received[0]["text"]


def test_an_invoice_forty_percent_larger_is_not_flagged(billed_customer, client, operators):
    spike(client, 14_000)

    assert not OperatorAlert.objects.exists()


def test_a_first_invoice_is_never_a_spike(pro_plan, make_customer, client):
    customer = make_customer("pro")
    Customer.objects.filter(pk=customer.pk).update(stripe_customer_id="cus_acme")

    spike(client, 99_000)

    assert not OperatorAlert.objects.exists()
