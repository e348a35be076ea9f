"""The catalog admin, driven as a superuser: pages render, prices are checked, published versions are locked."""

from decimal import Decimal

import pytest
from django.urls import reverse

from plans.catalog import catalog_decode, catalog_parse, content_hash
from plans.models import (
    ChangeEffect,
    Meter,
    Plan,
    PlanVersion,
    Price,
    PriceModel,
    PricingChangelogEntry,
    VersionStatus,
)
from plans.services import plan_version_publish
from tests.customers.factories import SubscriptionFactory
from tests.plans.factories import (
    CreditPackFactory,
    DimensionRateFactory,
    EntitlementFactory,
    MeterFactory,
    PlanVersionFactory,
    PriceFactory,
    PriceTierFactory,
)
from tests.plans.test_catalog import DEMO

pytestmark = pytest.mark.django_db

MODELS = ["meter", "plan", "planversion", "price", "pricingchangelogentry"]


def url(name, *args):
    return reverse(f"admin:plans_{name}", args=args)


def inline(prefix, rows, *, initial=0):
    """POST data for an inline formset: the management form, then each row's fields."""
    data = {
        f"{prefix}-TOTAL_FORMS": str(len(rows)),
        f"{prefix}-INITIAL_FORMS": str(initial),
        f"{prefix}-MIN_NUM_FORMS": "0",
        f"{prefix}-MAX_NUM_FORMS": "1000",
    }
    for index, row in enumerate(rows):
        data |= {f"{prefix}-{index}-{key}": "" if value is None else value for key, value in row.items()}
    return data


def no_inlines(*prefixes):
    data = {}
    for prefix in prefixes:
        data |= inline(prefix, [])
    return data


def price_data(version, meter, **fields):
    return {
        "plan_version": version.pk,
        "meter": meter.pk,
        "model": "per_unit",
        "pricing_unit": "currency",
    } | {
        "included_quantity": "0",
        **fields,
    }


@pytest.fixture
def catalog():
    """One row of every catalog model, on a published version."""
    price = PriceFactory(model=PriceModel.GRADUATED, unit_amount=None)
    PriceTierFactory(price=price, up_to=Decimal(100), unit_amount=Decimal(0))
    PriceTierFactory(price=price)
    DimensionRateFactory()
    CreditPackFactory(plan_version=price.plan_version)
    EntitlementFactory(plan_version=price.plan_version)
    return price


@pytest.mark.parametrize("model", MODELS)
def test_every_changelist_renders(admin_client, catalog, model):
    assert admin_client.get(url(f"{model}_changelist")).status_code == 200


@pytest.mark.parametrize("model", ["meter", "plan", "planversion", "price"])
def test_every_add_page_renders(admin_client, model):
    assert admin_client.get(url(f"{model}_add")).status_code == 200


def test_every_change_page_renders(admin_client, catalog):
    version = catalog.plan_version
    PricingChangelogEntry.objects.create(
        plan=version.plan,
        plan_version=version,
        published_at=version.published_at,
        summary="x",
        effect="new_plan",
    )
    for model, obj in [
        ("meter", catalog.meter),
        ("plan", version.plan),
        ("planversion", version),
        ("price", catalog),
        ("pricingchangelogentry", version.changelog_entry),
    ]:
        assert admin_client.get(url(f"{model}_change", obj.pk)).status_code == 200, model
    draft = PlanVersionFactory(draft=True)
    draft_price = PriceFactory(plan_version=draft)
    assert admin_client.get(url("planversion_change", draft.pk)).status_code == 200
    assert admin_client.get(url("price_change", draft_price.pk)).status_code == 200


# --- Checking prices ---


def test_a_price_with_descending_tiers_is_refused_with_the_engines_message(admin_client):
    version, meter = PlanVersionFactory(draft=True), MeterFactory()
    data = price_data(version, meter, model="graduated") | inline(
        "tiers",
        [
            {"position": 1, "up_to": "1000", "unit_amount": "0", "flat_amount": "0"},
            {"position": 2, "up_to": "500", "unit_amount": "0.02", "flat_amount": "0"},
            {"position": 3, "up_to": None, "unit_amount": "0.01", "flat_amount": "0"},
        ],
    )
    data |= inline("dimension_rates", [])

    response = admin_client.post(url("price_add"), data)

    assert response.status_code == 200
    assert "Tier 2: the upper bound 500 must be greater than the previous one, 1000." in response.text
    assert not Price.objects.exists()


def test_a_tier_list_must_end_open_ended(admin_client):
    version, meter = PlanVersionFactory(draft=True), MeterFactory()
    data = price_data(version, meter, model="volume") | inline(
        "tiers", [{"position": 1, "up_to": "1000", "unit_amount": "0.01", "flat_amount": "0"}]
    )
    response = admin_client.post(url("price_add"), data | inline("dimension_rates", []))
    assert "Tier 1: the last tier must be open-ended (no upper bound)." in response.text
    assert not Price.objects.exists()


def test_a_negative_dimension_rate_is_refused(admin_client):
    version, meter = PlanVersionFactory(draft=True), MeterFactory()
    data = price_data(version, meter, model="dimensional", dimension="model") | inline("tiers", [])
    data |= inline("dimension_rates", [{"value": "gpt-4o", "unit_amount": "-0.01"}])
    response = admin_client.post(url("price_add"), data)
    assert "The rate for &#x27;gpt-4o&#x27; cannot be negative." in response.text
    assert not Price.objects.exists()


def test_a_price_inline_on_the_version_is_checked_too(admin_client):
    meter = MeterFactory()
    plan = PlanVersionFactory(draft=True).plan
    data = {
        "plan": plan.pk,
        "currency": "usd",
        "interval": "month",
        "base_fee": "0",
        "overage_policy": "allowed",
        "changelog_note": "",
    }
    data |= inline(
        "prices",
        [{"meter": meter.pk, "model": "per_unit", "pricing_unit": "currency", "included_quantity": "0"}],
    )
    data |= no_inlines("credit_packs", "entitlements")

    response = admin_client.post(url("planversion_add"), data)

    assert response.status_code == 200
    assert "A per-unit price needs a unit amount." in response.text
    assert plan.versions.count() == 1


def test_tiers_are_checked_against_the_model_posted_with_them(admin_client):
    price = PriceFactory(plan_version=PlanVersionFactory(draft=True))
    tier = PriceTierFactory(price=price, up_to=None)
    data = price_data(price.plan_version, price.meter, unit_amount="0.01")
    data |= inline(
        "tiers",
        [
            {
                "id": tier.pk,
                "price": price.pk,
                "position": 1,
                "up_to": None,
                "unit_amount": "0.01",
                "flat_amount": "0",
            }
        ],
        initial=1,
    )
    data |= inline("dimension_rates", [])

    response = admin_client.post(url("price_change", price.pk), data)

    assert "tiers is not used by a per_unit price; remove it or change the model." in response.text


# --- Read-only versions ---


def test_a_published_versions_change_page_is_read_only(admin_client, catalog):
    version = catalog.plan_version

    response = admin_client.get(url("planversion_change", version.pk))

    assert response.status_code == 200
    assert response.context["has_change_permission"] is False
    assert 'name="_save"' not in response.text
    assert "is published, so it is read-only" in response.text
    assert 'name="prices-0-unit_amount"' not in response.text  # the inline is shown, not editable
    assert admin_client.post(url("planversion_change", version.pk), {}).status_code == 403
    assert admin_client.post(url("planversion_delete", version.pk), {"post": "yes"}).status_code == 403
    assert admin_client.post(url("price_change", catalog.pk), {}).status_code == 403


def test_a_draft_in_use_is_read_only_and_says_by_how_many(admin_client):
    version = PlanVersionFactory(draft=True)
    SubscriptionFactory(pending_plan_version=version)

    response = admin_client.get(url("planversion_change", version.pk))

    assert 'name="_save"' not in response.text
    assert (
        f"v1 of {version.plan.name} is used by 1 subscription; publish a new version instead."
        in response.text
    )


def test_a_draft_is_editable(admin_client):
    version = PlanVersionFactory(draft=True, base_fee=Decimal(5))
    data = {
        "currency": "usd",
        "interval": "month",
        "base_fee": "7.50",
        "overage_policy": "allowed",
        "changelog_note": "Cheaper.",
    }
    data |= no_inlines("prices", "credit_packs", "entitlements")

    response = admin_client.post(url("planversion_change", version.pk), data)

    assert response.status_code == 302
    version.refresh_from_db()
    assert (version.base_fee, version.changelog_note) == (Decimal("7.5"), "Cheaper.")


# --- Actions ---


def test_the_publish_action_publishes_a_draft(admin_client):
    price = PriceFactory(plan_version=PlanVersionFactory(draft=True))
    version = price.plan_version

    response = admin_client.post(
        url("planversion_changelist"), {"action": "publish", "_selected_action": [version.pk]}, follow=True
    )

    version.refresh_from_db()
    assert version.status == VersionStatus.PUBLISHED
    assert version.changelog_entry.effect == ChangeEffect.NEW_PLAN
    assert f"Published {version} (New plan)." in response.text


def test_the_publish_action_lists_what_the_engine_refuses(admin_client):
    version = PlanVersionFactory(draft=True)
    PriceFactory(plan_version=version, model=PriceModel.GRADUATED, unit_amount=None)

    response = admin_client.post(
        url("planversion_changelist"), {"action": "publish", "_selected_action": [version.pk]}, follow=True
    )

    assert "cannot be published:<ul><li>" in response.text
    assert "A graduated price needs at least one tier.</li>" in response.text
    version.refresh_from_db()
    assert version.status == VersionStatus.DRAFT


def test_the_new_draft_action_copies_a_published_version_and_opens_it(admin_client, catalog):
    version = catalog.plan_version

    response = admin_client.post(
        url("planversion_changelist"), {"action": "draft_from", "_selected_action": [version.pk]}
    )

    draft = PlanVersion.objects.get(plan=version.plan, number=version.number + 1)
    assert draft.status == VersionStatus.DRAFT
    assert response.status_code == 302
    assert response.url == url("planversion_change", draft.pk)
    assert draft.prices.get().tiers.count() == 2


def test_the_retire_action_retires_a_published_version(admin_client, catalog):
    version = catalog.plan_version
    admin_client.post(url("planversion_changelist"), {"action": "retire", "_selected_action": [version.pk]})
    version.refresh_from_db()
    assert version.status == VersionStatus.RETIRED


# --- Building a plan by hand ---


def test_an_admin_can_build_the_demo_pro_plan_by_hand(admin_client):
    """Pro as docs/catalog.md's demo has it: graduated AI actions and dimensional LLM tokens, $20/month."""
    actions = MeterFactory(key="ai_action", name="AI actions", unit="action")
    tokens = MeterFactory(key="llm_tokens", name="LLM tokens", unit="token")

    response = admin_client.post(
        url("plan_add"),
        {"code": "pro", "name": "Pro", "description": "", "display_order": "30", "is_public": "on"}
        | inline("versions", []),
    )
    assert response.status_code == 302, response.context["adminform"].errors
    plan = Plan.objects.get(code="pro")

    version_fields = {
        "plan": plan.pk,
        "currency": "usd",
        "interval": "month",
        "base_fee": "20.00",
        "overage_policy": "allowed",
        "changelog_note": "",
    }
    prices = [
        {"meter": actions.pk, "model": "graduated", "pricing_unit": "currency", "included_quantity": "0"},
        {
            "meter": tokens.pk,
            "model": "dimensional",
            "pricing_unit": "currency",
            "included_quantity": "0",
            "dimension": "model",
        },
    ]
    entitlements = [{"feature": "premium_models", "enabled": "on"}]
    response = admin_client.post(
        url("planversion_add"),
        version_fields
        | inline("prices", prices)
        | inline("credit_packs", [])
        | inline("entitlements", entitlements),
    )
    assert response.status_code == 302
    version = plan.versions.get()

    graduated = version.prices.get(meter=actions)
    tiers = [("1000", "0"), ("20000", "0.02"), (None, "0.012")]
    response = admin_client.post(
        url("price_change", graduated.pk),
        price_data(version, actions, model="graduated")
        | inline(
            "tiers",
            [
                {"position": i, "up_to": up, "unit_amount": amount, "flat_amount": "0"}
                for i, (up, amount) in enumerate(tiers, 1)
            ],
        )
        | inline("dimension_rates", []),
    )
    assert response.status_code == 302
    dimensional = version.prices.get(meter=tokens)
    rates = [("gpt-4o", "0.00001"), ("gpt-4o-mini", "0.0000006"), ("claude-sonnet", "0.000015")]
    response = admin_client.post(
        url("price_change", dimensional.pk),
        price_data(version, tokens, model="dimensional", dimension="model")
        | inline("tiers", [])
        | inline("dimension_rates", [{"value": value, "unit_amount": rate} for value, rate in rates]),
    )
    assert response.status_code == 302

    admin_client.post(url("planversion_changelist"), {"action": "publish", "_selected_action": [version.pk]})

    version.refresh_from_db()
    assert version.status == VersionStatus.PUBLISHED
    demo_pro = next(p for p in catalog_parse(catalog_decode(DEMO.read_text())).plans if p.code == "pro")
    assert version.content_hash == content_hash(demo_pro.version)


def test_meter_keys_are_fixed_once_created(admin_client):
    meter = MeterFactory(key="ai_action")
    response = admin_client.post(
        url("meter_change", meter.pk),
        {
            "key": "renamed",
            "name": "AI",
            "unit": "action",
            "aggregation": "sum",
            # The serving-cost inline's management form, with no new rate.
            "serving_costs-TOTAL_FORMS": "0",
            "serving_costs-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302
    assert Meter.objects.get().key == "ai_action"


def test_the_changelog_is_read_only(admin_client, catalog):
    version = plan_version_publish(
        plan_version=PriceFactory(plan_version=PlanVersionFactory(draft=True)).plan_version
    )
    response = admin_client.get(url("pricingchangelogentry_change", version.changelog_entry.pk))
    assert 'name="_save"' not in response.text
    assert admin_client.get(url("pricingchangelogentry_add")).status_code == 403
