"""Webhooks to the operator's backend: signed, retried with the same id, in order per customer, turned off
after a day of failures, never sent from a rolled-back transaction.

The receiver is a real HTTP server on 127.0.0.1 that answers what each test scripts. Deliveries commit
before they are sent, so these tests commit too (``transaction=True``).
"""

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import time_machine
from django.core import mail
from django.db import transaction
from django.utils import timezone

from billing_app.models import (
    OperatorAlert,
    OperatorAlertKind,
    WebhookDelivery,
    WebhookDeliveryStatus,
    WebhookEndpoint,
    WebhookEvent,
)
from billing_app.webhooks_out import webhook_deliveries_send, webhook_endpoint_create, webhook_event_emit
from billing_client.webhooks import verify_signature
from customers.events import CustomerEventType

pytestmark = pytest.mark.django_db(transaction=True)

LOW = CustomerEventType.WALLET_LOW_BALANCE


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A local webhook receiver: answers each POST with the next scripted status (then ``otherwise``)."""

    url: str = ""
    script: list[int] = field(default_factory=list)
    otherwise: int = 200
    received: list[Received] = field(default_factory=list)

    def answer(self) -> int:
        return self.script.pop(0) if self.script else self.otherwise

    def ids(self) -> list[str]:
        return [request.event["id"] for request in self.received]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.received.append(Received(headers=dict(self.headers), body=body))
            status = state.answer()
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b"ok" if status < 300 else b"receiver is down")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def endpoint(receiver: Receiver) -> WebhookEndpoint:
    return webhook_endpoint_create(url=receiver.url, events=list(CustomerEventType.values))


@pytest.fixture
def acme(make_customer, pro_plan):
    return make_customer("pro")


def emit(customer, n: int = 1) -> WebhookEvent:
    with transaction.atomic():
        event = webhook_event_emit(event_type=LOW, customer=customer, data={"balance": "9.5", "n": n})
    assert event is not None
    return event


def test_a_delivery_is_signed_as_the_documented_helper_verifies(receiver, endpoint, acme):
    event = emit(acme)

    [request] = receiver.received
    verified = verify_signature(request.body, request.headers["Billing-Signature"], endpoint.secret)
    assert verified == {
        "id": event.event_id,
        "type": "wallet.low_balance",
        "created": int(event.created_at.timestamp()),
        "customer": "acme",
        "data": {"balance": "9.5", "n": 1},
    }
    assert request.headers["Billing-Event-Id"] == event.event_id
    with pytest.raises(Exception, match="No signature matches"):
        verify_signature(request.body, request.headers["Billing-Signature"], "whsec_someone_else")
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == WebhookDeliveryStatus.DELIVERED
    assert delivery.attempt_rows.get().status_code == 200


def test_a_receiver_that_fails_twice_then_succeeds_gets_the_event_once_more_with_the_same_id(
    receiver, endpoint, acme
):
    receiver.script = [500, 503]
    start = timezone.now()
    event = emit(acme)  # first try, on commit: 500

    with time_machine.travel(start + timedelta(seconds=30)):
        webhook_deliveries_send()  # not due before a minute
    with time_machine.travel(start + timedelta(minutes=1, seconds=5)):
        webhook_deliveries_send()  # second try: 503; the next waits two minutes
    with time_machine.travel(start + timedelta(minutes=3, seconds=10)):
        webhook_deliveries_send()  # third: 200
    with time_machine.travel(start + timedelta(hours=2)):
        webhook_deliveries_send()  # delivered: never again

    assert receiver.ids() == [event.event_id] * 3
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == WebhookDeliveryStatus.DELIVERED
    assert delivery.attempts == 3
    assert [a.status_code for a in delivery.attempt_rows.order_by("attempted_at")] == [500, 503, 200]
    assert delivery.attempt_rows.order_by("attempted_at").first().response_body == "receiver is down"


def test_a_customers_events_arrive_in_order_and_wait_behind_a_failing_one(
    receiver, endpoint, acme, make_customer
):
    globex = make_customer("pro", external_id="globex")
    receiver.script = [500]
    start = timezone.now()
    first = emit(acme, 1)  # fails
    second = emit(acme, 2)  # waits behind the first, though due
    other = emit(globex, 3)  # another customer: not held up

    assert receiver.ids() == [first.event_id, other.event_id]
    with time_machine.travel(start + timedelta(minutes=2)):
        webhook_deliveries_send()
    assert receiver.ids() == [first.event_id, other.event_id, first.event_id, second.event_id]
    assert set(WebhookDelivery.objects.values_list("status", flat=True)) == {WebhookDeliveryStatus.DELIVERED}


def test_an_endpoint_failing_for_a_day_is_disabled_and_operators_are_told(receiver, endpoint, acme, settings):
    settings.OPERATOR_EMAILS = ["ops@example.com"]
    receiver.otherwise = 500
    start = timezone.now()
    emit(acme)
    moment = start
    while moment + timedelta(minutes=61) < start + timedelta(hours=23, minutes=50):
        moment += timedelta(minutes=61)
        with time_machine.travel(moment):
            webhook_deliveries_send()
    endpoint.refresh_from_db()
    assert endpoint.enabled, "still on before a day of failures"

    with time_machine.travel(start + timedelta(hours=24, minutes=30)):
        webhook_deliveries_send()
        endpoint.refresh_from_db()
        assert not endpoint.enabled
        assert "Every delivery failed for 24 hours" in endpoint.disabled_reason
        alert = OperatorAlert.objects.get(kind=OperatorAlertKind.WEBHOOK_ENDPOINT_DISABLED)
        assert receiver.url in alert.message
        assert [message.to for message in mail.outbox] == [["ops@example.com"]]
        tries = len(receiver.received)
        assert tries > 20  # retried all day long, at most an hour apart

        # A disabled endpoint is owed nothing new, and sent nothing.
        assert webhook_event_emit(event_type=LOW, customer=acme, data={}) is None
        webhook_deliveries_send()
    with time_machine.travel(start + timedelta(hours=30)):
        webhook_deliveries_send()
    assert len(receiver.received) == tries
    assert WebhookDelivery.objects.count() == 1


def test_an_event_emitted_in_a_rolled_back_transaction_is_never_sent(receiver, endpoint, acme):
    with pytest.raises(RuntimeError), transaction.atomic():
        webhook_event_emit(event_type=LOW, customer=acme, data={})
        raise RuntimeError("the write failed")

    webhook_deliveries_send()
    assert receiver.received == []
    assert not WebhookEvent.objects.exists()


def test_only_the_endpoints_subscribed_to_a_type_are_owed_it(receiver, acme):
    subscribed = webhook_endpoint_create(url=receiver.url, events=[LOW])
    webhook_endpoint_create(url=receiver.url + "/other", events=[CustomerEventType.FROZEN])

    emit(acme)

    assert list(WebhookDelivery.objects.values_list("endpoint_id", flat=True)) == [subscribed.pk]
    assert webhook_event_emit(event_type=CustomerEventType.MARGIN_NEGATIVE, customer=acme, data={}) is None


def test_sending_inside_a_transaction_is_refused(endpoint):
    with pytest.raises(RuntimeError, match="never sent inside a transaction"), transaction.atomic():
        webhook_deliveries_send()


def test_admin_resend_posts_the_same_event_again(receiver, endpoint, acme, admin_client):
    event = emit(acme)
    delivery = WebhookDelivery.objects.get()

    response = admin_client.post(
        "/admin/billing_app/webhookdelivery/",
        {"action": "resend", "_selected_action": [delivery.pk]},
    )

    assert response.status_code == 302
    assert receiver.ids() == [event.event_id, event.event_id]
    delivery.refresh_from_db()
    assert delivery.status == WebhookDeliveryStatus.DELIVERED
    assert delivery.attempts == 2
    page = admin_client.get(f"/admin/billing_app/webhookdelivery/{delivery.pk}/change/")
    assert page.status_code == 200
    assert event.event_id.encode() in page.content
    statuses = re.findall(r'class="field-status_code">\s*<p>(\d+)</p>', page.content.decode())
    assert statuses == ["200", "200"]  # both attempts, with what the endpoint answered
