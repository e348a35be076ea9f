"""Signing and delivering webhook events the way Stripe does.

Deliveries run on one background thread, in order, so an API call that triggers an event answers first and
the event arrives shortly after, as with real Stripe. Tests that need the event to have landed call
``flush()`` (``FakeStripe.close_period`` does so itself).
"""

import hashlib
import hmac
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass

# Stripe waits about this long for a webhook endpoint to answer before counting the delivery as failed.
DELIVERY_TIMEOUT_SECONDS = 10


def signature_header(payload: str, secret: str, timestamp: int) -> str:
    """``Stripe-Signature``: ``t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<payload>")>``."""
    signed = f"{timestamp}.{payload}".encode()
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


@dataclass(frozen=True)
class Delivery:
    """One attempt to post an event: ``status`` is the receiver's HTTP status, or None if it was unreachable."""

    event_id: str
    event_type: str
    url: str
    status: int | None
    error: str | None
    sent_at: int


@dataclass(frozen=True)
class _Job:
    event_id: str
    event_type: str
    url: str
    secret: str
    payload: str


class WebhookSender:
    def __init__(self) -> None:
        self._jobs: deque[_Job] = deque()
        self._deliveries: list[Delivery] = []
        self._in_flight = 0
        # One condition guards the queue, the in-flight count and the delivery log; it is never held while
        # posting, so a slow receiver cannot block the API threads that enqueue.
        self._changed = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="fake-stripe-webhooks", daemon=True)
        self._thread.start()

    def send(self, *, event_id: str, event_type: str, url: str, secret: str, payload: str) -> None:
        with self._changed:
            self._jobs.append(_Job(event_id, event_type, url, secret, payload))
            self._changed.notify_all()

    def flush(self, timeout: float = DELIVERY_TIMEOUT_SECONDS) -> bool:
        """Wait until every queued event has been posted; False if that took longer than ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._jobs or self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    def deliveries(self) -> list[Delivery]:
        with self._changed:
            return list(self._deliveries)

    def clear(self) -> None:
        with self._changed:
            self._jobs.clear()
            self._deliveries.clear()

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._jobs.clear()
            self._changed.notify_all()
        self._thread.join(timeout=DELIVERY_TIMEOUT_SECONDS)

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._jobs and not self._stopped:
                    self._changed.wait()
                if self._stopped:
                    return
                job = self._jobs.popleft()
                self._in_flight += 1
            delivery = self._post(job)
            with self._changed:
                self._in_flight -= 1
                self._deliveries.append(delivery)
                self._changed.notify_all()

    def _post(self, job: _Job) -> Delivery:
        sent_at = int(time.time())
        request = urllib.request.Request(
            job.url,
            data=job.payload.encode(),
            method="POST",
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
                "Stripe-Signature": signature_header(job.payload, job.secret, sent_at),
            },
        )
        status: int | None = None
        error: str | None = None
        try:
            with urllib.request.urlopen(request, timeout=DELIVERY_TIMEOUT_SECONDS) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except Exception as exc:
            # Any failure to reach the receiver is that delivery's outcome; the sender thread must survive it.
            error = f"{type(exc).__name__}: {exc}"
        return Delivery(job.event_id, job.event_type, job.url, status, error, sent_at)
