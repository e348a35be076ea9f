"""An event's key names one event: sent again with the same content it is a duplicate, with other content
the batch is refused (409) and nothing of it is written."""

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from core.errors import IdempotencyKeyReused
from tests.catalog_fixtures import event
from usage.ingest import usage_events_ingest
from usage.models import PeriodUsage, UsageEvent

pytestmark = pytest.mark.django_db

URL = "/api/v1/events"


@pytest.fixture
def acme(pro_plan, make_customer):
    return make_customer("pro")


def statuses(result) -> list[str]:
    return [r.status for r in result.results]


def test_an_identical_replay_is_a_duplicate_however_its_numbers_are_written(acme):
    first = usage_events_ingest(raw_events=[event("a", quantity=3, properties={"action": "chat", "n": 1})])
    replay = usage_events_ingest(
        raw_events=[event("a", quantity="3.0", properties={"n": 1.0, "action": "chat"})]
    )
    assert statuses(replay) == ["duplicate"]
    assert replay.results[0].id == first.results[0].id


def test_an_event_sent_without_a_timestamp_is_still_a_duplicate_later(acme):
    usage_events_ingest(raw_events=[event("a")])
    with time_machine.travel(timezone.now() + timedelta(minutes=10)):
        assert statuses(usage_events_ingest(raw_events=[event("a")])) == ["duplicate"]


@pytest.mark.parametrize(
    "change",
    [
        {"quantity": 2},
        {"timestamp": "__now__"},
        {"user": "ana"},
        {"properties": {"action": "chat"}},
    ],
    ids=["quantity", "timestamp", "user", "properties"],
)
def test_a_recorded_key_sent_with_other_content_is_refused_and_nothing_written(api, acme, change):
    if change.get("timestamp") == "__now__":
        change = {"timestamp": (timezone.now() + timedelta(minutes=1)).isoformat()}  # the period began now
    api.post(URL, event("a"), format="json")
    before = list(PeriodUsage.objects.values())

    response = api.post(URL, {"events": [event("new"), event("a", **change)]}, format="json")

    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "idempotency_key_reused"
    [problem] = error["events"]
    assert (problem["index"], problem["code"]) == (1, "idempotency_key_reused")
    assert "'a'" in problem["message"]
    assert list(UsageEvent.objects.values_list("idempotency_key", flat=True)) == ["a"]
    assert list(PeriodUsage.objects.values()) == before


def test_a_key_used_twice_in_one_batch_for_different_events_is_refused(acme):
    with pytest.raises(IdempotencyKeyReused) as refused:
        usage_events_ingest(raw_events=[event("a", quantity=1), event("b"), event("a", quantity=2)])
    assert [(p["index"], p["code"]) for p in refused.value.details["events"]] == [
        (2, "idempotency_key_reused")
    ]
    assert not UsageEvent.objects.exists()


def test_the_same_key_for_another_customer_is_another_event(acme, make_customer):
    """Keys are unique per customer: the customer is part of the key, not of what it must match."""
    make_customer("pro", external_id="globex")
    usage_events_ingest(raw_events=[event("a", quantity=1)])
    result = usage_events_ingest(raw_events=[event("a", customer="globex", quantity=5)])
    assert statuses(result) == ["accepted"]


def test_the_fingerprint_of_what_was_sent_is_recorded(acme):
    usage_events_ingest(raw_events=[event("a", quantity=2)])
    assert len(UsageEvent.objects.get().fingerprint) == 64
