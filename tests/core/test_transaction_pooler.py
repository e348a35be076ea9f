"""The app behind PgBouncer in transaction mode (``DATABASE_POOLER=transaction``).

A pooler in transaction mode hands each transaction whichever server connection is free, so whatever a
connection keeps between transactions (a prepared statement, a server-side cursor, a session advisory lock,
a SET) may be gone, or someone else's, on the next one. The first test runs the suite's money paths (ingest,
concurrent reservations and ingest, idempotent replays, ``ledger_check``, the usage page) as a second pytest
whose only database connection is a PgBouncer of its own; the others show what the setting changes.
"""

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from django.db import connection
from psycopg import sql

from tests.servers import ROOT, pgbouncer_binary, pgbouncer_running

pytestmark = pytest.mark.skipif(pgbouncer_binary() is None, reason="pgbouncer is not installed")

# Chosen for what a pooler could break: prepared hot reads and the pipelined lock round trip (ingest,
# reservations), threads racing for one customer's lock (concurrency), transaction-level advisory locks
# (idempotency), a read that iterates (ledger_check) and the pages.
POOLED_TESTS = [
    "tests/usage/test_ingest.py",
    "tests/usage/test_concurrency.py",
    "tests/usage/test_reservations.py",
    "tests/usage/test_ledger_audit.py",
    "tests/usage/test_api_events.py",
    "tests/usage/test_views.py",
    "tests/billing_app/test_idempotency.py",
    "tests/core/test_transaction_pooler.py::test_iterating_a_queryset_works_behind_the_pooler",
]


def server_address() -> tuple[str, int]:
    settings = connection.settings_dict
    return settings["HOST"] or "127.0.0.1", int(settings["PORT"] or 5432)


@pytest.mark.django_db
def test_the_money_paths_pass_through_pgbouncer_in_transaction_mode(tmp_path: Path) -> None:
    host, port = server_address()
    # The child's pytest-django adds "test_" to the name it is given and reuses that database if it exists.
    child_name = f"{connection.settings_dict['NAME']}_pooled"
    test_database = f"test_{child_name}"
    server = f"postgres://postgres@{host}:{port}/postgres"

    def database_drop() -> None:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(test_database))
            )

    database_drop()
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(test_database)))
    try:
        with pgbouncer_running(tmp_path / "pgbouncer", server_host=host, server_port=port) as bouncer:
            env = {name: value for name, value in os.environ.items() if not name.startswith("PYTEST_XDIST")}
            env.update(DATABASE_URL=bouncer.url(child_name), DATABASE_POOLER="transaction")
            command = [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:randomly",
                "-p",
                "no:xdist",
                "--reuse-db",
            ]
            child = subprocess.run(
                [*command, *POOLED_TESTS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
            )
            assert child.returncode == 0, child.stdout[-6000:] + child.stderr[-3000:]
            stats = bouncer.stats(test_database)
        assert " passed" in child.stdout and " failed" not in child.stdout, child.stdout[-2000:]
        # Every query went through the pooler: PgBouncer counted them on the test database.
        assert stats["total_xact_count"] > 1000, stats
    finally:
        database_drop()


@pytest.mark.django_db
def test_iterating_a_queryset_works_behind_the_pooler() -> None:
    """Outside a transaction Django's ``.iterator()`` would open a server-side cursor WITH HOLD on one server
    connection and fetch from it on another; behind the pooler it reads client-side."""
    from customers.models import Customer
    from tests.usage.factories import CustomerFactory

    CustomerFactory.create_batch(3)
    assert len(list(Customer.objects.order_by("pk").iterator(chunk_size=1))) >= 3


def test_the_pooler_setting_turns_off_what_a_transaction_pooler_cannot_keep() -> None:
    code = (
        "from django.conf import settings; "
        "print(settings.DATABASES['default']['DISABLE_SERVER_SIDE_CURSORS'], "
        "settings.DATABASE_PREPARED_STATEMENTS, settings.DATABASES['default']['OPTIONS']['prepare_threshold'])"
    )

    def settings_with(**values: str) -> str:
        unset = ("DATABASE_POOLER", "DATABASE_PREPARED_STATEMENTS")
        env = {name: value for name, value in os.environ.items() if name not in unset}
        env.update(DJANGO_SETTINGS_MODULE="tests.settings", **values)
        run = subprocess.run(
            [sys.executable, "-c", f"import django; django.setup(); {code}"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return run.stdout.strip()

    assert settings_with() == "False True 1"
    assert settings_with(DATABASE_POOLER="transaction") == "True False None"
    # PgBouncer 1.21+ with max_prepared_statements keeps prepared statements per client: the operator says so.
    assert settings_with(DATABASE_POOLER="transaction", DATABASE_PREPARED_STATEMENTS="true") == "True True 1"
    refused = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "DATABASE_POOLER": "session"},
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0 and "DATABASE_POOLER must be" in refused.stderr
