"""The HTTP front of the fake: Stripe's API under ``/v1`` and ``/v2``, a test control API under ``/_fake/``,
and ``FakeStripe``, the object tests hold.

An API request goes: fault injection → auth → route → idempotency replay → handler, the last three under
the state lock, and every request lands in the request log with the status it got.
"""

import base64
import binascii
import html
import json
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from . import billing, payments
from .call import Call
from .errors import StripeError
from .forms import form_decode
from .handlers import route
from .state import Fault, MeterEventRecord, RecordedRequest, State, StoredResponse, WebhookTarget
from .webhooks import DELIVERY_TIMEOUT_SECONDS, Delivery, WebhookSender

_INJECTED_500 = StripeError(
    "An unknown error occurred (injected by the fake's fault mode).", status=500, type="api_error"
)
_INJECTED_429 = StripeError(
    "Request rate limit exceeded. You can learn more about rate limits here https://stripe.com/docs/rate-limits.",
    status=429,
    code="rate_limit",
)


def _fault_error(fault: Fault) -> StripeError:
    return _INJECTED_429 if fault.mode == "error_429" else _INJECTED_500


def _json_bytes(payload: Any) -> bytes:
    # Stripe answers with pretty-printed JSON; replays resend these exact bytes.
    return json.dumps(payload, indent=2).encode()


def _authenticate(headers: dict[str, str]) -> None:
    """Any secret key (``sk_...``) is accepted, by Bearer auth as the SDK sends it or Basic auth as curl -u does."""
    authorization = headers.get("authorization", "")
    api_key = ""
    if authorization.startswith("Bearer "):
        api_key = authorization.removeprefix("Bearer ").strip()
    elif authorization.startswith("Basic "):
        try:
            api_key = base64.b64decode(authorization.removeprefix("Basic ")).decode().split(":", 1)[0]
        except (binascii.Error, UnicodeDecodeError):
            api_key = ""
    if not api_key:
        raise StripeError(
            "You did not provide an API key. You need to provide your API key in the Authorization header, "
            "using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            status=401,
            stored=False,
        )
    if not api_key.startswith("sk_"):
        raise StripeError(f"Invalid API Key provided: {api_key[:8]}{'*' * 8}", status=401, stored=False)


def _decode_params(path: str, query: str, body: bytes) -> dict:
    """v1 sends form fields (GET/DELETE in the query string, POST in the body); v2 POST bodies are JSON."""
    params = form_decode(query) if query else {}
    if body:
        if path.startswith("/v2/"):
            decoded = json.loads(body)
            if not isinstance(decoded, dict):
                raise ValueError("the JSON body must be an object")
            params.update(decoded)
        else:
            params.update(form_decode(body.decode()))
    return params


def _execute(
    state: State, method: str, path: str, params: dict, headers: dict[str, str]
) -> tuple[int, bytes, dict[str, str], bool]:
    """Auth, route, replay or run the handler, save the answer for its Idempotency-Key.

    Runs under the state lock, so a retry racing its original waits and then replays it.
    Returns (status, body, response headers, whether it was a replay).
    """
    key = headers.get("idempotency-key")
    request_id = state.new_id("req")
    response_headers = {"Request-Id": request_id, "Stripe-Version": state.api_version}
    if key:
        response_headers["Idempotency-Key"] = key
    # Stripe keys only POSTs: GET and DELETE are idempotent already.
    keyed = bool(key) and method == "POST"
    try:
        _authenticate(headers)
        found = route(method, path)
        if found is None:
            raise StripeError(
                f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs or we can "
                "help at https://support.stripe.com/.",
                status=404,
                stored=False,
            )
        state.api_version = headers.get("stripe-version") or state.api_version
        response_headers["Stripe-Version"] = state.api_version
        replay = state.idempotent_replay(key or "", method, path, params) if keyed else None
        if replay is not None:
            replay_headers = {**replay.headers, "Request-Id": request_id, "Idempotent-Replayed": "true"}
            replay_headers["Original-Request"] = replay.request_id
            return replay.status, replay.body, replay_headers, True
        handler, args = found
        state.request_context = {"id": request_id, "idempotency_key": key}
        try:
            status, payload, stored = 200, handler(Call(state, params, args)), True
        finally:
            state.request_context = {"id": None, "idempotency_key": None}
    except StripeError as error:
        status, payload, stored = error.status, error.body(), error.stored
        response_headers.update(error.headers)
    except Exception:
        # A bug in the fake itself: answer like a Stripe outage, and show where it broke.
        traceback.print_exc()
        status, payload, stored = 500, _INJECTED_500.body(), False
        payload["error"]["message"] = "The fake Stripe server crashed: " + traceback.format_exc(limit=3)
    body = _json_bytes(payload)
    if keyed and stored:
        state.idempotent[key or ""] = StoredResponse(
            method, path, params, status, body, dict(response_headers), request_id, state.now()
        )
    return status, body, response_headers, False


class _RequestHandler(BaseHTTPRequestHandler):
    server: "_Server"
    server_version = "FakeStripe/1.0"

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if url.path.startswith("/_fake/"):
            self._control(method, url.path, url.query, body)
        elif url.path.startswith(("/pay/", "/invoices/")):
            self._hosted_page(method, url.path)
        else:
            self._api(method, url.path, url.query, body)

    def _respond(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except ConnectionError:
            # The client gave up (a timeout during a hang fault); there is nobody left to answer.
            pass

    def _api(self, method: str, path: str, query: str, body: bytes) -> None:
        state = self.server.fake.state
        headers = {name.lower(): value for name, value in self.headers.items()}
        key = headers.get("idempotency-key")
        decode_error: StripeError | None = None
        try:
            params = _decode_params(path, query, body)
        except ValueError as exc:
            params, decode_error = {}, StripeError(f"Invalid request body: {exc}", stored=False)

        def log(status: int | None, replayed: bool = False) -> None:
            with state.lock:
                state.requests.append(
                    RecordedRequest(method, path, params, key, status, replayed, headers, state.now())
                )

        taken = state.fault_take(path)
        if taken is not None:
            fault, cleared = taken
            # Logged before answering, so a test sees a hanging request in the log while it still hangs.
            log(None if fault.mode == "hang" and fault.after == "close" else _fault_error(fault).status)
            self._fault_answer(fault, cleared)
            return
        with state.lock:
            if decode_error is None:
                status, response_body, response_headers, replayed = _execute(
                    state, method, path, params, headers
                )
            else:
                status, response_body = decode_error.status, _json_bytes(decode_error.body())
                response_headers, replayed = {"Request-Id": state.new_id("req")}, False
            log(status, replayed)
        self._respond(status, response_body, response_headers)

    def _fault_answer(self, fault: Fault, cleared: threading.Event) -> None:
        if fault.mode == "hang":
            cleared.wait(fault.seconds)
            if fault.after == "close":
                # Returning without a response: the server closes the socket and the client sees a dropped
                # connection (the SDK raises APIConnectionError, or times out first).
                self.close_connection = True
                return
        error = _fault_error(fault)
        self._respond(error.status, _json_bytes(error.body()))

    def _hosted_page(self, method: str, path: str) -> None:
        """The pages Stripe hosts for a browser: a Checkout Session's payment page (``GET`` shows it, ``POST``
        pays with a test card and redirects to the session's ``success_url``) and an invoice's page."""
        fake = self.server.fake
        kind, _, object_id = path.strip("/").partition("/")
        try:
            with fake.state.lock:
                obj = fake.state.objects.get(object_id)
                if kind == "pay" and obj is not None and obj.get("object") == "checkout.session":
                    payments.session_expire_if_due(fake.state, obj)
                    if method == "POST":
                        payments.session_complete(fake.state, object_id)
                        target = obj["success_url"].replace("{CHECKOUT_SESSION_ID}", object_id)
                        self._redirect(target)
                        return
                    page = _checkout_page(obj)
                elif kind == "invoices" and obj is not None and obj.get("object") == "invoice":
                    page = _invoice_page(obj)
                else:
                    page, obj = "<h1>Not found</h1>", None
        except StripeError as error:
            self._respond_html(400, f"<h1>Payment refused</h1><p>{html.escape(error.message)}</p>")
            return
        self._respond_html(200 if obj is not None else 404, page)

    def _redirect(self, location: str) -> None:
        self.send_response(303)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _respond_html(self, status: int, page: str) -> None:
        body = (
            "<!doctype html><html><head><meta charset='utf-8'><title>Fake Stripe</title></head><body>"
            + page
            + "</body></html>"
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _control(self, method: str, path: str, query: str, body: bytes) -> None:
        action = _CONTROL.get((method, path))
        if action is None:
            self._respond(404, _json_bytes({"error": f"no control endpoint {method} {path}"}))
            return
        try:
            args = json.loads(body) if body else form_decode(query)
            result = action(self.server.fake, args)
        except StripeError as error:
            self._respond(error.status, _json_bytes(error.body()))
        except (KeyError, ValueError, TypeError) as exc:
            self._respond(400, _json_bytes({"error": f"{type(exc).__name__}: {exc}"}))
        else:
            self._respond(200, _json_bytes(result))


def _checkout_page(session: dict) -> str:
    amount = f"{session['amount_total']} {session['currency'].upper()} minor units"
    items = "".join(
        f"<li>{html.escape(item['description'])} × {item['quantity']}</li>" for item in session["_line_items"]
    )
    if session["status"] != "open":
        return f"<h1>Checkout</h1><p data-testid='session-status'>This session is {session['status']}.</p>"
    cancel = f"<a href='{html.escape(session['cancel_url'])}'>Cancel</a>" if session["cancel_url"] else ""
    return (
        f"<h1>Checkout (fake Stripe)</h1><ul>{items}</ul><p data-testid='amount-total'>{amount}</p>"
        f"<form method='post'><button type='submit'>Pay with test card 4242</button></form>{cancel}"
    )


def _invoice_page(invoice: dict) -> str:
    return (
        f"<h1>Invoice {html.escape(invoice['number'] or invoice['id'])}</h1>"
        f"<p>Status: {invoice['status']}</p><p>Total: {invoice['total']} {invoice['currency'].upper()} minor units</p>"
    )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Never wait for request threads on close: one may be sleeping in a hang fault.
    block_on_close = False

    def __init__(self, address: tuple[str, int], fake: "FakeStripe", quiet: bool) -> None:
        self.fake = fake
        self.quiet = quiet
        super().__init__(address, _RequestHandler)


class FakeStripe:
    """A stateful stand-in for the Stripe API on ``127.0.0.1``, in a daemon thread.

    Point the real SDK at ``url`` (``fake.client()`` does) and assert on what the fake received. Its clock is
    ``time.time()``, so time-machine moves it along with the test.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, quiet: bool = True) -> None:
        self._sender = WebhookSender()
        self.state = State(self._sender)
        self._httpd = _Server((host, port), self, quiet)
        self.url = f"http://{host}:{self._httpd.server_address[1]}"
        self.state.base_url = self.url
        # A short poll interval lets stop() return promptly; serve_forever checks for shutdown only between polls.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-stripe", daemon=True
        )

    def start(self) -> "FakeStripe":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.state.faults_clear()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._sender.stop()

    def __enter__(self) -> "FakeStripe":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def client(self, api_key: str = "sk_test_fake", **options: Any) -> Any:
        """A real ``stripe.StripeClient`` aimed at this fake; retries are off unless ``max_network_retries``
        is given, so injected faults surface as the SDK's errors."""
        import stripe

        options.setdefault("max_network_retries", 0)
        addresses = {name: self.url for name in ("api", "connect", "files", "meter_events")}
        return stripe.StripeClient(api_key, base_addresses=addresses, **options)

    def reset(self) -> None:
        """Forget every object, event, log, fault and webhook target."""
        self.state.reset()

    def fail(
        self,
        mode: str,
        *,
        seconds: float | None = None,
        count: int | None = None,
        paths: Sequence[str] | None = None,
        after: str = "close",
    ) -> None:
        """Answer matching API requests with a fault until ``clear_faults()`` or ``count`` requests.

        ``mode``: ``error_500`` (api_error), ``error_429`` (rate_limit), or ``hang``: wait ``seconds``
        (default 30, cut short by ``clear_faults``), then close the connection or, with
        ``after="error_500"``, answer 500. ``paths`` are path prefixes such as ``"/v1/billing/meter_events"``.
        """
        self.state.fault_add(mode, seconds=seconds, count=count, paths=paths, after=after)

    def clear_faults(self) -> None:
        self.state.faults_clear()

    def requests(self, path_prefix: str | None = None, method: str | None = None) -> list[RecordedRequest]:
        """API requests received, oldest first (control calls are not logged)."""
        with self.state.lock:
            return [
                request
                for request in self.state.requests
                if (path_prefix is None or request.path.startswith(path_prefix))
                and (method is None or request.method == method.upper())
            ]

    def meter_events(
        self, *, meter_id: str | None = None, customer_id: str | None = None, event_name: str | None = None
    ) -> list[MeterEventRecord]:
        """Meter events the API accepted, oldest first; those with ``error_code`` set do not count."""
        with self.state.lock:
            return [
                event
                for event in self.state.meter_events
                if meter_id in (None, event.meter_id)
                and customer_id in (None, event.customer_id)
                and event_name in (None, event.event_name)
            ]

    def meter_total(self, meter_id: str, customer_id: str, start: int, end: int) -> int:
        """The meter's aggregate for the customer over ``start <= timestamp < end``."""
        with self.state.lock:
            return self.state.meter_total(meter_id, customer_id, start, end)

    def close_period(self, subscription_id: str | None = None, *, wait: bool = True) -> list[dict]:
        """End the current period of one subscription (or all billing ones) as Stripe would at period end:
        invoice metered usage, finalize, advance the periods, and send the webhooks (waiting for them)."""
        with self.state.lock:
            invoices = [
                self.state.render(invoice) for invoice in billing.close_period(self.state, subscription_id)
            ]
        if wait:
            self.flush_webhooks()
        return invoices

    def configure_webhooks(
        self, url: str, secret: str, *, thin_url: str | None = None, thin_secret: str | None = None
    ) -> None:
        """Send every event, signed with ``secret``, to ``url``; thin (v2) events go to ``thin_url`` if given."""
        with self.state.lock:
            self.state.webhook_target = WebhookTarget(url, secret, thin_url or url, thin_secret or secret)

    def clear_webhooks(self) -> None:
        with self.state.lock:
            self.state.webhook_target = None

    def send_meter_error(
        self,
        meter_id: str,
        *,
        code: str | None = None,
        message: str | None = None,
        identifier: str | None = None,
        wait: bool = True,
    ) -> dict:
        """Send a thin ``v1.billing.meter.error_report_triggered`` event notification; returns its payload."""
        with self.state.lock:
            notification = self.state.meter_error_emit(
                meter_id, code=code, message=message, identifier=identifier
            )
        if wait:
            self.flush_webhooks()
        return notification

    def checkout_complete(self, session_id: str, *, card_last4: str = "4242", wait: bool = True) -> dict:
        """The customer pays the session with a test card: ``checkout.session.completed`` is sent (and waited
        for). The card is saved to the customer when the session asked for ``setup_future_usage``."""
        with self.state.lock:
            session = self.state.render(
                payments.session_complete(self.state, session_id, card_last4=card_last4)
            )
        if wait:
            self.flush_webhooks()
        return session

    def checkout_expire(self, session_id: str, *, wait: bool = True) -> dict:
        """The session expires unpaid (as at its ``expires_at``): ``checkout.session.expired`` is sent."""
        with self.state.lock:
            session = self.state.get("checkout.session", session_id, label="checkout.session")
            session = self.state.render(payments.session_expire(self.state, session))
        if wait:
            self.flush_webhooks()
        return session

    def payment_method_decline(self, payment_method_id: str, code: str | None = "card_declined") -> dict:
        """Every later charge of this card is declined with ``code``; ``None`` makes it succeed again."""
        with self.state.lock:
            return self.state.render(payments.payment_method_decline(self.state, payment_method_id, code))

    def invoice_pay(self, invoice_id: str, *, wait: bool = True) -> dict:
        """Collect an open invoice: ``invoice.paid`` is sent."""
        with self.state.lock:
            invoice = self.state.render(billing.invoice_pay(self.state, invoice_id))
        if wait:
            self.flush_webhooks()
        return invoice

    def invoice_payment_fail(self, invoice_id: str, *, wait: bool = True) -> dict:
        """A collection attempt of an open invoice fails: ``invoice.payment_failed`` is sent."""
        with self.state.lock:
            invoice = self.state.render(billing.invoice_payment_fail(self.state, invoice_id))
        if wait:
            self.flush_webhooks()
        return invoice

    def events(self, type: str | None = None) -> list[dict]:
        """v1 events created, oldest first (``GET /v1/events`` lists them newest first, as Stripe does)."""
        with self.state.lock:
            return [
                self.state.render(event)
                for event in self.state.all("event")[::-1]
                if type in (None, event["type"])
            ]

    def webhook_deliveries(self) -> list[Delivery]:
        return self._sender.deliveries()

    def flush_webhooks(self, timeout: float = DELIVERY_TIMEOUT_SECONDS) -> bool:
        """Wait for queued webhooks to be posted; False if they were still going after ``timeout``."""
        return self._sender.flush(timeout)

    def get(self, object_id: str, expand: Sequence[str] = ()) -> dict:
        """Any stored object as the API would return it."""
        with self.state.lock:
            return self.state.render(self.state.objects[object_id], expand)


def _args_int(args: dict, key: str) -> int:
    return int(args[key])


_CONTROL: dict[tuple[str, str], Callable[[FakeStripe, dict], Any]] = {
    ("POST", "/_fake/reset"): lambda fake, args: fake.reset() or {"reset": True},
    ("POST", "/_fake/faults"): lambda fake, args: (
        fake.fail(
            args["mode"],
            seconds=args.get("seconds"),
            count=args.get("count"),
            paths=args.get("paths"),
            after=args.get("after", "close"),
        )
        or {"faults": len(fake.state.faults)}
    ),
    ("DELETE", "/_fake/faults"): lambda fake, args: fake.clear_faults() or {"faults": 0},
    ("POST", "/_fake/webhooks"): lambda fake, args: (
        fake.configure_webhooks(
            args["url"], args["secret"], thin_url=args.get("thin_url"), thin_secret=args.get("thin_secret")
        )
        or {"configured": True}
    ),
    ("DELETE", "/_fake/webhooks"): lambda fake, args: fake.clear_webhooks() or {"configured": False},
    ("POST", "/_fake/close_period"): lambda fake, args: {
        "invoices": fake.close_period(args.get("subscription"), wait=args.get("wait", True))
    },
    ("POST", "/_fake/meter_error"): lambda fake, args: {
        "event": fake.send_meter_error(
            args["meter"],
            code=args.get("code"),
            message=args.get("message"),
            identifier=args.get("identifier"),
        )
    },
    ("POST", "/_fake/flush_webhooks"): lambda fake, args: {
        "flushed": fake.flush_webhooks(float(args.get("timeout", DELIVERY_TIMEOUT_SECONDS)))
    },
    ("GET", "/_fake/requests"): lambda fake, args: {
        "data": [asdict(request) for request in fake.requests(args.get("path_prefix"), args.get("method"))]
    },
    ("GET", "/_fake/meter_events"): lambda fake, args: {
        "data": [
            asdict(event)
            for event in fake.meter_events(
                meter_id=args.get("meter"),
                customer_id=args.get("customer"),
                event_name=args.get("event_name"),
            )
        ]
    },
    ("GET", "/_fake/meter_total"): lambda fake, args: {
        "total": fake.meter_total(
            args["meter"], args["customer"], _args_int(args, "start"), _args_int(args, "end")
        )
    },
    ("GET", "/_fake/events"): lambda fake, args: {"data": fake.events(args.get("type"))},
    ("POST", "/_fake/checkout_sessions/complete"): lambda fake, args: fake.checkout_complete(
        args["session"], card_last4=args.get("card_last4", "4242"), wait=args.get("wait", True)
    ),
    ("POST", "/_fake/checkout_sessions/expire"): lambda fake, args: fake.checkout_expire(
        args["session"], wait=args.get("wait", True)
    ),
    ("POST", "/_fake/payment_methods/decline"): lambda fake, args: fake.payment_method_decline(
        args["payment_method"], args.get("code", "card_declined")
    ),
    ("POST", "/_fake/invoices/pay"): lambda fake, args: fake.invoice_pay(
        args["invoice"], wait=args.get("wait", True)
    ),
    ("POST", "/_fake/invoices/payment_failed"): lambda fake, args: fake.invoice_payment_fail(
        args["invoice"], wait=args.get("wait", True)
    ),
    ("GET", "/_fake/webhook_deliveries"): lambda fake, args: {
        "data": [asdict(delivery) for delivery in fake.webhook_deliveries()]
    },
}
