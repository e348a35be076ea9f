"""The replica router's rules, without a replica: which alias each read and write is sent to.

Whether a scope may use the replica at all (configured, within ``REPLICA_MAX_LAG_SECONDS``, reachable) is
decided when it opens, against a real replica in ``test_read_replica.py``; here each scope is told it may.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.db import transaction

from billing_app.db_routers import PRIMARY, REPLICA, PrimaryReplicaRouter, ReadScope, replica_reads
from billing_app.models import ApiKey
from customers.models import Customer
from usage.models import UsageEvent

router = PrimaryReplicaRouter()


@contextmanager
def replica_scope() -> Iterator[ReadScope]:
    """A ``replica_reads()`` scope whose replica is healthy."""
    with replica_reads() as scope:
        scope.replica = True
        yield scope


def test_a_scope_without_a_healthy_replica_reads_the_primary() -> None:
    with replica_reads() as scope:  # no DATABASE_REPLICA_URL here
        assert not scope.replica
        assert router.db_for_read(Customer) == PRIMARY


def test_reads_go_to_the_primary_outside_a_replica_scope() -> None:
    assert router.db_for_read(Customer) == PRIMARY


def test_a_replica_scope_reads_the_replica_but_api_keys_and_sessions_from_the_primary() -> None:
    from django.contrib.sessions.models import Session

    with replica_scope():
        assert router.db_for_read(Customer) == REPLICA
        assert router.db_for_read(UsageEvent) == REPLICA
        assert router.db_for_read(ApiKey) == PRIMARY
        assert router.db_for_read(Session) == PRIMARY


def test_after_a_write_the_scope_reads_the_primary() -> None:
    with replica_scope() as scope:
        assert router.db_for_write(ApiKey) == PRIMARY
        assert not scope.wrote  # an API key's bookkeeping is not what the replica serves
        assert router.db_for_read(Customer) == REPLICA
        assert router.db_for_write(Customer) == PRIMARY
        assert scope.wrote
        assert router.db_for_read(Customer) == PRIMARY


@pytest.mark.django_db(transaction=True)
def test_a_read_inside_a_transaction_reads_the_primary() -> None:
    with replica_scope():
        with transaction.atomic():
            assert router.db_for_read(Customer) == PRIMARY
        assert router.db_for_read(Customer) == REPLICA


def test_migrations_run_on_the_primary_only() -> None:
    assert router.allow_migrate(PRIMARY, "usage")
    assert not router.allow_migrate(REPLICA, "usage")
