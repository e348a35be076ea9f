"""Two app servers and two Celery workers (and beat, once) on one PostgreSQL and one Redis.

Web processes are stateless and workers claim their work in the database, so more of each is how the app
scales out. The test drives ingest and reservations at both servers at once, against a customer whose hard
limit allows less than is asked, and drains the Stripe outbox from both workers against the fake Stripe
server; then nothing was oversold, every meter event reached Stripe exactly once, and the ledger adds up.
"""

import itertools
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from django.conf import settings
from django.core.management import call_command
from django.db.models import Sum

from billing_app.models import ApiKey, StripeMeterEvent
from billing_app.stripe.sync.pending import stripe_sync_pending
from billing_app.tasks import stripe_outbox_drain_task
from tests.billing_app.test_worker import (
    assert_each_identifier_counted_once,
    database_url,
    ledger_cents,
    stripe_total,
)
from tests.servers import ROOT, app_env, app_server, process_stop, wait_for
from tests.stripe_fake import FakeStripe
from usage.models import OutboxStatus, PeriodUsage, StripeUsageOutbox

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

# A Redis database of this test's own on the suite's server: the two workers' broker.
BROKER_URL = urlunsplit(urlsplit(settings.REDIS_URL)._replace(path="/13"))
HARD_LIMIT = Decimal("5.00")  # $5 of overage at $0.10 a call: 50 calls past the 100 included
CAP = 150


@contextmanager
def celery_process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    celery = str(Path(sys.executable).with_name("celery"))
    with log.open("ab") as out:
        process = subprocess.Popen(
            [celery, "-A", "billing_app", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        process_stop(process)


@pytest.fixture
def broker() -> Iterator[None]:
    from tests.billing_app.test_worker import broker_switched

    with broker_switched(BROKER_URL):
        yield


def test_two_servers_and_two_workers_oversell_nothing_and_send_each_meter_event_once(
    stripe_on: FakeStripe, pro_plan, make_customer, broker, tmp_path: Path
) -> None:
    customer = make_customer("pro", hard_limit=HARD_LIMIT)
    stripe_sync_pending()
    customer.refresh_from_db()
    _, raw_key = ApiKey.generate(name="backend")
    env = app_env(
        DJANGO_SETTINGS_MODULE="tests.billing_app.worker_settings",
        DATABASE_URL=database_url(),
        REDIS_URL=BROKER_URL,
        CELERY_TASK_ALWAYS_EAGER="false",
        STRIPE_API_KEY="sk_test_x",
        STRIPE_API_BASE=stripe_on.url,
        API_RATE_LIMIT_PER_MINUTE="0",
    )
    worker = [
        "worker",
        "-l",
        "info",
        "-P",
        "solo",
        "--without-heartbeat",
        "--without-gossip",
        "--without-mingle",
    ]
    with ExitStack() as stack:
        servers = [stack.enter_context(app_server(env, tmp_path / f"web{n}.log")) for n in (1, 2)]
        workers = [
            stack.enter_context(celery_process([*worker, "-n", f"w{n}@%h"], env, tmp_path / f"worker{n}.log"))
            for n in (1, 2)
        ]
        beat = stack.enter_context(
            celery_process(
                ["beat", "-l", "info", "-s", str(tmp_path / "beat-schedule")], env, tmp_path / "beat.log"
            )
        )
        clients = [
            stack.enter_context(
                httpx.Client(base_url=base, headers={"Authorization": f"Bearer {raw_key}"}, timeout=30)
            )
            for base in servers
        ]
        server_of = itertools.cycle(clients)

        def ingest(batch: int, client: httpx.Client) -> Counter:
            events = [
                {"idempotency_key": f"b{batch}-{n}", "customer": "acme", "meter": "api_call"}
                for n in range(5)
            ]
            response = client.post("/api/v1/events", json={"events": events})
            assert response.status_code == 200, response.text
            return Counter(result["status"] for result in response.json()["results"])

        def reserve_and_commit(number: int, client: httpx.Client) -> Counter:
            response = client.post(
                "/api/v1/reservations",
                json={
                    "customer": "acme",
                    "meter": "api_call",
                    "quantity": "2",
                    "idempotency_key": f"r{number}",
                },
            )
            if response.status_code == 402:
                return Counter(refused=1)
            assert response.status_code == 201, response.text
            reservation = response.json()["id"]
            commit = client.post(f"/api/v1/reservations/{reservation}/commit", json={"quantity": "2"})
            assert commit.status_code == 200, commit.text
            return Counter(committed=1)

        jobs = [(ingest, batch) for batch in range(30)] + [
            (reserve_and_commit, number) for number in range(30)
        ]
        jobs = [job for pair in zip(jobs[:30], jobs[30:], strict=True) for job in pair]  # interleaved
        with ThreadPoolExecutor(max_workers=12) as pool:
            outcomes = list(pool.map(lambda job: job[0](job[1], next(server_of)), jobs))
        totals = sum(outcomes, Counter())

        # Asked: 150 calls by events and 60 by reservations, against a cap of 150.
        used = PeriodUsage.objects.filter(customer=customer).aggregate(total=Sum("quantity"))["total"]
        assert used == totals["accepted"] + 2 * totals["committed"]
        assert used <= CAP, totals
        assert totals["refused"] > 0, totals  # the cap was reached, and held
        overage = StripeUsageOutbox.objects.filter(customer=customer).aggregate(total=Sum("amount"))["total"]
        assert overage <= HARD_LIMIT

        # Drains from the test and from beat, taken by whichever worker is free, several at once.
        def drained() -> bool:
            for _ in range(4):
                stripe_outbox_drain_task.delay()
            return not StripeUsageOutbox.objects.exclude(status=OutboxStatus.SENT).exists()

        wait_for(drained, what="the outbox to drain", timeout=30)
        assert all(process.poll() is None for process in [*workers, beat])

    drains = [
        log.read_text(errors="replace").count("stripe_outbox_drain_task[")
        for log in tmp_path.glob("worker*.log")
    ]
    assert len(drains) == 2 and all(count > 0 for count in drains), drains  # both workers drained
    assert stripe_total(stripe_on, customer) == ledger_cents(customer) > 0
    assert_each_identifier_counted_once(stripe_on)
    assert len(stripe_on.meter_events()) == StripeMeterEvent.objects.count()
    call_command("ledger_check")
