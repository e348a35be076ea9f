"""The hot statements of ``core.sql_rows`` are prepared once per connection; the ORM's queries never are."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from core.sql_rows import selects_run, writes_run
from customers.models import Customer

pytestmark = pytest.mark.django_db

LOOKUP = "SELECT c.external_id FROM customers_customer c WHERE c.external_id = %s"
COUNT = "SELECT count(*) FROM customers_customer c WHERE c.name <> %s"


def prepared_statements() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [row[0] for row in cursor.fetchall()]


def test_statements_run_together_are_each_prepared_once_and_answer_in_order(settings):
    settings.DATABASE_PREPARED_STATEMENTS = True
    Customer.objects.create(external_id="acme", name="Acme")
    before = prepared_statements()

    for _ in range(3):
        lookup, count = selects_run([(LOOKUP, ["acme"]), (COUNT, ["nobody"])])
        assert (lookup, count) == ([("acme",)], [(1,)])

    added = [sql for sql in prepared_statements() if sql not in before]
    assert sorted(added) == sorted([LOOKUP.replace("%s", "$1"), COUNT.replace("%s", "$1")]), (
        "each statement prepared exactly once"
    )
    # The ORM's query above (and Django's own) are bound client-side, never prepared.
    assert not [sql for sql in added if "INSERT" in sql]


def test_nothing_is_prepared_when_turned_off(settings):
    settings.DATABASE_PREPARED_STATEMENTS = False
    before = prepared_statements()
    assert selects_run([(LOOKUP, ["nobody"]), (COUNT, ["nobody"])]) == [[], [(0,)]]
    assert prepared_statements() == before


def test_writes_run_in_order_in_one_round_trip(settings):
    settings.DATABASE_PREPARED_STATEMENTS = True
    customer = Customer.objects.create(external_id="acme", name="Acme")
    rename = "UPDATE customers_customer SET name = %s WHERE id = %s"

    with CaptureQueriesContext(connection) as queries:
        writes_run([(rename, ["first", customer.pk]), (rename, ["second", customer.pk])])

    assert len(queries) == 1
    customer.refresh_from_db()
    assert customer.name == "second"
    assert rename.replace("%s", "$1", 1).replace("%s", "$2") in prepared_statements()
