"""The catalog file: import, export, and the format's own checks."""

import json
from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from plans import services
from plans.catalog import CatalogInvalid, catalog_data, catalog_decode, catalog_parse, content_hash
from plans.models import (
    ChangeEffect,
    Meter,
    Plan,
    PlanVersion,
    PriceModel,
    PricingChangelogEntry,
    PricingUnit,
    VersionStatus,
)
from plans.selectors import plan_latest_published_version
from plans.services import plan_version_draft_from

DEMO = Path(__file__).resolve().parents[2] / "catalog" / "demo.json"
D = Decimal


def run(command, *args):
    out = StringIO()
    call_command(command, *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def write(tmp_path, data, name="catalog.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def demo_data():
    return catalog_decode(DEMO.read_text())


def plan_in(data, code):
    return next(plan for plan in data["plans"] if plan["code"] == code)


def database_state():
    """Everything an import may write, to compare before and after."""
    return (
        list(Meter.objects.values_list("key", "name", "unit", "aggregation")),
        list(Plan.objects.values_list("code", "name", "description", "display_order", "is_public")),
        list(PlanVersion.objects.values_list("plan__code", "number", "status", "content_hash")),
        PricingChangelogEntry.objects.count(),
    )


# --- Import ---


@pytest.mark.django_db
def test_the_demo_catalog_imports():
    output = run("catalog_import", str(DEMO))

    assert "Imported" in output
    assert set(Meter.objects.values_list("key", flat=True)) == {
        "ai_action",
        "export",
        "llm_tokens",
        "workflow_run",
    }
    assert list(Plan.objects.values_list("code", flat=True)) == ["free", "payg", "pro", "credits", "hybrid"]
    assert set(PlanVersion.objects.values_list("number", "status")) == {(1, VersionStatus.PUBLISHED)}
    assert set(PricingChangelogEntry.objects.values_list("effect", flat=True)) == {ChangeEffect.NEW_PLAN}

    pro = plan_latest_published_version(Plan.objects.get(code="pro"))
    assert pro.base_fee == 20
    assert pro.prices.get(meter__key="ai_action").tiers.count() == 3
    assert pro.prices.get(meter__key="llm_tokens").dimension_rates.get(value="gpt-4o").unit_amount == D(
        "0.00001"
    )
    credits = plan_latest_published_version(Plan.objects.get(code="credits"))
    runs = credits.prices.get(meter__key="workflow_run")
    assert (runs.model, runs.pricing_unit, runs.dimension) == (
        PriceModel.DIMENSIONAL,
        PricingUnit.CREDITS,
        "complexity",
    )
    assert credits.credit_unit_amount == D("0.005")
    free = plan_latest_published_version(Plan.objects.get(code="free"))
    assert {(e.feature, e.enabled, e.limit) for e in free.entitlements.all()} == {
        ("ai_action", True, 20),
        ("export", True, 5),
        ("premium_models", False, None),
    }


@pytest.mark.django_db
def test_importing_the_same_file_twice_changes_nothing_and_says_so():
    run("catalog_import", str(DEMO))
    before = database_state()

    output = run("catalog_import", str(DEMO))

    assert database_state() == before
    assert f"Nothing changed: the catalog already matches {DEMO}." in output
    assert "plan pro: unchanged (v1)" in output


@pytest.mark.django_db
def test_a_changed_plan_becomes_a_new_published_version(tmp_path):
    run("catalog_import", str(DEMO))
    data = demo_data()
    pro = plan_in(data, "pro")
    pro["prices"][0]["tiers"][1]["unit_amount"] = "0.018"
    pro["changelog"] = "AI actions are cheaper."

    output = run("catalog_import", write(tmp_path, data))

    assert "plan pro: v2 published (grandfathered)" in output
    assert "plan free: unchanged (v1)" in output
    versions = PlanVersion.objects.filter(plan__code="pro").order_by("number")
    assert [(v.number, v.status) for v in versions] == [
        (1, VersionStatus.PUBLISHED),
        (2, VersionStatus.PUBLISHED),
    ]
    summary = versions[1].changelog_entry.summary.splitlines()
    assert summary[0] == "AI actions are cheaper."
    assert summary[1].startswith(
        "Changed price for ai_action: graduated tiers in USD: up to 1000 at 0, up to 20000 at 0.02"
    )
    assert PlanVersion.objects.count() == 6


@pytest.mark.django_db
def test_plan_details_change_without_a_new_version(tmp_path):
    run("catalog_import", str(DEMO))
    data = demo_data()
    plan_in(data, "free")["description"] = "Free forever."
    plan_in(data, "free")["is_public"] = False

    output = run("catalog_import", write(tmp_path, data))

    assert "plan free: updated description, is_public; pricing unchanged (v1)" in output
    free = Plan.objects.get(code="free")
    assert (free.description, free.is_public, free.versions.count()) == ("Free forever.", False, 1)


@pytest.mark.django_db
def test_an_invalid_file_writes_nothing_and_names_the_plan_and_price(tmp_path):
    data = demo_data()
    plan_in(data, "pro")["prices"][0]["tiers"][1]["up_to"] = "500"  # below the tier before it
    plan_in(data, "payg")["prices"][2]["rates"]["gpt-4o"] = "-1"

    with pytest.raises(CommandError) as raised:
        run("catalog_import", write(tmp_path, data))

    message = str(raised.value)
    assert "nothing was imported" in message
    assert (
        'plan "pro", prices[0] (ai_action): Tier 2: the upper bound 500 must be greater than the previous one, 1000.'
        in message
    )
    assert "plan \"payg\", prices[2] (llm_tokens): The rate for 'gpt-4o' cannot be negative." in message
    assert database_state() == ([], [], [], 0)  # not even the valid meters and plans


@pytest.mark.django_db
def test_a_failure_part_way_through_rolls_back_the_whole_import(tmp_path, monkeypatch):
    run("catalog_import", str(DEMO))
    before = database_state()
    data = demo_data()
    data["meters"][0]["name"] = "Agent actions"
    for plan in data["plans"]:
        plan["description"] = "New words."
        plan["base_fee"] = "30.00"
    published = []
    publish = services.plan_version_publish

    def publish_then_fail(**kwargs):
        if len(published) == 2:
            raise CatalogInvalid(["the database went away"])
        published.append(publish(**kwargs))
        return published[-1]

    monkeypatch.setattr("plans.catalog.importing.plan_version_publish", publish_then_fail)
    with pytest.raises(CommandError, match="the database went away"):
        run("catalog_import", write(tmp_path, data))

    assert len(published) == 2
    assert database_state() == before


@pytest.mark.django_db
def test_an_unreadable_file_is_reported(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"meters": [}')
    with pytest.raises(CommandError, match="Not a valid catalog file"):
        run("catalog_import", str(bad))
    with pytest.raises(CommandError, match="Cannot read"):
        run("catalog_import", str(tmp_path / "missing.json"))


# --- Export ---


@pytest.mark.django_db
def test_export_writes_back_the_file_that_was_imported(tmp_path):
    run("catalog_import", str(DEMO))
    exported = tmp_path / "export.json"

    run("catalog_export", str(exported))

    assert exported.read_text() == DEMO.read_text()
    assert run("catalog_export") == DEMO.read_text()  # stdout without a file


@pytest.mark.django_db
def test_export_then_import_changes_nothing(tmp_path):
    run("catalog_import", str(DEMO))
    plan_version_draft_from(plan_version=PlanVersion.objects.get(plan__code="pro"))  # drafts are not exported
    exported = tmp_path / "export.json"
    run("catalog_export", str(exported))
    before = database_state()

    output = run("catalog_import", str(exported))

    assert "Nothing changed" in output
    assert database_state() == before


@pytest.mark.django_db
def test_export_shows_the_latest_published_version_and_skips_unpublished_plans(tmp_path):
    run("catalog_import", str(DEMO))
    data = demo_data()
    plan_in(data, "pro")["base_fee"] = "25.00"
    run("catalog_import", write(tmp_path, data))
    Plan.objects.create(code="enterprise", name="Enterprise")

    exported = json.loads(run("catalog_export"))

    assert plan_in(exported, "pro")["base_fee"] == "25.00"
    assert "enterprise" not in [plan["code"] for plan in exported["plans"]]


# --- The format ---


def test_parse_then_serialize_round_trips():
    catalog = catalog_parse(demo_data())
    assert catalog_parse(json.loads(json.dumps(catalog_data(catalog)), parse_float=Decimal)) == catalog


def test_numbers_are_read_as_decimals_never_floats():
    text = DEMO.read_text().replace('"unit_amount": "0.05"', '"unit_amount": 0.05')
    payg = next(plan for plan in catalog_parse(catalog_decode(text)).plans if plan.code == "payg")
    assert payg.version.prices[0].unit_amount == D("0.05")
    assert str(payg.version.prices[0].unit_amount) == "0.05"

    data = demo_data()
    plan_in(data, "payg")["prices"][0]["unit_amount"] = 0.05  # a float from json.loads without parse_float
    with pytest.raises(
        CatalogInvalid, match=r"prices\[0\] \(ai_action\): \'unit_amount\' must be a decimal string"
    ):
        catalog_parse(data)


def test_equal_content_hashes_alike_whatever_the_order_and_notation():
    data = demo_data()
    hybrid = plan_in(data, "hybrid")
    hybrid["prices"].reverse()
    hybrid["base_fee"] = 999
    hybrid["prices"][0]["rates"] = dict(reversed(hybrid["prices"][0]["rates"].items()))
    hashes = [
        {plan.code: content_hash(plan.version) for plan in catalog_parse(d).plans}
        for d in (demo_data(), data)
    ]
    assert hashes[0] == hashes[1]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["meters"][0].update(unit_price="1"), "meter \"ai_action\": unknown key 'unit_price'"),
        (lambda d: d["meters"].append(dict(d["meters"][0])), "meter key 'ai_action' is given twice."),
        (lambda d: d["plans"].append(dict(d["plans"][0])), "plan code 'free' is given twice."),
        (
            lambda d: plan_in(d, "free").update(currency="dollars"),
            "plan \"free\": 'currency' must be a three-letter code such as usd, not 'dollars'.",
        ),
        (
            lambda d: plan_in(d, "free").update(interval="week"),
            "'interval' is 'week'; use one of: month, year.",
        ),
        (
            lambda d: plan_in(d, "free").update(overage="sometimes"),
            "'overage' is 'sometimes'; use one of: allowed, blocked.",
        ),
        (
            lambda d: plan_in(d, "free").update(base_fee="1.23456"),
            "'base_fee' 1.23456 has more than 4 decimal places.",
        ),
        (lambda d: plan_in(d, "free").pop("base_fee"), "plan \"free\": 'base_fee' is missing."),
        (
            lambda d: plan_in(d, "free")["prices"][0].update(unit="eur"),
            "prices[0] (ai_action): 'unit' must be \"credits\" or the plan currency 'usd', not 'eur'.",
        ),
        (
            lambda d: plan_in(d, "free")["prices"].append(
                {"meter": "ai_action", "model": "per_unit", "unit_amount": "1"}
            ),
            "plan \"free\": meter 'ai_action' is given twice; a version has one of each.",
        ),
        (
            lambda d: plan_in(d, "pro")["prices"][0].update(model="per_unit"),
            "prices[0] (ai_action): A per-unit price needs a unit amount.",
        ),
        (
            lambda d: plan_in(d, "credits")["credit_packs"][0].update(credits="0"),
            "credit_packs[0]: 'credits' must be greater than 0.",
        ),
        (
            lambda d: plan_in(d, "free")["entitlements"][0].update(limit="lots"),
            "entitlements[0] (ai_action): 'limit' must be a decimal number",
        ),
        (
            lambda d: plan_in(d, "pro")["prices"][0]["tiers"][0].pop("up_to"),
            "tiers[0]: 'up_to' is missing; use null for the last, open-ended tier.",
        ),
    ],
)
def test_each_problem_is_reported_where_it_is(change, message):
    data = demo_data()
    change(data)
    with pytest.raises(CatalogInvalid) as raised:
        catalog_parse(data)
    assert any(message in error for error in raised.value.errors), raised.value.errors


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"meters": [], "plans": [], "plans": []}', "the key 'plans' is given twice"),
        ('{"meters": [{"key": NaN}]}', "NaN is not a number a catalog can use"),
        ("[1, 2]", "must hold a JSON object"),
    ],
)
def test_files_that_would_lose_or_invent_data_are_refused(text, message):
    with pytest.raises(CatalogInvalid, match=message):
        catalog_parse(catalog_decode(text))


def test_pricing_unit_is_another_spelling_of_unit():
    data = demo_data()
    price = plan_in(data, "credits")["prices"][0]
    price["pricing_unit"] = price.pop("unit")
    assert catalog_parse(data) == catalog_parse(demo_data())


def test_the_overage_policy_is_imported_exported_and_makes_a_new_version(db, tmp_path):
    data = demo_data()
    run("catalog_import", write(tmp_path, data))
    credits = PlanVersion.objects.get(plan__code="credits")
    assert credits.overage_policy == "blocked"
    assert PlanVersion.objects.get(plan__code="pro").overage_policy == "allowed"
    # "allowed" is the default and is not written, so versions stored before the policy keep their hash.
    exported = {plan["code"]: plan for plan in catalog_data(catalog_parse(data))["plans"]}
    assert exported["credits"]["overage"] == "blocked"
    assert "overage" not in exported["pro"]

    plan_in(data, "pro")["overage"] = "blocked"
    run("catalog_import", write(tmp_path, data))

    latest = plan_latest_published_version(Plan.objects.get(code="pro"))
    assert (latest.number, latest.overage_policy) == (2, "blocked")
    assert "no overage" in latest.changelog_entry.summary
