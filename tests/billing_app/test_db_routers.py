"""The replica router's rules, without a replica: which alias each read and write is sent to."""

import pytest
from django.db import transaction

from billing_app.db_routers import PRIMARY, REPLICA, PrimaryReplicaRouter, replica_reads
from billing_app.models import ApiKey
from customers.models import Customer
from usage.models import UsageEvent

router = PrimaryReplicaRouter()


def test_reads_go_to_the_primary_outside_a_replica_scope() -> None:
    assert router.db_for_read(Customer) == PRIMARY


def test_a_replica_scope_reads_the_replica_but_api_keys_and_sessions_from_the_primary() -> None:
    from django.contrib.sessions.models import Session

    with replica_reads():
        assert router.db_for_read(Customer) == REPLICA
        assert router.db_for_read(UsageEvent) == REPLICA
        assert router.db_for_read(ApiKey) == PRIMARY
        assert router.db_for_read(Session) == PRIMARY


def test_after_a_write_the_scope_reads_the_primary() -> None:
    with replica_reads() as scope:
        assert router.db_for_write(ApiKey) == PRIMARY
        assert not scope.wrote  # an API key's bookkeeping is not what the replica serves
        assert router.db_for_read(Customer) == REPLICA
        assert router.db_for_write(Customer) == PRIMARY
        assert scope.wrote
        assert router.db_for_read(Customer) == PRIMARY


@pytest.mark.django_db(transaction=True)
def test_a_read_inside_a_transaction_reads_the_primary() -> None:
    with replica_reads():
        with transaction.atomic():
            assert router.db_for_read(Customer) == PRIMARY
        assert router.db_for_read(Customer) == REPLICA


def test_migrations_run_on_the_primary_only() -> None:
    assert router.allow_migrate(PRIMARY, "usage")
    assert not router.allow_migrate(REPLICA, "usage")
