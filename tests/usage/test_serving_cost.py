"""What serving usage costs us: the dated cost catalog, the per-event override, and rollups that sum it."""

import re
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import time_machine
from django.db.models import Sum

from plans.catalog import CatalogInvalid
from plans.catalog.importing import catalog_import
from plans.models import Meter, MeterServingCost
from plans.services import SERVING_COST_SINCE_ALWAYS
from tests.catalog_fixtures import event
from usage.errors import InvalidBatch, InvalidCost
from usage.ingest import usage_events_ingest
from usage.ledger_audit import ledger_mismatches
from usage.models import DailyUsageRollup, PeriodUsage, UsageEvent
from usage.services import reservation_commit, reservation_create

pytestmark = pytest.mark.django_db

START = datetime(2025, 3, 1, tzinfo=UTC)
TOKENS = {"key": "llm_tokens", "name": "LLM tokens", "unit": "token"}


def tokens_cost(**cost: object) -> dict[str, object]:
    return {"meters": [{**TOKENS, "cost": cost}]}


@pytest.fixture
def llm(make_plan, make_customer):
    """Tokens at $0.00001 whatever the model; they cost us $0.000004 (gpt-4o), $0.0000002 (mini), else
    $0.000001, from the start; gpt-4o is cut to $0.000002 on 5 March."""
    with time_machine.travel(START, tick=False):
        make_plan("tokens", prices=[{"meter": "llm_tokens", "model": "per_unit", "unit_amount": "0.00001"}])
        catalog_import(
            data=tokens_cost(
                unit_amount="0.000001", dimension="model", rates={"gpt-4o": "0.000004", "mini": "0.0000002"}
            )
        )
        catalog_import(
            data=tokens_cost(dimension="model", rates={"gpt-4o": "0.000002"}, effective_from="2025-03-05")
        )
        return make_customer("tokens")


def tokens(key: str, quantity: int, day: int, **properties: object) -> dict[str, object]:
    return event(
        key,
        meter="llm_tokens",
        quantity=quantity,
        timestamp=f"2025-03-{day:02d}T12:00:00Z",
        properties=properties,
    )


def cost_of(key: str) -> Decimal:
    return UsageEvent.objects.get(idempotency_key=key).serving_cost


def test_the_catalog_writes_dated_rows_and_importing_it_again_changes_nothing(llm):
    rows = list(
        MeterServingCost.objects.values_list("dimension_value", "unit_amount", "effective_from", "currency")
    )
    assert sorted(rows) == [
        ("", Decimal("0.000001"), SERVING_COST_SINCE_ALWAYS, "usd"),
        ("gpt-4o", Decimal("0.000002"), datetime(2025, 3, 5, tzinfo=UTC), "usd"),
        ("gpt-4o", Decimal("0.000004"), SERVING_COST_SINCE_ALWAYS, "usd"),
        ("mini", Decimal("0.0000002"), SERVING_COST_SINCE_ALWAYS, "usd"),
    ]
    assert Meter.objects.get(key="llm_tokens").serving_cost_dimension == "model"

    again = catalog_import(
        data=tokens_cost(dimension="model", rates={"gpt-4o": "0.000002"}, effective_from="2025-03-05")
    )

    assert not again.changed
    assert again.lines == ("meter llm_tokens: unchanged",)
    assert MeterServingCost.objects.count() == 4


def test_a_different_rate_on_a_date_already_priced_is_refused_and_nothing_is_written(llm):
    with pytest.raises(
        CatalogInvalid, match=re.escape("gpt-4o rate from 2025-03-05 00:00 is already 0.000002")
    ):
        catalog_import(
            data=tokens_cost(
                unit_amount="0.5",
                dimension="model",
                rates={"gpt-4o": "0.000003"},
                effective_from="2025-03-05",
            )
        )

    assert MeterServingCost.objects.count() == 4


def test_a_rate_changed_without_a_date_applies_from_the_import(llm):
    with time_machine.travel(datetime(2025, 3, 8, tzinfo=UTC), tick=False):
        report = catalog_import(data=tokens_cost(unit_amount="0.0000015", dimension="model", rates={}))

    assert report.lines == ("meter llm_tokens: cost default 0.0000015 from 2025-03-08",)
    latest = MeterServingCost.objects.filter(dimension_value="").latest("effective_from")
    assert latest.effective_from == datetime(2025, 3, 8, tzinfo=UTC)


def test_each_event_costs_the_rate_in_force_at_its_timestamp_for_its_model(llm):
    with time_machine.travel(datetime(2025, 3, 10, tzinfo=UTC), tick=False):
        usage_events_ingest(
            raw_events=[
                tokens("before-cut", 1000, 4, model="gpt-4o"),
                tokens("after-cut", 1000, 6, model="gpt-4o"),
                tokens("mini", 1000, 6, model="mini"),
                tokens("unknown-model", 1000, 6, model="llama"),
                tokens("no-model", 1000, 6),
            ]
        )

    assert cost_of("before-cut") == Decimal("0.004")  # 1,000 × 0.000004: old usage keeps the old cost
    assert cost_of("after-cut") == Decimal("0.002")  # 1,000 × 0.000002 after the price cut
    assert cost_of("mini") == Decimal("0.0002")
    assert cost_of("unknown-model") == Decimal("0.001")  # the meter's default rate
    assert cost_of("no-model") == Decimal("0.001")


def test_an_event_carrying_its_actual_cost_overrides_the_catalog(llm):
    with time_machine.travel(datetime(2025, 3, 10, tzinfo=UTC), tick=False):
        usage_events_ingest(
            raw_events=[
                tokens("priced", 1000, 6, model="gpt-4o", cost="0.0123"),
                tokens("free", 1000, 6, model="gpt-4o", cost=0),
            ]
        )

    assert cost_of("priced") == Decimal("0.0123")
    assert cost_of("free") == Decimal(0)


@pytest.mark.parametrize(
    ("cost", "message"),
    [
        ("-1", "properties.cost must be a finite number >= 0"),
        ("abc", "properties.cost 'abc' is not a decimal number"),
        (True, "properties.cost must be a number or a decimal string"),
        ("0.0000000000001", "properties.cost has more than 12 decimal places"),
        ("NaN", "properties.cost must be a finite number >= 0"),
    ],
)
def test_a_bad_actual_cost_refuses_the_batch_with_its_code_and_writes_nothing(llm, cost, message):
    with (
        time_machine.travel(datetime(2025, 3, 10, tzinfo=UTC), tick=False),
        pytest.raises(InvalidBatch) as refused,
    ):
        usage_events_ingest(
            raw_events=[
                tokens("fine", 10, 6, model="mini"),
                tokens("bad", 10, 6, model="mini", cost=cost),
            ]
        )

    [problem] = refused.value.details["events"]
    assert problem["index"] == 1
    assert problem["code"] == "invalid_cost"
    assert problem["message"].startswith(message)
    assert not UsageEvent.objects.exists()


def test_the_api_answers_a_bad_actual_cost_with_a_400_naming_it(api, llm):
    response = api.post(
        "/api/v1/events",
        tokens("bad", 10, 6, model="mini", cost="-0.5") | {"timestamp": None},
        format="json",
    )

    assert response.status_code == 400
    body = response.json()["error"]
    assert body["code"] == "invalid_batch"
    assert body["events"][0]["code"] == "invalid_cost"
    assert not UsageEvent.objects.exists()


def test_cache_hits_are_free_to_the_customer_but_their_serving_cost_counts(llm):
    with time_machine.travel(datetime(2025, 3, 10, tzinfo=UTC), tick=False):
        usage_events_ingest(raw_events=[tokens("hit", 1000, 6, model="mini", cached=True)])

    hit = UsageEvent.objects.get(idempotency_key="hit")
    assert (hit.billable, hit.cost, hit.serving_cost) == (False, Decimal(0), Decimal("0.0002"))
    assert PeriodUsage.objects.get().serving_cost == Decimal("0.0002")
    assert DailyUsageRollup.objects.get().serving_cost == Decimal("0.0002")


def test_period_totals_and_rollups_sum_exactly_what_the_events_cost(llm):
    with time_machine.travel(datetime(2025, 3, 10, tzinfo=UTC), tick=False):
        usage_events_ingest(
            raw_events=[
                tokens(
                    f"e{n}", 997 + n, 2 + n % 7, model=["gpt-4o", "mini", "llama"][n % 3], user=f"u{n % 2}"
                )
                | ({"properties": {"model": "mini", "cost": "0.000000000007"}} if n % 5 == 0 else {})
                for n in range(40)
            ]
        )
        usage_events_ingest(raw_events=[tokens("late", 3, 9, model="gpt-4o", cached=True)])

    events_sum = UsageEvent.objects.aggregate(total=Sum("serving_cost"))["total"]
    assert events_sum > 0
    assert PeriodUsage.objects.aggregate(total=Sum("serving_cost"))["total"] == events_sum
    assert DailyUsageRollup.objects.aggregate(total=Sum("serving_cost"))["total"] == events_sum
    assert DailyUsageRollup.objects.count() > 5
    assert ledger_mismatches() == []


def test_the_ledger_check_reports_a_rollup_whose_serving_cost_differs_from_its_events(llm):
    with time_machine.travel(datetime(2025, 3, 10, tzinfo=UTC), tick=False):
        usage_events_ingest(raw_events=[tokens("a", 1000, 6, model="mini")])
    DailyUsageRollup.objects.update(serving_cost=Decimal("1"))
    PeriodUsage.objects.update(serving_cost=Decimal("2"))

    found = [str(mismatch) for mismatch in ledger_mismatches()]

    assert any("rollup serving_cost: rollup has 1" in text for text in found)
    assert any(
        text.endswith("serving cost: cached 2.000000000000, rows sum to 0.000200000000") for text in found
    )


def test_a_reservation_commit_records_the_cost_of_what_was_used(llm):
    with time_machine.travel(datetime(2025, 3, 10, tzinfo=UTC), tick=False):
        customer = llm
        meter = Meter.objects.get(key="llm_tokens")
        hold, _ = reservation_create(
            customer=customer,
            meter=meter,
            quantity=Decimal(2000),
            idempotency_key="r1",
            properties={"model": "gpt-4o"},
        )
        _, used = reservation_commit(reservation_id=hold.pk, quantity=Decimal(1500))

    assert used.serving_cost == Decimal("0.003")  # 1,500 × 0.000002, the rate at the commit
    assert PeriodUsage.objects.get().serving_cost == Decimal("0.003")
    assert ledger_mismatches() == []


def test_a_reservation_with_a_bad_actual_cost_is_refused_before_anything_is_held(llm):
    with (
        time_machine.travel(datetime(2025, 3, 10, tzinfo=UTC), tick=False),
        pytest.raises(InvalidCost, match=re.escape("properties.cost must be a finite number >= 0")),
    ):
        reservation_create(
            customer=llm,
            meter=Meter.objects.get(key="llm_tokens"),
            quantity=Decimal(10),
            idempotency_key="r1",
            properties={"cost": "-2"},
        )
