"""The list endpoints: Stripe's cursor pages over customers, events, credit grants and the credit ledger, and a
reservation by id."""

import re
from datetime import timedelta

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from customers.models import Customer
from tests.catalog_fixtures import event
from usage.models import CreditGrant, CreditLedgerEntry, UsageEvent

pytestmark = pytest.mark.django_db


def _create_customer(api, external_id: str, plan: str | None = "pro") -> None:
    body = {"external_id": external_id, "name": external_id.title()}
    if plan:
        body["plan"] = plan
    response = api.post("/api/v1/customers", body, format="json")
    assert response.status_code == 201, response.json()


@pytest.fixture
def two_customers(api, pro_plan):
    _create_customer(api, "acme")
    _create_customer(api, "globex")


def _send(api, *events) -> None:
    response = api.post("/api/v1/events", {"events": list(events)}, format="json")
    assert response.status_code == 200, response.json()
    assert {result["status"] for result in response.json()["results"]} == {"accepted"}


def _invalid(response, param: str, code: str = "invalid_request") -> None:
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == code
    assert param in error["message"]
    assert error["request_id"]


# --- customers ----------------------------------------------------------------------------------


def test_customers_are_listed_newest_first_a_page_at_a_time(api, pro_plan):
    for external_id in ("c1", "c2", "c3"):
        _create_customer(api, external_id)

    first = api.get("/api/v1/customers", {"limit": 2})
    assert first.status_code == 200
    body = first.json()
    assert (body["object"], body["url"], body["has_more"]) == ("list", "/api/v1/customers", True)
    assert [customer["external_id"] for customer in body["data"]] == ["c3", "c2"]
    assert body["data"][0]["subscription"]["plan"] == "pro"
    assert body["data"][0]["wallet_balance"] == "0.00"

    second = api.get("/api/v1/customers", {"limit": 2, "starting_after": "c2"}).json()
    assert [customer["external_id"] for customer in second["data"]] == ["c1"]
    assert second["has_more"] is False


def test_a_page_after_the_last_row_is_empty(api, pro_plan):
    _create_customer(api, "only")
    page = api.get("/api/v1/customers", {"starting_after": "only"}).json()
    assert (page["data"], page["has_more"]) == ([], False)


def test_the_default_page_is_ten(api, pro_plan):
    for number in range(11):
        _create_customer(api, f"c{number}", plan=None)
    page = api.get("/api/v1/customers").json()
    assert len(page["data"]) == 10
    assert page["has_more"] is True


@pytest.mark.parametrize("limit", ["0", "101", "ten", "-1", "1.5", ""])
def test_a_limit_outside_1_to_100_is_refused(api, pro_plan, limit):
    _invalid(api.get("/api/v1/customers", {"limit": limit}), "limit")


@pytest.mark.parametrize("limit", ["1", "100"])
def test_the_limits_bounds_are_accepted(api, pro_plan, limit):
    _create_customer(api, "acme")
    assert api.get("/api/v1/customers", {"limit": limit}).status_code == 200


def test_a_cursor_naming_no_customer_is_refused(api, pro_plan):
    _create_customer(api, "acme")
    _invalid(api.get("/api/v1/customers", {"starting_after": "nobody"}), "starting_after", "invalid_cursor")
    _invalid(api.get("/api/v1/customers", {"starting_after": "a\x00b"}), "starting_after")


def test_listing_customers_reads_the_same_few_queries_for_any_page(api, pro_plan, make_customer):
    """Subscriptions, limits, wallets and credits are read for the whole page at once: no query per row."""
    for number in range(12):
        make_customer("pro", external_id=f"c{number}")
        CreditGrant.objects.create(
            customer=Customer.objects.get(external_id=f"c{number}"),
            kind="promotional",
            unit="usd",
            amount=5,
            remaining=5,
            effective_at=timezone.now(),
        )

    api.get("/api/v1/customers")  # the key's first use of the minute is recorded once, then not again

    def queries(limit: int) -> int:
        with CaptureQueriesContext(connection) as captured:
            response = api.get("/api/v1/customers", {"limit": limit})
        assert response.status_code == 200
        assert len(response.json()["data"]) == limit
        return len(captured)

    assert queries(12) == queries(2)
    assert api.get("/api/v1/customers", {"limit": 1}).json()["data"][0]["credits_remaining"] == {"usd": "5"}


# --- events -------------------------------------------------------------------------------------


def test_a_customers_events_are_listed_newest_first_and_only_theirs(api, two_customers):
    _send(api, *(event(f"a{n}", quantity=n + 1) for n in range(3)))
    _send(api, event("g1", customer="globex"))

    page = api.get("/api/v1/customers/acme/events", {"limit": 2}).json()
    assert [e["idempotency_key"] for e in page["data"]] == ["a2", "a1"]
    assert page["has_more"] is True
    assert page["url"] == "/api/v1/customers/acme/events"
    assert page["data"][0] == {
        **page["data"][0],
        "customer": "acme",
        "meter": "api_call",
        "quantity": "3",
        "user": None,
        "properties": {},
    }

    rest = api.get("/api/v1/customers/acme/events", {"starting_after": page["data"][1]["id"]}).json()
    assert [e["idempotency_key"] for e in rest["data"]] == ["a0"]
    assert rest["has_more"] is False
    last = api.get("/api/v1/customers/acme/events", {"starting_after": rest["data"][0]["id"]}).json()
    assert (last["data"], last["has_more"]) == ([], False)


def test_another_customers_event_is_no_cursor(api, two_customers):
    _send(api, event("a1"), event("g1", customer="globex"))
    globex_event = UsageEvent.objects.get(idempotency_key="g1")
    response = api.get("/api/v1/customers/acme/events", {"starting_after": globex_event.pk})
    _invalid(response, "starting_after", "invalid_cursor")
    assert "g1" not in response.content.decode()
    _invalid(api.get("/api/v1/customers/acme/events", {"starting_after": "abc"}), "starting_after")
    _invalid(api.get("/api/v1/customers/acme/events", {"starting_after": 2**63}), "starting_after")


def test_events_are_filtered_by_meter_user_and_time(api, two_customers, make_plan):
    make_plan(
        "pro",
        base_fee="20.00",
        prices=[
            {"meter": "api_call", "model": "per_unit", "unit_amount": "0.10", "included": "100"},
            {"meter": "export", "model": "per_unit", "unit_amount": "1"},
        ],
    )
    api.post("/api/v1/customers/acme/subscription", {"plan": "pro"}, format="json")
    now = timezone.now().replace(microsecond=0) + timedelta(hours=3)
    earlier = (now - timedelta(hours=2)).isoformat()
    hour_ago = (now - timedelta(hours=1)).isoformat()
    with time_machine.travel(now, tick=False):
        _send(
            api,
            event("old", user="ann", timestamp=earlier),
            event("call-ann", user="ann"),
            event("call-bob", user="bob"),
            event("export-ann", meter="export", user="ann"),
            event("globex-ann", customer="globex", user="ann"),
        )

    def keys(**query) -> list[str]:
        response = api.get("/api/v1/customers/acme/events", query)
        assert response.status_code == 200, response.json()
        return [e["idempotency_key"] for e in response.json()["data"]]

    assert keys(meter="export") == ["export-ann"]
    assert keys(user="ann") == ["export-ann", "call-ann", "old"]
    assert keys(user="ann", meter="api_call") == ["call-ann", "old"]
    assert keys(to=hour_ago) == ["old"]  # before, not at
    assert keys(**{"from": hour_ago, "user": "ann", "meter": "api_call"}) == ["call-ann"]
    assert keys(**{"from": earlier, "to": earlier}) == []
    assert keys(**{"from": earlier}) == ["export-ann", "call-bob", "call-ann", "old"]
    # What no event of the customer carries matches nothing: an empty page, not an error.
    assert keys(meter="no_such_meter") == []
    assert keys(user="carol") == []


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("from", "yesterday"),
        ("to", "2025-13-45T00:00:00Z"),
        ("from", "2025-03-01T00:00:00"),  # no offset: it would depend on the server's zone
        ("meter", ""),
        ("user", "a\x00b"),
        ("limit", "0"),
    ],
)
def test_a_bad_event_filter_is_refused_naming_it(api, two_customers, param, value):
    _invalid(api.get("/api/v1/customers/acme/events", {param: value}), param)


def test_events_of_an_unknown_customer_are_404(api, two_customers):
    response = api.get("/api/v1/customers/nobody/events")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


# --- reservations -------------------------------------------------------------------------------


def test_a_reservation_is_read_by_its_id(api, two_customers):
    with time_machine.travel(timezone.now(), tick=False):
        created = api.post(
            "/api/v1/reservations",
            {
                "customer": "acme",
                "meter": "api_call",
                "quantity": 150,
                "idempotency_key": "r1",
                "ttl_seconds": 60,
            },
            format="json",
        )
        assert created.status_code == 201, created.json()
        reservation_id = created.json()["id"]
        read = api.get(f"/api/v1/reservations/{reservation_id}")
    assert read.status_code == 200
    assert read.json() == created.json()
    assert read.json()["status"] == "held"
    assert read.json()["quantity"] == "150"
    assert read.json()["held"]["overage"] == "5"  # 50 past the 100 included, at $0.10

    api.post(f"/api/v1/reservations/{reservation_id}/commit", {"quantity": 120}, format="json")
    committed = api.get(f"/api/v1/reservations/{reservation_id}").json()
    assert (committed["status"], committed["committed_quantity"]) == ("committed", "120")


def test_an_unknown_reservation_is_404(api, two_customers):
    response = api.get("/api/v1/reservations/00000000-0000-4000-8000-000000000000")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert api.get("/api/v1/reservations/not-a-uuid").status_code == 404


# --- credits and the ledger ---------------------------------------------------------------------


def test_credit_grants_are_listed_with_what_each_has_left(api, two_customers):
    now = timezone.now()
    with time_machine.travel(now, tick=False):
        api.post("/api/v1/customers/acme/credits", {"amount": "10", "unit": "usd"}, format="json")
        api.post(
            "/api/v1/customers/acme/credits",
            {"amount": "3", "unit": "usd", "expires_at": (now + timedelta(days=1)).isoformat()},
            format="json",
        )
        api.post("/api/v1/customers/globex/credits", {"amount": "99", "unit": "usd"}, format="json")
        # 150 calls: 50 past the allowance at $0.10 = $5, drawn from the grant that expires first.
        _send(api, event("e1", quantity=150))

        grants = api.get("/api/v1/customers/acme/credits").json()
    assert [(g["amount"], g["remaining"], g["ended"]) for g in grants["data"]] == [
        ("3", "0", False),
        ("10", "8", False),
    ]
    assert grants["has_more"] is False

    with time_machine.travel(now + timedelta(days=2), tick=False):
        ten = api.get("/api/v1/customers/acme/credits", {"limit": 1}).json()
        assert ten["has_more"] is True
        after = api.get("/api/v1/customers/acme/credits", {"starting_after": ten["data"][0]["id"]}).json()
    assert [(g["amount"], g["remaining"]) for g in after["data"]] == [("10", "8")]

    globex_grant = CreditGrant.objects.get(customer__external_id="globex")
    _invalid(
        api.get("/api/v1/customers/acme/credits", {"starting_after": globex_grant.pk}),
        "starting_after",
        "invalid_cursor",
    )


def test_a_grant_past_its_expiry_has_nothing_left(api, two_customers):
    now = timezone.now()
    with time_machine.travel(now, tick=False):
        api.post(
            "/api/v1/customers/acme/credits",
            {"amount": "3", "unit": "usd", "expires_at": (now + timedelta(hours=1)).isoformat()},
            format="json",
        )
    with time_machine.travel(now + timedelta(hours=2), tick=False):
        [grant] = api.get("/api/v1/customers/acme/credits").json()["data"]
    assert (grant["remaining"], grant["ended"], grant["expired_at"]) == ("0", True, None)


def test_the_credit_ledger_is_listed_newest_first(api, two_customers):
    api.post("/api/v1/customers/acme/wallet/top-ups", {"amount": "20"}, format="json")
    api.post("/api/v1/customers/acme/credits", {"amount": "2", "unit": "usd"}, format="json")
    api.post("/api/v1/customers/globex/wallet/top-ups", {"amount": "50"}, format="json")
    _send(api, event("e1", quantity=150))  # $5: $2 from the grant, $3 from the wallet

    page = api.get("/api/v1/customers/acme/ledger").json()
    entries = [(e["kind"], e["amount"], e["unit"], e["grant"] is not None) for e in page["data"]]
    assert entries[:2] in (
        [("drawdown", "-3", "usd", False), ("drawdown", "-2", "usd", True)],
        [("drawdown", "-2", "usd", True), ("drawdown", "-3", "usd", False)],
    )
    assert entries[2:] == [("grant", "2", "usd", True), ("topup", "20", "usd", False)]
    assert page["data"][0]["event"] == UsageEvent.objects.get(idempotency_key="e1").pk
    assert [e["id"] for e in page["data"]] == sorted((e["id"] for e in page["data"]), reverse=True)

    first = api.get("/api/v1/customers/acme/ledger", {"limit": 3}).json()
    assert first["has_more"] is True
    rest = api.get("/api/v1/customers/acme/ledger", {"starting_after": first["data"][-1]["id"]}).json()
    assert [e["kind"] for e in rest["data"]] == ["topup"]
    assert rest["has_more"] is False

    globex_entry = CreditLedgerEntry.objects.get(customer__external_id="globex")
    _invalid(
        api.get("/api/v1/customers/acme/ledger", {"starting_after": globex_entry.pk}),
        "starting_after",
        "invalid_cursor",
    )


# --- keys and cost ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/customers",
        "/api/v1/customers/acme/events",
        "/api/v1/customers/acme/credits",
        "/api/v1/customers/acme/ledger",
        "/api/v1/customers/acme/limits",
        "/api/v1/reservations/00000000-0000-4000-8000-000000000000",
    ],
)
def test_a_publishable_key_may_not_list_even_its_own_customer(api, two_customers, path):
    made = api.post("/api/v1/customers/acme/publishable-keys", {}, format="json")
    browser = APIClient()
    browser.credentials(HTTP_AUTHORIZATION=f"Bearer {made.json()['key']}")
    response = browser.get(path)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


@pytest.mark.parametrize(
    ("sql", "index"),
    [
        (
            "SELECT id FROM usage_usageevent WHERE customer_id = 1 AND id < 1000 ORDER BY id DESC LIMIT 11",
            "usage_usage_custome_ec9ac6_idx",
        ),
        (
            "SELECT id FROM usage_usageevent WHERE customer_id = 1 AND meter_id = 1 ORDER BY id DESC LIMIT 11",
            "usage_usage_custome_33bbca_idx",
        ),
        (
            "SELECT id FROM usage_creditledgerentry WHERE customer_id = 1 ORDER BY id DESC LIMIT 11",
            "usage_credi_custome_02d5db_idx",
        ),
    ],
)
def test_a_page_is_read_from_an_index_in_its_order(sql, index):
    """The page's rows come off an index already in their order: no sort of the customer's rows.

    On the partitioned usage ledger each month is read from its own copy of the index, and the months are
    merged in order (a Merge Append, whose ``Sort Key`` is the order kept, not a sort).
    """
    with connection.cursor() as cursor:
        # Whatever the planner would choose on a table this small, a plan without a sort must exist.
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_sort = off")
        cursor.execute(f"EXPLAIN {sql}")
        plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass",
            [index],
        )
        partition_indexes = {name for (name,) in cursor.fetchall()}
    used = set(re.findall(r"Index (?:Only )?Scan (?:Backward )?using (\S+)", plan))
    assert used, plan
    assert used <= {index} | partition_indexes, plan
    assert not re.search(r"(^|->  )Sort  ", plan, re.MULTILINE), plan


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/customers?limt=5",
        "/api/v1/customers/acme/events?meters=api_call",
        "/api/v1/customers/acme/usage?perod=2025-01-01",
        "/api/v1/customers/acme?expand=limits",
        "/api/v1/reservations/00000000-0000-4000-8000-000000000000?x=1",
    ],
)
def test_an_unknown_query_parameter_is_refused_naming_it(api, two_customers, path):
    """A typo would otherwise be ignored, and the answer would not be what the client asked for."""
    response = api.get(path)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["param"] == path.split("?")[1].split("=")[0]
