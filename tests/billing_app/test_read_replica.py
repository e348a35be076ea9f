"""Reads from a real streaming replica, money from the primary (``DATABASE_REPLICA_URL``).

A throwaway PostgreSQL primary and a replica streaming from it (``pg_basebackup -R``) run from the machine's
server binaries, with the web process of the Procfile (gunicorn) on them. Replay on the replica is paused
(``pg_wal_replay_pause()``), which makes its lag certain rather than a race: what the replica serves is then
what the primary held before the pause, and each answer shows which database it came from.

The replica's servers allow it ``REPLICA_MAX_LAG_SECONDS`` of the default 30, except one started with 1 to
show that a replica further behind serves nobody; the end stops the replica, which must cost no request an
error.
"""

import json
import re
import time
from pathlib import Path

import httpx
import pytest
from django.conf import settings

from billing_app.db_routers import LAG_CHECK_SECONDS
from tests.scale_scenario import PASSWORD
from tests.servers import app_env, app_server, manage, postgres_bin_dir, primary_with_replica, wait_for

pytestmark = pytest.mark.skipif(
    postgres_bin_dir() is None, reason="no PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup)"
)

PIN_SECONDS = 2


def remaining(client: httpx.Client) -> str:
    response = client.get("/api/v1/customers/acme/usage")
    assert response.status_code == 200, response.text
    [meter] = response.json()["meters"]
    return meter["remaining"]


def page_used(browser: httpx.Client) -> str:
    """The AI actions used this period, as the usage page's big numbers show them."""
    response = browser.get("/settings/usage")
    assert response.status_code == 200, response.text[:500]
    text = " ".join(re.sub(r"<[^>]+>", " ", response.text).split())
    found = re.search(r"AI actions (\d+) actions of 20 included", text)
    assert found, text[:2000]
    return found.group(1)


def actions_send(client: httpx.Client, key_prefix: str, count: int) -> None:
    events = [
        {"idempotency_key": f"{key_prefix}{n}", "customer": "acme", "meter": "ai_action", "user": "maya"}
        for n in range(count)
    ]
    response = client.post("/api/v1/events", json={"events": events})
    assert response.status_code == 200, response.text
    assert {result["status"] for result in response.json()["results"]} == {"accepted"}


def login(browser: httpx.Client) -> None:
    browser.get("/accounts/login/")
    response = browser.post(
        "/accounts/login/",
        data={"username": "maya", "password": PASSWORD, "csrfmiddlewaretoken": browser.cookies["csrftoken"]},
    )
    assert response.status_code == 302, response.text[:500]


def test_pages_and_usage_reads_come_from_the_replica_and_money_from_the_primary(tmp_path: Path) -> None:
    with primary_with_replica(tmp_path / "postgres") as (primary, replica):
        primary.execute("CREATE DATABASE billing")
        env = app_env(
            DATABASE_URL=primary.url("billing"),
            DATABASE_REPLICA_URL=replica.url("billing"),
            REDIS_URL=settings.REDIS_URL,
            REPLICA_PIN_SECONDS=str(PIN_SECONDS),
            API_RATE_LIMIT_PER_MINUTE="0",
        )
        manage("migrate", "--noinput", "-v0", env=env)
        created = manage(
            "shell", "-c", "from tests.scale_scenario import scenario_create; scenario_create()", env=env
        )
        writer_key, reader_key = json.loads(created.strip().splitlines()[-1])["api_keys"]
        wait_for(
            lambda: replica.execute("SELECT count(*) FROM billing_app_apikey", "billing")[0][0] == 2,
            what="the replica to hold the scenario",
        )
        with (
            app_server(env, tmp_path / "web.log") as base,
            httpx.Client(base_url=base, headers={"Authorization": f"Bearer {writer_key}"}) as writer,
            httpx.Client(base_url=base, headers={"Authorization": f"Bearer {reader_key}"}) as reader,
            httpx.Client(base_url=base) as browser,
        ):
            login(browser)
            assert remaining(reader) == "20"

            replica.execute("SELECT pg_wal_replay_pause()")
            actions_send(writer, "e", 15)

            # The client that wrote reads its writes: it is pinned to the primary.
            assert remaining(writer) == "5"
            # Another client reads the replica, which has not replayed the batch yet.
            assert remaining(reader) == "20"
            # The page too: a browser not pinned sees the replica's numbers...
            browser.cookies.delete("replica_pin")
            assert page_used(browser) == "0"
            # ...and after it wrote (marking its notifications read), the primary's, for the pin's seconds.
            response = browser.post(
                "/settings/usage/notifications/read-all",
                headers={"X-CSRFToken": browser.cookies["csrftoken"]},
            )
            assert response.status_code in (200, 302), response.text[:500]
            assert "replica_pin" in browser.cookies
            assert page_used(browser) == "15"

            # Money is decided on the primary even for a client reading the replica: 15 of 20 are used, so 10
            # more are refused although the replica still says 20 are left.
            check = reader.post(
                "/api/v1/check", json={"customer": "acme", "meter": "ai_action", "quantity": "10"}
            )
            assert check.status_code == 200, check.text
            assert check.json()["allowed"] is False, check.json()
            hold = reader.post(
                "/api/v1/reservations",
                json={
                    "customer": "acme",
                    "meter": "ai_action",
                    "quantity": "10",
                    "idempotency_key": "hold-10",
                },
            )
            assert hold.status_code == 402, hold.text
            # A POST that may write pins its client, refused or not: the reader now reads the primary.
            assert remaining(reader) == "5"

            # Once the pin lapses, the writer reads the replica too (still paused), then everyone sees the batch
            # when replay resumes.
            time.sleep(PIN_SECONDS + 0.5)
            assert remaining(writer) == "20"
            replica.execute("SELECT pg_wal_replay_resume()")
            wait_for(lambda: remaining(reader) == "5", what="the replica to replay the batch", timeout=10)
            browser.cookies.delete("replica_pin")
            assert page_used(browser) == "15"

            # A replica behind by more than REPLICA_MAX_LAG_SECONDS serves nobody. Replay paused again and two
            # more events on the primary: a server that allows a second of lag reads the primary once the
            # replica is that far behind; the first, allowing 30 s, still reads the replica.
            replica.execute("SELECT pg_wal_replay_pause()")
            actions_send(writer, "late", 2)
            with (
                app_server({**env, "REPLICA_MAX_LAG_SECONDS": "1"}, tmp_path / "web-strict.log") as strict,
                httpx.Client(
                    base_url=strict, headers={"Authorization": f"Bearer {reader_key}"}
                ) as strict_reader,
            ):
                wait_for(
                    lambda: remaining(strict_reader) == "3", what="the strict server to read the primary"
                )
            assert remaining(reader) == "5"
            # Reconciliation compares what we sent with Stripe, so it reads the replica only once the replica
            # has replayed all the primary had written.
            assert caught_up(env) is False
            replica.execute("SELECT pg_wal_replay_resume()")
            wait_for(lambda: caught_up(env), what="the replica to replay the primary's WAL", timeout=10)
            wait_for(
                lambda: remaining(reader) == "3", what="the replica to replay the late events", timeout=10
            )

            # A replica that is down costs no request an error: once each process has found it unreachable
            # (it asks every LAG_CHECK_SECONDS), the pages and reads come from the primary.
            replica.stop()
            time.sleep(LAG_CHECK_SECONDS + 0.5)
            for _ in range(8):  # every gunicorn worker finds out on its own
                assert remaining(reader) == "3"
            browser.cookies.delete("replica_pin")
            assert page_used(browser) == "17"


def caught_up(env: dict[str, str]) -> bool:
    """``replica_caught_up()`` as a task on the replica's app sees it."""
    printed = manage(
        "shell",
        "-c",
        "from billing_app.db_routers import replica_caught_up; print(replica_caught_up())",
        env=env,
    )
    return printed.strip().splitlines()[-1] == "True"
