"""A stateful fake of the Stripe API for tests, driven through the real ``stripe`` SDK.

Tests take the ``fake_stripe`` fixture (``tests.stripe_fake.plugin``), aim the SDK at ``fake_stripe.url``
(``fake_stripe.client()`` builds a ``StripeClient`` that way) and assert on what the fake received:
``requests()``, ``meter_events()``, ``meter_total()``, the invoices from ``close_period()`` and the webhooks
it posts after ``configure_webhooks()``. ``fail()`` injects 500s, 429s and hangs. Its clock is ``time.time()``,
so time-machine moves it too. Run it by hand with ``python -m tests.stripe_fake --port 12111``.

Layout: ``server`` (HTTP, control API, ``FakeStripe``) → ``handlers`` (route table) → ``catalog``,
``subscriptions``, ``metering``, ``payments`` (one function per endpoint) → ``state`` (storage, events, faults, idempotency)
and ``billing`` (period close and invoices), with ``forms``/``params``/``errors`` for Stripe's wire format,
``pricing`` for tier math and periods, ``webhooks`` for signing and delivery.

Control API (JSON, no auth): ``POST /_fake/reset``; ``POST|DELETE /_fake/faults``; ``POST|DELETE
/_fake/webhooks``; ``POST /_fake/close_period``; ``POST /_fake/meter_error``; ``POST /_fake/flush_webhooks``;
``GET /_fake/requests``, ``/_fake/meter_events``, ``/_fake/meter_total``, ``/_fake/events``,
``/_fake/webhook_deliveries``; ``POST /_fake/checkout_sessions/complete`` and ``/expire`` (pay or expire a
Checkout Session, sending its webhook), ``POST /_fake/payment_methods/decline`` (a saved card's later charges
fail, or with ``"code": null`` succeed again), ``POST /_fake/invoices/pay`` and ``/payment_failed``.

Pages a browser opens: ``/pay/{session}`` (a Checkout Session's ``url``: a Pay button completes it and
redirects to its ``success_url``) and ``/invoices/{invoice}`` (an invoice's ``hosted_invoice_url``).
"""

from .server import FakeStripe
from .state import MeterEventRecord, RecordedRequest
from .webhooks import Delivery, signature_header

__all__ = ["Delivery", "FakeStripe", "MeterEventRecord", "RecordedRequest", "signature_header"]
