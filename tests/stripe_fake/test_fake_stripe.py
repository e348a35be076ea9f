"""The fake Stripe server, driven through the real stripe SDK exactly as the app drives Stripe."""

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
import stripe
import time_machine

from tests.stripe_fake import FakeStripe
from tests.stripe_fake.forms import form_decode

# The fixtures come from the plugin module; tests/conftest.py registers it for the whole suite.

GRADUATED_TIERS = [
    {"up_to": 1000, "unit_amount": 0},
    {"up_to": 10_000, "unit_amount_decimal": "0.5", "flat_amount": 500},
    {"up_to": "inf", "unit_amount_decimal": "0.25"},
]
VOLUME_TIERS = [
    {"up_to": 1000, "unit_amount": 3},
    {"up_to": "inf", "unit_amount_decimal": "1.5", "flat_amount": 100},
]
WEBHOOK_SECRET = "whsec_test_fake"


@pytest.fixture
def client(fake_stripe: FakeStripe) -> stripe.StripeClient:
    return fake_stripe.client()


@pytest.fixture
def webhook_receiver() -> Iterator[SimpleNamespace]:
    """A tiny HTTP endpoint that keeps every webhook posted to it: (Stripe-Signature header, raw body)."""
    received: list[tuple[str, str]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.headers["Stripe-Signature"], body.decode()))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield SimpleNamespace(
        url=f"http://127.0.0.1:{server.server_address[1]}/stripe/webhooks", received=received
    )
    server.shutdown()
    server.server_close()


def metered_subscription(
    client: stripe.StripeClient, *, tiers: list[dict], tiers_mode: str
) -> SimpleNamespace:
    meter = client.v1.billing.meters.create(
        {
            "display_name": "API calls",
            "event_name": "api_calls",
            "default_aggregation": {"formula": "sum"},
            "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
            "value_settings": {"event_payload_key": "value"},
        }
    )
    product = client.v1.products.create({"name": "API calls"})
    price = client.v1.prices.create(
        {
            "currency": "usd",
            "product": product.id,
            "billing_scheme": "tiered",
            "tiers_mode": tiers_mode,
            "tiers": tiers,
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
            "lookup_key": f"api_calls_{tiers_mode}",
            "metadata": {"plan": "pro"},
        }
    )
    customer = client.v1.customers.create(
        {"email": "ada@example.com", "name": "Ada", "metadata": {"org": "42"}}
    )
    subscription = client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id}]})
    return SimpleNamespace(
        meter=meter, product=product, price=price, customer=customer, subscription=subscription
    )


def record_usage(client: stripe.StripeClient, customer_id: str, value: str, **extra: object) -> object:
    params = {
        "event_name": "api_calls",
        "payload": {"stripe_customer_id": customer_id, "value": value},
        **extra,
    }
    return client.v1.billing.meter_events.create(params)


def test_form_decoder_rebuilds_nested_params() -> None:
    params = form_decode(
        "items[0][price]=price_1&items[1][price]=price_2&tiers[1][up_to]=inf&expand[]=tiers&expand[]=product"
        "&metadata[0]=zero&metadata[plan]=pro&metadata[gone]="
    )

    assert params == {
        "items": [{"price": "price_1"}, {"price": "price_2"}],
        "tiers": [{"up_to": "inf"}],
        "expand": ["tiers", "product"],
        "metadata": {"0": "zero", "plan": "pro", "gone": ""},
    }


def test_metered_subscription_is_built_like_stripe(
    client: stripe.StripeClient, fake_stripe: FakeStripe
) -> None:
    setup = metered_subscription(client, tiers=GRADUATED_TIERS, tiers_mode="graduated")

    item = setup.subscription["items"].data[0]
    assert setup.subscription.status == "active"
    assert item.price.id == setup.price.id
    assert item.current_period_start == setup.subscription.start_date
    assert item.current_period_end > item.current_period_start
    # Tiers come back only when expanded, as in Stripe.
    assert "tiers" not in setup.price
    expanded = client.v1.prices.retrieve(setup.price.id, {"expand": ["tiers"]})
    assert [tier.up_to for tier in expanded.tiers] == [1000, 10_000, None]
    assert expanded.tiers[1].unit_amount_decimal == Decimal("0.5")
    listed = client.v1.subscription_items.list({"subscription": setup.subscription.id})
    assert [listed_item.id for listed_item in listed.data] == [item.id]
    creates = fake_stripe.requests("/v1/prices", method="POST")
    assert creates[0].params["recurring"] == {
        "interval": "month",
        "usage_type": "metered",
        "meter": setup.meter.id,
    }
    assert creates[0].params["tiers"][2] == {"up_to": "inf", "unit_amount_decimal": "0.25"}


def test_metered_price_requires_an_existing_meter(client: stripe.StripeClient) -> None:
    product = client.v1.products.create({"name": "API calls"})
    recurring = {"interval": "month", "usage_type": "metered"}

    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.prices.create(
            {"currency": "usd", "product": product.id, "unit_amount": 1, "recurring": recurring}
        )
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        client.v1.prices.create(
            {
                "currency": "usd",
                "product": product.id,
                "unit_amount": 1,
                "recurring": {**recurring, "meter": "mtr_x"},
            }
        )

    assert missing.value.param == "recurring[meter]"
    assert unknown.value.http_status == 404
    assert unknown.value.code == "resource_missing"


def test_duplicate_identifier_counts_once(client: stripe.StripeClient, fake_stripe: FakeStripe) -> None:
    setup = metered_subscription(client, tiers=GRADUATED_TIERS, tiers_mode="graduated")
    record_usage(client, setup.customer.id, "7", identifier="usage-1")

    with pytest.raises(stripe.InvalidRequestError) as duplicate:
        record_usage(client, setup.customer.id, "7", identifier="usage-1")

    assert duplicate.value.http_status == 400
    assert duplicate.value.user_message == "An event already exists with identifier usage-1."
    assert duplicate.value.headers["Stripe-Should-Retry"] == "false"
    assert [event.identifier for event in fake_stripe.meter_events(customer_id=setup.customer.id)] == [
        "usage-1"
    ]
    item = setup.subscription["items"].data[0]
    total = fake_stripe.meter_total(
        setup.meter.id, setup.customer.id, item.current_period_start, item.current_period_end
    )
    assert total == 7


def test_meter_event_timestamp_window_and_whole_values(client: stripe.StripeClient) -> None:
    setup = metered_subscription(client, tiers=GRADUATED_TIERS, tiers_mode="graduated")
    now = int(time.time())

    rejected = {}
    for name, extra, value in [
        ("too old", {"timestamp": now - 36 * 86_400}, "1"),
        ("too far ahead", {"timestamp": now + 6 * 60}, "1"),
        ("fractional", {}, "1.5"),
    ]:
        with pytest.raises(stripe.InvalidRequestError) as error:
            record_usage(client, setup.customer.id, value, **extra)
        rejected[name] = error.value.param
    accepted = record_usage(client, setup.customer.id, "1", timestamp=now - 34 * 86_400)

    assert rejected == {"too old": "timestamp", "too far ahead": "timestamp", "fractional": "payload[value]"}
    assert accepted.timestamp == now - 34 * 86_400


def test_event_summaries_sum_per_window(client: stripe.StripeClient) -> None:
    setup = metered_subscription(client, tiers=GRADUATED_TIERS, tiers_mode="graduated")
    hour = int(time.time()) // 3600 * 3600 - 3 * 3600
    for offset, value in [(10, "5"), (20, "6"), (3600 + 5, "100")]:
        record_usage(client, setup.customer.id, value, timestamp=hour + offset)

    whole = client.v1.billing.meters.event_summaries.list(
        setup.meter.id, {"customer": setup.customer.id, "start_time": hour, "end_time": hour + 3 * 3600}
    )
    hourly = client.v1.billing.meters.event_summaries.list(
        setup.meter.id,
        {
            "customer": setup.customer.id,
            "start_time": hour,
            "end_time": hour + 3 * 3600,
            "value_grouping_window": "hour",
        },
    )

    assert [summary.aggregated_value for summary in whole.data] == [111]
    assert whole.data[0].object == "billing.meter_event_summary"
    assert whole.data[0].meter == setup.meter.id
    assert [(s.start_time - hour, s.aggregated_value) for s in hourly.data] == [
        (0, 11),
        (3600, 100),
        (7200, 0),
    ]


def test_idempotent_replay_returns_the_same_answer(
    client: stripe.StripeClient, fake_stripe: FakeStripe
) -> None:
    first = client.v1.customers.create({"email": "ada@example.com"}, {"idempotency_key": "create-ada"})
    again = client.v1.customers.create({"email": "ada@example.com"}, {"idempotency_key": "create-ada"})

    with pytest.raises(stripe.IdempotencyError):
        client.v1.customers.create({"email": "bob@example.com"}, {"idempotency_key": "create-ada"})

    assert again.id == first.id
    assert again.last_response.body == first.last_response.body
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    assert len(client.v1.customers.list().data) == 1
    assert [request.replayed for request in fake_stripe.requests("/v1/customers", method="POST")] == [
        False,
        True,
        False,
    ]


def test_unknown_ids_and_urls_answer_with_stripes_error_envelope(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.customers.retrieve("cus_missing")
    with pytest.raises(stripe.InvalidRequestError) as unrecognized:
        client.raw_request("get", "/v1/nothing_here")

    assert missing.value.http_status == 404
    assert missing.value.json_body["error"] == {
        "type": "invalid_request_error",
        "code": "resource_missing",
        "doc_url": "https://stripe.com/docs/error-codes/resource-missing",
        "message": "No such customer: 'cus_missing'",
        "param": "id",
    }
    assert unrecognized.value.http_status == 404


def test_requests_need_a_secret_key(fake_stripe: FakeStripe) -> None:
    with pytest.raises(stripe.AuthenticationError):
        fake_stripe.client("pk_test_publishable").v1.customers.list()
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(f"{fake_stripe.url}/v1/customers")

    assert anonymous.value.code == 401
    assert json.loads(anonymous.value.read())["error"]["type"] == "invalid_request_error"


def test_fault_modes_surface_as_sdk_errors(client: stripe.StripeClient, fake_stripe: FakeStripe) -> None:
    fake_stripe.fail("error_500", count=1)
    with pytest.raises(stripe.APIError):
        client.v1.customers.list()
    assert client.v1.customers.list().data == []

    fake_stripe.fail("error_429", paths=["/v1/billing/meter_events"])
    with pytest.raises(stripe.RateLimitError):
        client.v1.billing.meter_events.create({"event_name": "api_calls", "payload": {"value": "1"}})
    client.v1.customers.list()
    fake_stripe.clear_faults()

    fake_stripe.fail("hang", seconds=5)
    impatient = fake_stripe.client(http_client=stripe.RequestsClient(timeout=0.3))
    started = time.monotonic()
    with pytest.raises(stripe.APIConnectionError):
        impatient.v1.customers.list()
    fake_stripe.clear_faults()

    assert time.monotonic() - started < 2
    assert [request.status for request in fake_stripe.requests()] == [500, 200, 429, 200, None]


def test_sdk_retry_after_a_500_reuses_the_key_and_succeeds(fake_stripe: FakeStripe) -> None:
    fake_stripe.fail("error_500", count=1)
    retrying = fake_stripe.client(max_network_retries=1)

    customer = retrying.v1.customers.create({"email": "ada@example.com"})

    attempts = fake_stripe.requests("/v1/customers")
    assert [attempt.status for attempt in attempts] == [500, 200]
    assert attempts[0].idempotency_key == attempts[1].idempotency_key
    assert fake_stripe.get(customer.id)["email"] == "ada@example.com"


def test_close_period_invoices_graduated_usage_and_sends_signed_webhooks(
    client: stripe.StripeClient, fake_stripe: FakeStripe, webhook_receiver: SimpleNamespace
) -> None:
    fake_stripe.configure_webhooks(webhook_receiver.url, WEBHOOK_SECRET)
    setup = metered_subscription(client, tiers=GRADUATED_TIERS, tiers_mode="graduated")
    record_usage(client, setup.customer.id, "12000")
    record_usage(client, setup.customer.id, "346")
    period = setup.subscription["items"].data[0]

    [invoice] = fake_stripe.close_period(setup.subscription.id)

    # 1000 free, 9000 × 0.5 + 500 flat, 2346 × 0.25 = 586.5: 5586.5 rounds half-up to 5587.
    assert invoice["total"] == invoice["amount_due"] == 5587
    [line] = invoice["lines"]["data"]
    assert line["quantity"] == 12_346
    assert line["period"] == {"start": period.current_period_start, "end": period.current_period_end}
    assert line["pricing"]["price_details"]["price"] == setup.price.id
    assert invoice["status"] == "open"
    assert invoice["parent"]["subscription_details"]["subscription"] == setup.subscription.id
    assert client.v1.invoices.retrieve(invoice["id"]).total == 5587
    advanced = client.v1.subscriptions.retrieve(setup.subscription.id)["items"].data[0]
    assert advanced.current_period_start == period.current_period_end
    events = [
        stripe.Webhook.construct_event(body, signature, WEBHOOK_SECRET)
        for signature, body in webhook_receiver.received
    ]
    assert [event.type for event in events] == [
        "customer.subscription.created",
        "invoice.created",
        "invoice.finalized",
        "customer.subscription.updated",
    ]
    assert events[1].data.object.status == "draft"
    assert events[2].data.object.id == invoice["id"]
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(
            webhook_receiver.received[0][1], webhook_receiver.received[0][0], "whsec_other"
        )


def test_close_period_prices_volume_tiers_on_the_whole_quantity(
    client: stripe.StripeClient, fake_stripe: FakeStripe
) -> None:
    setup = metered_subscription(client, tiers=VOLUME_TIERS, tiers_mode="volume")
    record_usage(client, setup.customer.id, "1001")

    [invoice] = fake_stripe.close_period()

    # All 1001 units at the second tier: 1001 × 1.5 + 100 flat = 1601.5, rounded half-up.
    assert invoice["lines"]["data"][0]["amount"] == 1602
    assert invoice["customer"] == setup.customer.id


def test_subscription_changes_emit_updated_and_deleted(
    client: stripe.StripeClient, fake_stripe: FakeStripe, webhook_receiver: SimpleNamespace
) -> None:
    endpoint = client.v1.webhook_endpoints.create(
        {
            "url": webhook_receiver.url,
            "enabled_events": ["customer.subscription.updated", "customer.subscription.deleted"],
        }
    )
    setup = metered_subscription(client, tiers=GRADUATED_TIERS, tiers_mode="graduated")

    client.v1.subscriptions.update(setup.subscription.id, {"metadata": {"seats": "3"}})
    canceled = client.v1.subscriptions.cancel(setup.subscription.id)
    fake_stripe.flush_webhooks()

    events = [
        stripe.Webhook.construct_event(body, sig, endpoint.secret) for sig, body in webhook_receiver.received
    ]
    assert [event.type for event in events] == [
        "customer.subscription.updated",
        "customer.subscription.deleted",
    ]
    assert events[0].data.previous_attributes.metadata.to_dict() == {}
    assert canceled.status == "canceled"


def test_thin_meter_error_event_parses_and_fetches_with_the_sdk(
    client: stripe.StripeClient, fake_stripe: FakeStripe, webhook_receiver: SimpleNamespace
) -> None:
    fake_stripe.configure_webhooks(webhook_receiver.url, WEBHOOK_SECRET)
    setup = metered_subscription(client, tiers=GRADUATED_TIERS, tiers_mode="graduated")
    record_usage(client, "cus_unknown", "5", identifier="orphan-usage")

    fake_stripe.send_meter_error(setup.meter.id)

    signature, body = webhook_receiver.received[-1]
    notification = client.parse_event_notification(body, signature, WEBHOOK_SECRET)
    assert notification.type == "v1.billing.meter.error_report_triggered"
    assert notification.related_object.id == setup.meter.id
    event = notification.fetch_event()
    [error_type] = event.data.reason.error_types
    assert error_type.code == "meter_event_customer_not_found"
    assert error_type.sample_errors[0].request.identifier == "orphan-usage"
    assert notification.fetch_related_object().id == setup.meter.id
    assert fake_stripe.meter_total(setup.meter.id, "cus_unknown", 0, 2**31) == 0


def test_clock_follows_time_machine(client: stripe.StripeClient) -> None:
    setup = metered_subscription(client, tiers=GRADUATED_TIERS, tiers_mode="graduated")
    later = datetime.now(UTC).replace(microsecond=0).timestamp() + 10 * 86_400

    with time_machine.travel(later, tick=False):
        usage = record_usage(client, setup.customer.id, "1")

    assert usage.timestamp == int(later)


def test_control_api_speaks_json_over_http(client: stripe.StripeClient, fake_stripe: FakeStripe) -> None:
    def control(method: str, path: str, payload: dict | None = None) -> dict:
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(f"{fake_stripe.url}/_fake/{path}", data=data, method=method)
        with urllib.request.urlopen(request) as response:
            return json.loads(response.read())

    control("POST", "faults", {"mode": "error_500", "count": 1, "paths": ["/v1/products"]})
    with pytest.raises(stripe.APIError):
        client.v1.products.create({"name": "API calls"})
    client.v1.products.create({"name": "API calls"})

    logged = control("GET", "requests?path_prefix=/v1/products")["data"]
    assert [(entry["status"], entry["params"]) for entry in logged] == [
        (500, {"name": "API calls"}),
        (200, {"name": "API calls"}),
    ]
    assert control("POST", "reset") == {"reset": True}
    assert control("GET", "requests")["data"] == []


def test_a_backdated_subscription_renews_on_its_anchor_config_day(
    client: stripe.StripeClient, fake_stripe: FakeStripe
) -> None:
    setup = metered_subscription(client, tiers=GRADUATED_TIERS, tiers_mode="graduated")
    started = datetime(2031, 1, 31, 9, 15, 7, tzinfo=UTC)
    with time_machine.travel(datetime(2031, 1, 31, 9, 18, tzinfo=UTC), tick=False):
        with pytest.raises(stripe.InvalidRequestError, match="later than next natural billing date"):
            client.v1.subscriptions.create(
                {
                    "customer": setup.customer.id,
                    "items": [{"price": setup.price.id}],
                    "billing_cycle_anchor": int(datetime(2031, 3, 5, tzinfo=UTC).timestamp()),
                }
            )
        subscription = client.v1.subscriptions.create(
            {
                "customer": setup.customer.id,
                "items": [{"price": setup.price.id}],
                "backdate_start_date": int(started.timestamp()),
                "billing_cycle_anchor_config": {"day_of_month": 31, "hour": 9, "minute": 15, "second": 7},
                "proration_behavior": "create_prorations",
            }
        )
    item = subscription["items"].data[0]
    assert subscription.start_date == item.current_period_start == int(started.timestamp())
    # Clamped to February's last day, then back on the 31st: the anchor's day, not February's.
    assert item.current_period_end == int(datetime(2031, 2, 28, 9, 15, 7, tzinfo=UTC).timestamp())
    with time_machine.travel(datetime(2031, 2, 28, 10, tzinfo=UTC), tick=False):
        fake_stripe.close_period(subscription.id)
    renewed = client.v1.subscriptions.retrieve(subscription.id)["items"].data[0]
    assert renewed.current_period_end == int(datetime(2031, 3, 31, 9, 15, 7, tzinfo=UTC).timestamp())
