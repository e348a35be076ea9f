"""Catalog writes: creating, copying, publishing and guarding plan versions; meters."""

from decimal import Decimal

import pytest

from core.errors import InvalidInput
from plans.catalog import CatalogInvalid, content_hash, version_content
from plans.errors import PlanVersionInUse
from plans.models import (
    Aggregation,
    ChangeEffect,
    Meter,
    PlanVersion,
    PriceModel,
    PricingChangelogEntry,
    PricingUnit,
    VersionStatus,
)
from plans.services import (
    PlanVersionNotDraft,
    PlanVersionNotPublished,
    meter_upsert,
    plan_version_assert_editable,
    plan_version_create,
    plan_version_draft_from,
    plan_version_publish,
    plan_version_retire,
)
from tests.customers.factories import SubscriptionFactory
from tests.plans.factories import MeterFactory, PlanFactory, PlanVersionFactory, PriceFactory

pytestmark = pytest.mark.django_db

D = Decimal
TOKENS = {
    "meter": "llm_tokens",
    "model": "dimensional",
    "dimension": "model",
    "rates": {"gpt-4o": "0.00001", "gpt-4o-mini": "0.0000006"},
    "default_rate": None,
}
ACTIONS = {
    "meter": "ai_action",
    "model": "graduated",
    "tiers": [{"up_to": "1000", "unit_amount": "0"}, {"up_to": None, "unit_amount": "0.02"}],
}


@pytest.fixture
def meters():
    return [MeterFactory(key=key) for key in ("ai_action", "llm_tokens", "workflow_run")]


@pytest.fixture
def pro(meters):
    return PlanFactory(code="pro", name="Pro")


def draft(plan, *, base_fee="20.00", prices=(ACTIONS, TOKENS), **kwargs):
    return plan_version_create(
        plan=plan,
        currency="usd",
        interval="month",
        base_fee=base_fee,
        prices=prices,
        entitlements=kwargs.pop("entitlements", [{"feature": "premium_models", "enabled": True}]),
        credit_packs=kwargs.pop("credit_packs", []),
        **kwargs,
    )


# --- Creating and copying ---


def test_create_builds_a_draft_with_every_row_from_plain_dicts(pro):
    version = plan_version_create(
        plan=pro,
        currency="USD",
        interval="month",
        base_fee=D("20"),
        prices=[
            ACTIONS,
            TOKENS,
            {
                "meter": "workflow_run",
                "model": "per_unit",
                "unit": "credits",
                "unit_amount": "5",
                "included": "10",
            },
        ],
        entitlements=[{"feature": "ai_action", "limit": "5000"}, {"feature": "sso", "enabled": False}],
        credit_packs=[{"price": "250.00", "credits": "50000"}],
        changelog_note="Launch.",
    )

    assert (version.number, version.status, version.currency) == (1, VersionStatus.DRAFT, "usd")
    assert version.changelog_note == "Launch."
    actions = version.prices.get(meter__key="ai_action")
    assert actions.model == PriceModel.GRADUATED
    assert [(t.position, t.up_to, t.unit_amount) for t in actions.tiers.all()] == [
        (1, D(1000), D(0)),
        (2, None, D("0.02")),
    ]
    tokens = version.prices.get(meter__key="llm_tokens")
    assert (tokens.dimension, tokens.default_rate) == ("model", None)
    assert {r.value: r.unit_amount for r in tokens.dimension_rates.all()} == {
        "gpt-4o": D("0.00001"),
        "gpt-4o-mini": D("0.0000006"),
    }
    runs = version.prices.get(meter__key="workflow_run")
    assert (runs.pricing_unit, runs.unit_amount, runs.included_quantity) == (PricingUnit.CREDITS, 5, 10)
    assert {(e.feature, e.enabled, e.limit) for e in version.entitlements.all()} == {
        ("ai_action", True, D(5000)),
        ("sso", False, None),
    }
    assert [(p.amount, p.credits) for p in version.credit_packs.all()] == [(D(250), D(50000))]


def test_create_numbers_versions_after_the_plans_last_one(pro):
    assert [draft(pro).number for _ in range(3)] == [1, 2, 3]


def test_create_reports_every_problem_at_once_and_writes_nothing(pro):
    bad_tiers = {**ACTIONS, "tiers": [{"up_to": "1000"}, {"up_to": "500"}, {"up_to": None}]}
    unknown = {"meter": "nope", "model": "per_unit", "unit_amount": "1"}

    with pytest.raises(CatalogInvalid) as raised:
        draft(pro, prices=[bad_tiers, TOKENS, unknown])

    assert raised.value.code == "catalog_invalid"
    assert raised.value.errors == [
        'plan "pro", prices[0] (ai_action): Tier 2: the upper bound 500 must be greater than the previous '
        "one, 1000.",
        "plan \"pro\", prices[2] (nope): unknown meter 'nope'; add it to 'meters' or create it first.",
    ]
    assert not PlanVersion.objects.exists()


def test_draft_from_copies_the_pricing_into_a_new_draft(pro):
    original = plan_version_publish(plan_version=draft(pro, credit_packs=[{"price": "50", "credits": "1e4"}]))

    copy = plan_version_draft_from(plan_version=original)

    assert (copy.plan, copy.number, copy.status) == (pro, 2, VersionStatus.DRAFT)
    assert version_content(copy) == version_content(original)
    assert original.prices.count() == copy.prices.count() == 2


# --- Publishing ---


def test_publishing_the_first_version_writes_a_new_plan_changelog_entry(pro):
    version = plan_version_publish(plan_version=draft(pro))

    assert version.status == VersionStatus.PUBLISHED
    assert version.published_at is not None
    entry = PricingChangelogEntry.objects.get(plan_version=version)
    assert (entry.plan, entry.effect, entry.published_at) == (
        pro,
        ChangeEffect.NEW_PLAN,
        version.published_at,
    )
    assert entry.summary == "New plan: $20.00 per month; prices for ai_action, llm_tokens."


def test_publishing_a_later_version_grandfathers_and_summarises_the_changes(pro):
    first = plan_version_publish(plan_version=draft(pro))
    cheaper_actions = {
        **ACTIONS,
        "tiers": [{"up_to": "2000", "unit_amount": "0"}, {"up_to": None, "unit_amount": "0.02"}],
    }
    second = draft(
        pro,
        base_fee="25",
        prices=[cheaper_actions, {"meter": "workflow_run", "model": "per_unit", "unit_amount": "0.10"}],
        changelog_note="Twice the free AI actions.",
    )

    plan_version_publish(plan_version=second)

    entry = second.changelog_entry
    assert entry.effect == ChangeEffect.GRANDFATHERED
    assert entry.summary.splitlines() == [
        "Twice the free AI actions.",
        "Base fee: $20.00 → $25.00 per month.",
        "Changed price for ai_action: graduated tiers in USD: up to 1000 at 0, above at 0.02 → "
        "graduated tiers in USD: up to 2000 at 0, above at 0.02.",
        "Removed price for llm_tokens.",
        "Added price for workflow_run: 0.1 USD per unit.",
    ]
    first.refresh_from_db()
    assert first.status == VersionStatus.PUBLISHED  # kept for its subscribers; retired by hand


def test_publish_takes_an_explicit_summary_and_effect(pro):
    plan_version_publish(plan_version=draft(pro))
    version = plan_version_publish(
        plan_version=draft(pro), summary="Everyone moves at renewal.", effect=ChangeEffect.MIGRATED_AT_RENEWAL
    )
    assert (version.changelog_entry.summary, version.changelog_entry.effect) == (
        "Everyone moves at renewal.",
        ChangeEffect.MIGRATED_AT_RENEWAL,
    )


def test_publishing_an_unchanged_copy_says_so(pro):
    first = plan_version_publish(plan_version=draft(pro))
    copy = plan_version_publish(plan_version=plan_version_draft_from(plan_version=first))
    assert copy.changelog_entry.summary == "No pricing change."


def test_publish_refuses_a_version_the_rating_engine_rejects(pro):
    version = PlanVersionFactory(plan=pro, draft=True, base_fee=D(5))
    PriceFactory(
        plan_version=version,
        meter=Meter.objects.get(key="ai_action"),
        model=PriceModel.GRADUATED,
        unit_amount=None,
    )
    PriceFactory(plan_version=version, meter=Meter.objects.get(key="llm_tokens"), unit_amount=None)

    with pytest.raises(InvalidInput) as raised:
        plan_version_publish(plan_version=version)

    assert raised.value.code == "invalid_request"
    assert raised.value.details["errors"] == [
        "ai_action: A graduated price needs at least one tier.",
        "llm_tokens: A per-unit price needs a unit amount.",
    ]
    assert raised.value.message.startswith("v1 of Pro cannot be published:\n- ai_action: ")
    version.refresh_from_db()
    assert version.status == VersionStatus.DRAFT
    assert not PricingChangelogEntry.objects.exists()


def test_publishing_twice_is_refused(pro):
    version = plan_version_publish(plan_version=draft(pro))
    with pytest.raises(PlanVersionNotDraft, match="v1 of Pro is already published"):
        plan_version_publish(plan_version=version)
    assert PricingChangelogEntry.objects.count() == 1


def test_retire_stops_offering_a_published_version(pro):
    version = plan_version_publish(plan_version=draft(pro))
    assert plan_version_retire(plan_version=version).status == VersionStatus.RETIRED
    with pytest.raises(PlanVersionNotPublished):
        plan_version_retire(plan_version=version)


# --- The content hash ---


def test_the_content_hash_ignores_how_decimals_and_lists_were_written(pro):
    one = draft(pro, base_fee="20", prices=[ACTIONS, TOKENS])
    reordered_tokens = {**TOKENS, "rates": {"gpt-4o-mini": "0.00000060", "gpt-4o": "0.000010"}}
    two = draft(pro, base_fee="20.0000", prices=[reordered_tokens, ACTIONS])

    assert content_hash(version_content(one)) == content_hash(version_content(two))
    published = plan_version_publish(plan_version=one)
    assert published.content_hash == content_hash(version_content(two))
    assert len(published.content_hash) == 64


def test_the_content_hash_changes_with_any_price(pro):
    base = content_hash(version_content(draft(pro)))
    dearer_tokens = {**TOKENS, "rates": {"gpt-4o": "0.000011", "gpt-4o-mini": "0.0000006"}}
    assert content_hash(version_content(draft(pro, prices=[ACTIONS, dearer_tokens]))) != base
    assert content_hash(version_content(draft(pro, base_fee="21"))) != base
    assert content_hash(version_content(draft(pro, entitlements=[]))) != base


# --- What may be edited ---


def test_a_version_in_use_cannot_be_edited(pro):
    version = plan_version_publish(plan_version=draft(pro))
    SubscriptionFactory.create_batch(2, plan_version=version)

    with pytest.raises(PlanVersionInUse) as raised:
        plan_version_assert_editable(plan_version=version)

    assert raised.value.code == "plan_version_in_use"
    assert raised.value.http_status == 409
    assert raised.value.message == "v1 of Pro is used by 2 subscriptions; publish a new version instead."


def test_a_version_waiting_for_a_migration_counts_as_in_use(pro):
    version = draft(pro)
    SubscriptionFactory(pending_plan_version=version)
    with pytest.raises(PlanVersionInUse, match="used by 1 subscription;"):
        plan_version_assert_editable(plan_version=version)


def test_a_published_version_nobody_uses_is_still_read_only(pro):
    version = plan_version_publish(plan_version=draft(pro))
    with pytest.raises(PlanVersionNotDraft) as raised:
        plan_version_assert_editable(plan_version=version)
    assert raised.value.code == "plan_version_not_draft"
    assert "v1 of Pro is published, so it is read-only" in raised.value.message


def test_an_unused_draft_is_editable(pro):
    plan_version_assert_editable(plan_version=draft(pro))


# --- Meters ---


def test_meter_upsert_creates_then_updates():
    created = meter_upsert(key="api_call", name="API calls", unit="call", aggregation=Aggregation.SUM)
    updated = meter_upsert(key="api_call", name="Requests", unit="request", aggregation=Aggregation.COUNT)
    assert created.pk == updated.pk
    meter = Meter.objects.get()
    assert (meter.name, meter.unit, meter.aggregation) == ("Requests", "request", "count")


def test_meter_upsert_refuses_what_the_admin_form_would():
    with pytest.raises(InvalidInput, match="'max' meters are not billed yet"):
        meter_upsert(key="seats", name="Seats", unit="seat", aggregation=Aggregation.MAX)
    with pytest.raises(InvalidInput, match="Meter 'bad key'"):
        meter_upsert(key="bad key", name="Bad", unit="x", aggregation=Aggregation.SUM)
    assert not Meter.objects.exists()
