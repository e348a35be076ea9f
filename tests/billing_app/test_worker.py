"""The outbox drain on a real Celery worker, on the local Redis, against the fake Stripe server.

The worker is a separate process (``celery -A billing_app worker -P solo``) that sees the test database, so
these tests commit their data (``transaction=True``). Outages are the fake's fault switch, held for as long
as it takes the worker to fail against it a few times (seconds, not the minute a real outage might last:
what matters is that attempts fail and retry, not how long the clock runs).
"""

import fcntl
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from django.conf import settings
from django.db import connection
from kombu import pools as kombu_pools

from billing_app.celery import app as celery_app
from billing_app.models import MeterEventStatus, StripeMeterEvent
from billing_app.stripe.sync.pending import stripe_sync_pending
from billing_app.tasks import stripe_outbox_drain_task
from customers.models import Customer
from plans.models import Meter
from tests.billing_app.conftest import calls, ingest
from tests.stripe_fake import FakeStripe
from usage.models import OutboxStatus, StripeUsageOutbox

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

# The suite's Redis server (the machine's or an embedded one), on a database of the worker tests' own.
REDIS_URL = urlunsplit(urlsplit(settings.REDIS_URL)._replace(path="/14"))
METER_EVENTS = "/v1/billing/meter_events"
ROOT = Path(__file__).resolve().parents[2]


def wait_for(condition: Callable[[], object], *, timeout: float = 20, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def database_url() -> str:
    db = connection.settings_dict
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


class Worker:
    """A celery worker subprocess in its own process group, so it can be killed like a crashed host."""

    def __init__(self, fake: FakeStripe, log: Path) -> None:
        self.fake = fake
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self) -> "Worker":
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.billing_app.worker_settings",
            "DATABASE_URL": database_url(),
            "REDIS_URL": REDIS_URL,
            "CELERY_TASK_ALWAYS_EAGER": "false",
            "STRIPE_API_KEY": "sk_test_x",
            "STRIPE_API_BASE": self.fake.url,
            "LOG_LEVEL": "WARNING",
        }
        celery = str(Path(sys.executable).with_name("celery"))
        command = [celery, "-A", "billing_app", "worker", "-l", "warning", "-P", "solo", "-c", "1"]
        command += ["--without-heartbeat", "--without-gossip", "--without-mingle"]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def kill(self) -> None:
        """SIGKILL, no warm shutdown: the task in hand is interrupted wherever it is."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def drop_broker_connections() -> None:
    """Forget pooled broker connections so the next task goes to the current ``broker_url``. (Not
    ``app.close()``: that also unregisters the app, and tasks imported later would not find it.)"""
    celery_app._pool = None
    celery_app.amqp._producer_pool = None
    kombu_pools.reset()


@contextmanager
def broker_held() -> Iterator[None]:
    """The worker tests' broker database, for one test at a time on this machine: two at once (``pytest -n``,
    or two runs) would flush it under each other and their workers would take each other's tasks."""
    with (Path(tempfile.gettempdir()) / "billing-worker-tests-broker.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def broker_switched(url: str) -> Iterator[None]:
    """The test process sends tasks to the Redis database ``url`` instead of running them in-process; the
    database starts and ends empty."""
    client = redis.Redis.from_url(url)
    client.flushdb()
    saved = {key: celery_app.conf[key] for key in ("broker_url", "task_always_eager")}
    celery_app.conf.update(broker_url=url, task_always_eager=False)
    drop_broker_connections()
    try:
        yield
    finally:
        drop_broker_connections()
        celery_app.conf.update(saved)
        client.flushdb()
        client.close()


@pytest.fixture
def broker() -> Iterator[None]:
    """The worker tests' broker, held by one test at a time."""
    with broker_held(), broker_switched(REDIS_URL):
        yield


@pytest.fixture
def worker(transactional_db, stripe_on: FakeStripe, broker, tmp_path: Path) -> Iterator[Worker]:
    running = Worker(stripe_on, tmp_path / "worker.log").start()
    yield running
    running.stop()
    # Keep the worker's own words next to a failure.
    sys.stderr.write(running.log.read_text(errors="replace")[-4000:])


@pytest.fixture
def acme(stripe_on: FakeStripe, pro_plan, make_customer) -> Customer:
    customer = make_customer("pro")
    stripe_sync_pending()
    customer.refresh_from_db()
    ingest(*calls("included", 100))
    return customer


def stripe_total(fake: FakeStripe, customer: Customer) -> int:
    return fake.meter_total(
        Meter.objects.get(key="api_call").stripe_meter_id, customer.stripe_customer_id, 0, 2**31
    )


def ledger_cents(customer: Customer) -> int:
    """The overage money we rated, in cents: what Stripe's meter must add up to."""
    return int(sum(row.amount for row in StripeUsageOutbox.objects.filter(customer=customer)) * 100)


def all_sent() -> bool:
    return not StripeUsageOutbox.objects.exclude(status=OutboxStatus.SENT).exists()


def assert_each_identifier_counted_once(fake: FakeStripe) -> None:
    accepted = [record.identifier for record in fake.meter_events()]
    assert len(accepted) == len(set(accepted))
    ok_posts = [
        post.params["identifier"] for post in fake.requests(METER_EVENTS, method="POST") if post.status == 200
    ]
    assert sorted(ok_posts) == sorted(accepted)


def test_a_stripe_outage_during_ingestion_loses_nothing_and_sends_nothing_twice(worker, acme, stripe_on):
    stripe_on.fail("error_500", paths=[METER_EVENTS])
    for batch in range(4):
        ingest(*calls(f"b{batch}", 40))
        stripe_outbox_drain_task.delay()
    # The worker keeps trying (and its retries back off) while Stripe answers 500.
    wait_for(lambda: len(stripe_on.requests(METER_EVENTS)) >= 4, what="failed attempts during the outage")
    assert stripe_on.meter_events() == []
    assert StripeUsageOutbox.objects.filter(status=OutboxStatus.PENDING).count() == 4

    stripe_on.clear_faults()
    wait_for(all_sent, what="the outbox to drain after the outage")

    assert stripe_total(stripe_on, acme) == ledger_cents(acme) == 1600
    assert_each_identifier_counted_once(stripe_on)
    assert all(event.status == MeterEventStatus.SENT for event in StripeMeterEvent.objects.all())


def test_a_worker_killed_mid_drain_loses_nothing_after_restart(worker, acme, stripe_on):
    for batch in range(3):
        ingest(*calls(f"b{batch}", 30))
    # Stripe hangs: the worker is inside the HTTP call when it dies.
    stripe_on.fail("hang", seconds=30, paths=[METER_EVENTS])
    stripe_outbox_drain_task.delay()
    [in_flight] = wait_for(lambda: stripe_on.requests(METER_EVENTS), what="the drain to reach Stripe")

    worker.kill()
    stripe_on.clear_faults()

    assert stripe_on.meter_events() == []
    claimed = list(StripeMeterEvent.objects.values_list("identifier", "status"))
    assert (in_flight.params["identifier"], MeterEventStatus.PENDING) in claimed

    worker.start()

    def drained() -> bool:
        # As beat would: another drain now and then, until the dead worker's lease has lapsed.
        stripe_outbox_drain_task.delay()
        time.sleep(0.5)
        return all_sent()

    wait_for(drained, what="the restarted worker to finish the drain")
    assert stripe_total(stripe_on, acme) == ledger_cents(acme) == 900
    assert in_flight.params["identifier"] in [record.identifier for record in stripe_on.meter_events()]
    assert_each_identifier_counted_once(stripe_on)
