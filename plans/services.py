"""Writes to the catalog: meters, their serving costs, plan versions (create, copy, publish, retire).

A plan version is a draft until it is published; from then on, and as soon as any subscription uses it, it
is read-only (`plan_version_assert_editable`): a price change is a new version, and subscribers stay on
theirs. Publishing retires nothing: older versions stay published for the subscribers on them until they are
retired by hand; the pricing page shows only the latest. Importing a catalog file (`plans.catalog.importing`)
goes through these services; the changelog's words for what changed are `plans.changelog`.
"""

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from core.errors import Conflict, InvalidInput
from core.money import CREDITS
from plans.catalog import VersionContent, content_hash, version_content, version_content_parse
from plans.catalog.content import SERVING_COST_SINCE_ALWAYS, ServingCostEntry
from plans.changelog import version_changes
from plans.errors import PlanVersionInUse
from plans.models import (
    ChangeEffect,
    CreditPack,
    DimensionRate,
    DisplayMode,
    Entitlement,
    Meter,
    MeterServingCost,
    MigrationStatus,
    Plan,
    PlanMigration,
    PlanVersion,
    Price,
    PriceTier,
    PricingChangelogEntry,
    PricingUnit,
    VersionStatus,
)
from plans.pricing import validate_version
from plans.selectors import plan_latest_published_version, version_spec


class PlanVersionNotDraft(Conflict):
    """Only a draft can be edited or published."""

    code = "plan_version_not_draft"


class PlanVersionNotPublished(Conflict):
    """Only a published version can be retired."""

    code = "plan_version_not_published"


# --- Meters ---


@transaction.atomic
def meter_upsert(
    *,
    key: str,
    name: str,
    unit: str,
    aggregation: str,
    unique_property: str = "",
    display_mode: str = DisplayMode.UNITS,
    display_unit: str = "",
    display_divisor: Decimal = Decimal(1),
) -> Meter:
    """Create the meter `key`, or update its name, unit, aggregation and how customers see it. Checked like
    the admin form."""
    meter = Meter.objects.select_for_update().filter(key=key).first() or Meter(key=key)
    meter.name = name
    meter.unit = unit
    meter.aggregation = aggregation
    meter.unique_property = unique_property
    meter.display_mode = display_mode
    meter.display_unit = display_unit
    meter.display_divisor = display_divisor
    try:
        meter.full_clean()
    except ValidationError as error:
        raise InvalidInput(f"Meter {key!r}: {' '.join(error.messages)}", param="meter") from error
    meter.save()
    return meter


# --- Serving costs ---


def meter_serving_cost_import(
    *, meter: Meter, entry: ServingCostEntry, now: datetime | None = None
) -> tuple[list[str], list[str]]:
    """Make the meter's cost schedule say what ``entry`` says, by adding dated rows, never editing one.

    For each rate of the entry: unchanged when the rate in force at its date (the latest rate, without a date)
    is the same; otherwise a new row from that date (without one: from now, or from always for a value the
    meter never had). Returns (what changed, problems): a different rate already dated exactly then is a
    problem, as history is not rewritten by a file; correct it in the admin.
    """
    now = now or timezone.now()
    changes: list[str] = []
    problems: list[str] = []
    if meter.serving_cost_dimension != entry.dimension:
        meter.serving_cost_dimension = entry.dimension
        meter.save(update_fields=["serving_cost_dimension"])
        changes.append(f"cost dimension {entry.dimension or 'none'}")
    schedule: dict[str, list[MeterServingCost]] = {}
    for row in MeterServingCost.objects.filter(meter=meter).order_by("effective_from"):
        schedule.setdefault(row.dimension_value, []).append(row)
    for value, unit_amount in sorted(entry.by_value().items()):
        rows = schedule.get(value, [])
        label = value or "default"
        if entry.effective_from is None:
            in_force = rows[-1] if rows else None
            starts = now if rows else SERVING_COST_SINCE_ALWAYS
        else:
            in_force = next((r for r in reversed(rows) if r.effective_from <= entry.effective_from), None)
            starts = entry.effective_from
        if in_force is not None and in_force.unit_amount == unit_amount:
            continue
        if any(row.effective_from == starts for row in rows):
            problems.append(
                f'meter "{meter.key}", cost: the {label} rate from {starts:%Y-%m-%d %H:%M} is already '
                f"{next(r.unit_amount for r in rows if r.effective_from == starts).normalize():f}; "
                "give the new rate a later effective_from."
            )
            continue
        MeterServingCost.objects.create(
            meter=meter,
            dimension_value=value,
            unit_amount=unit_amount,
            currency=settings.OPERATOR_CURRENCY,
            effective_from=starts,
        )
        changes.append(f"cost {label} {unit_amount.normalize():f} from {starts:%Y-%m-%d}")
    return changes, problems


# --- Plan versions ---


@transaction.atomic
def plan_version_create(
    *,
    plan: Plan,
    currency: str,
    interval: str,
    base_fee: Decimal | str,
    prices: Iterable[Mapping[str, Any]],
    entitlements: Iterable[Mapping[str, Any]],
    credit_packs: Iterable[Mapping[str, Any]],
    changelog_note: str = "",
    overage: str = "allowed",
) -> PlanVersion:
    """A draft version of `plan` with its prices, entitlements and credit packs.

    `prices`, `entitlements` and `credit_packs` are dicts in the catalog file's shape (docs/catalog.md);
    decimals may be strings or `Decimal`s. Every problem is raised at once as `CatalogInvalid`.
    """
    content = version_content_parse(
        {
            "currency": currency,
            "interval": interval,
            "base_fee": base_fee,
            "overage": overage,
            "prices": [dict(price) for price in prices],
            "entitlements": [dict(entry) for entry in entitlements],
            "credit_packs": [dict(pack) for pack in credit_packs],
        },
        where=f'plan "{plan.code}"',
        known_meters=Meter.objects.values_list("key", flat=True),
    )
    return plan_version_write(plan=plan, content=content, changelog_note=changelog_note)


@transaction.atomic
def plan_version_draft_from(*, plan_version: PlanVersion) -> PlanVersion:
    """A new draft of the same plan with a copy of `plan_version`'s prices, entitlements and packs.

    Stripe ids are not copied: a new version gets new Stripe prices when it is synced.
    """
    return plan_version_write(
        plan=plan_version.plan, content=version_content(plan_version), changelog_note=""
    )


def plan_version_next_number(*, plan: Plan) -> int:
    """The number the plan's next version gets. Call it inside the transaction that creates the version:
    it locks the plan so that two versions created at once do not both take the same number."""
    Plan.objects.select_for_update().get(pk=plan.pk)  # held until the caller's transaction ends
    return (plan.versions.aggregate(last=Max("number"))["last"] or 0) + 1


def plan_version_assert_editable(*, plan_version: PlanVersion) -> None:
    """Raise unless the version may still change: a draft no subscription uses.

    The admin calls it before saving any change to a version or to its prices, tiers, rates, packs or
    entitlements, so a subscriber's price never changes under them.
    """
    in_use = _subscription_count(plan_version)
    name = _version_name(plan_version)
    if in_use:
        noun = "subscription" if in_use == 1 else "subscriptions"
        raise PlanVersionInUse(
            f"{name} is used by {in_use} {noun}; publish a new version instead.",
            plan_version=plan_version.pk,
            subscriptions=in_use,
        )
    if plan_version.status != VersionStatus.DRAFT:
        raise PlanVersionNotDraft(
            f"{name} is {plan_version.get_status_display().lower()}, so it is read-only: subscribers keep "
            "the prices they signed up for. Create a new draft version from it to change prices.",
            plan_version=plan_version.pk,
        )


def plan_version_is_editable(*, plan_version: PlanVersion) -> bool:
    """Whether `plan_version_assert_editable` would pass; a published version costs no query."""
    return plan_version.status == VersionStatus.DRAFT and not _subscription_count(plan_version)


def _subscription_count(plan_version: PlanVersion) -> int:
    """Subscriptions on the version or due to move to it at renewal."""
    # Reverse relations, so that plans does not import customers (dependencies point customers -> plans).
    return plan_version.subscriptions.count() + plan_version.pending_subscriptions.count()


class PlanMigrationInProgress(Conflict):
    """A plan has one migration at renewal at a time: two would send its customers two notices."""

    code = "plan_migration_in_progress"


@transaction.atomic
def plan_version_publish(
    *,
    plan_version: PlanVersion,
    summary: str | None = None,
    effect: str | None = None,
    migrate_at: datetime | None = None,
    by_user_id: int | None = None,
    now: datetime | None = None,
) -> PlanVersion:
    """Publish a draft: check it with the rating engine, then write its pricing-changelog entry.

    `summary` defaults to the version's changelog note (if any) followed by what changed against the
    latest published version. `effect` defaults to `new_plan` for the plan's first version, to
    `migrated_at_renewal` when `migrate_at` is given, and to `grandfathered` otherwise. Older versions are
    not retired.

    - `grandfathered`: subscribers of the plan's older versions keep theirs for good (`grandfathered` is set
      on their subscriptions); only new sign-ups get this version.
    - `migrated_at_renewal`: a `PlanMigration` to this version from `migrate_at`, which must be at least
      `PRICE_CHANGE_NOTICE_DAYS` days from now (without it: the first midnight, UTC, that far away). The
      customers are told and choose (`usage.plan_migrations`).
    """
    now = now or timezone.now()
    # Locked so that a double-clicked "Publish" writes one changelog entry, not a constraint error.
    version = PlanVersion.objects.select_for_update().select_related("plan").get(pk=plan_version.pk)
    name = _version_name(version)
    if version.status != VersionStatus.DRAFT:
        raise PlanVersionNotDraft(f"{name} is already {version.status}.", plan_version=version.pk)
    errors = validate_version(version_spec(version))
    if errors:
        raise InvalidInput(
            f"{name} cannot be published:\n" + "\n".join(f"- {error}" for error in errors), errors=errors
        )
    if effect is not None and effect not in ChangeEffect.values:
        raise InvalidInput(f"Unknown effect {effect!r}; use one of {', '.join(ChangeEffect.values)}.")

    content = version_content(version)
    previous = plan_latest_published_version(version.plan)
    published_before = version.plan.versions.exclude(status=VersionStatus.DRAFT).exists()
    if effect is None:
        if migrate_at is not None:
            effect = ChangeEffect.MIGRATED_AT_RENEWAL
        else:
            effect = ChangeEffect.GRANDFATHERED if published_before else ChangeEffect.NEW_PLAN
    migration_date = None
    if effect == ChangeEffect.MIGRATED_AT_RENEWAL:
        migration_date = _migration_check(
            version, migrate_at=migrate_at, published_before=published_before, now=now
        )
    elif migrate_at is not None:
        raise InvalidInput(
            f"A migration date goes with the effect {ChangeEffect.MIGRATED_AT_RENEWAL}, not {effect}.",
            param="migrate_at",
        )
    if summary is None:
        changes = version_changes(None if previous is None else version_content(previous), content)
        summary = "\n".join([version.changelog_note.strip(), *changes] if version.changelog_note else changes)

    version.status = VersionStatus.PUBLISHED
    version.published_at = now
    version.content_hash = content_hash(content)
    version.save(update_fields=["status", "published_at", "content_hash"])
    PricingChangelogEntry.objects.create(
        plan=version.plan,
        plan_version=version,
        published_at=version.published_at,
        summary=summary,
        effect=effect,
    )
    if effect == ChangeEffect.GRANDFATHERED:
        _subscribers_of_older_versions(version).update(grandfathered=True)
    elif migration_date is not None:
        PlanMigration.objects.create(
            plan_version=version, migrate_at=migration_date, created_by_id=by_user_id
        )
    return version


def _migration_check(
    version: PlanVersion, *, migrate_at: datetime | None, published_before: bool, now: datetime
) -> datetime:
    """The migration's date, or why customers could not be given fair notice of it, or could not move."""
    if not published_before:
        raise InvalidInput("A plan's first version has no subscribers to migrate.", param="effect")
    days = settings.PRICE_CHANGE_NOTICE_DAYS
    if migrate_at is None:
        # The earliest fair date: the first midnight (UTC) at least the notice period away.
        earliest = now + timedelta(days=days)
        migrate_at = earliest.replace(hour=0, minute=0, second=0, microsecond=0)
        if migrate_at < earliest:
            migrate_at += timedelta(days=1)
    if migrate_at < now + timedelta(days=days):
        earliest_day = (now + timedelta(days=days)).date()
        raise InvalidInput(
            f"Customers get at least {days} days' notice of a price change: migrate on {earliest_day:%Y-%m-%d} "
            "or later.",
            param="migrate_at",
        )
    other = version.plan.versions.exclude(pk=version.pk).exclude(status=VersionStatus.DRAFT)
    currencies = sorted(set(other.exclude(currency=version.currency).values_list("currency", flat=True)))
    if currencies:
        raise InvalidInput(
            f"{_version_name(version)} is priced in {version.currency.upper()}, but older versions are in "
            f"{', '.join(c.upper() for c in currencies)}: their subscribers cannot be moved to it.",
            param="effect",
        )
    running = PlanMigration.objects.filter(
        plan_version__plan=version.plan, status__in=[MigrationStatus.SCHEDULED, MigrationStatus.MIGRATING]
    ).first()
    if running is not None:
        raise PlanMigrationInProgress(
            f"{version.plan.name} already has a migration to v{running.plan_version.number} on "
            f"{running.migrate_at:%Y-%m-%d}; publish after it is done.",
            plan_migration=running.pk,
        )
    return migrate_at


def _subscribers_of_older_versions(version: PlanVersion) -> Any:
    """The subscriptions on the plan's other versions, through the reverse relation (plans does not import
    customers: dependencies point customers -> plans)."""
    subscriptions = version.subscriptions.model.objects
    return subscriptions.filter(plan_version__plan_id=version.plan_id).exclude(plan_version_id=version.pk)


@transaction.atomic
def plan_version_retire(*, plan_version: PlanVersion) -> PlanVersion:
    """Stop offering a published version. Subscriptions on it keep it until they are migrated."""
    version = PlanVersion.objects.select_for_update().select_related("plan").get(pk=plan_version.pk)
    if version.status != VersionStatus.PUBLISHED:
        raise PlanVersionNotPublished(
            f"Only a published version can be retired; {_version_name(version)} is {version.status}.",
            plan_version=version.pk,
        )
    version.status = VersionStatus.RETIRED
    version.save(update_fields=["status"])
    return version


def plan_version_write(*, plan: Plan, content: VersionContent, changelog_note: str) -> PlanVersion:
    """A draft version holding `content`, whose meters exist (the parse checked them). Call it inside a
    transaction: it takes the plan's next number with `plan_version_next_number`, which locks the plan."""
    meters = Meter.objects.in_bulk([spec.meter for spec in content.prices], field_name="key")
    version = PlanVersion.objects.create(
        plan=plan,
        number=plan_version_next_number(plan=plan),
        currency=content.currency,
        interval=content.interval,
        base_fee=content.base_fee,
        overage_policy=content.overage,
        changelog_note=changelog_note,
    )
    for spec in content.prices:
        price = Price.objects.create(
            plan_version=version,
            meter=meters[spec.meter],
            model=spec.model,
            pricing_unit=PricingUnit.CREDITS if spec.unit == CREDITS else PricingUnit.CURRENCY,
            included_quantity=spec.included,
            unit_amount=spec.unit_amount,
            package_size=spec.package_size,
            package_amount=spec.package_amount,
            dimension=spec.dimension or "",
            default_rate=spec.default_rate,
        )
        PriceTier.objects.bulk_create(
            PriceTier(
                price=price,
                position=position,
                up_to=tier.up_to,
                unit_amount=tier.unit_amount,
                flat_amount=tier.flat_amount,
            )
            for position, tier in enumerate(spec.tiers, start=1)
        )
        DimensionRate.objects.bulk_create(
            DimensionRate(price=price, value=value, unit_amount=rate) for value, rate in spec.rates
        )
    Entitlement.objects.bulk_create(
        Entitlement(
            plan_version=version,
            feature=entry.feature,
            enabled=entry.enabled,
            limit=entry.limit,
            rate_limit_per_minute=entry.rate_limit_per_minute,
            rate_limit_per=entry.rate_limit_per,
        )
        for entry in content.entitlements
    )
    CreditPack.objects.bulk_create(
        CreditPack(plan_version=version, amount=pack.price, credits=pack.credits)
        for pack in content.credit_packs
    )
    return version


def _version_name(plan_version: PlanVersion) -> str:
    return f"v{plan_version.number} of {plan_version.plan.name}"
