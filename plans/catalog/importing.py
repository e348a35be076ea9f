"""Importing a catalog file: make the meters, plans and published versions match it, in one transaction.

The one part of the catalog package that writes; it goes through the catalog services (`plans.services`).
"""

from dataclasses import dataclass
from typing import Any

from django.db import transaction

from plans.catalog.content import PlanEntry, version_content
from plans.catalog.parse import CatalogInvalid, catalog_parse
from plans.catalog.serialize import content_hash
from plans.models import Meter, Plan
from plans.selectors import plan_latest_published_version
from plans.services import meter_serving_cost_import, meter_upsert, plan_version_publish, plan_version_write


@dataclass(frozen=True)
class CatalogImportReport:
    lines: tuple[str, ...]  # what happened to each meter and plan, in file order
    changed: bool  # False: the database already matched the file, and nothing was written


@transaction.atomic
def catalog_import(*, data: Any) -> CatalogImportReport:
    """Make the catalog match a decoded catalog file (docs/catalog.md), in one transaction.

    Meters are created or updated. A plan whose pricing differs from its latest published version gets a
    new published version (with a changelog entry); a plan whose pricing is the same keeps its version.
    Plans and versions the file does not mention are left alone. Any problem raises `CatalogInvalid`
    naming the plan and price before anything is written; importing the same file twice changes nothing.
    """
    meters = Meter.objects.in_bulk(field_name="key")
    catalog = catalog_parse(data, known_meters=meters)
    lines = []
    changed = False
    problems: list[str] = []
    for entry in catalog.meters:
        meter = meters.get(entry.key)
        current = (
            None
            if meter is None
            else (
                meter.name,
                meter.unit,
                meter.aggregation,
                meter.unique_property,
                meter.display_mode,
                meter.display_unit,
                meter.display_divisor,
            )
        )
        what = []
        wanted = (
            entry.name,
            entry.unit,
            entry.aggregation,
            entry.unique_property,
            entry.display_mode,
            entry.display_unit,
            entry.display_divisor,
        )
        if current != wanted:
            what.append("created" if meter is None else "updated")
            meter = meter_upsert(
                key=entry.key,
                name=entry.name,
                unit=entry.unit,
                aggregation=entry.aggregation,
                unique_property=entry.unique_property,
                display_mode=entry.display_mode,
                display_unit=entry.display_unit,
                display_divisor=entry.display_divisor,
            )
        if entry.cost is not None and meter is not None:
            cost_changes, cost_problems = meter_serving_cost_import(meter=meter, entry=entry.cost)
            what += cost_changes
            problems += cost_problems
        lines.append(f"meter {entry.key}: {', '.join(what) if what else 'unchanged'}")
        changed = changed or bool(what)
    if problems:
        raise CatalogInvalid(problems)  # the transaction rolls back whatever was written before
    for plan_entry in catalog.plans:
        line, plan_changed = _catalog_plan_import(plan_entry)
        lines.append(line)
        changed = changed or plan_changed
    return CatalogImportReport(lines=tuple(lines), changed=changed)


def _catalog_plan_import(entry: PlanEntry) -> tuple[str, bool]:
    plan = Plan.objects.select_for_update().filter(code=entry.code).first()
    created = plan is None
    plan = plan or Plan(code=entry.code)
    details = {
        "name": entry.name,
        "description": entry.description,
        "display_order": entry.display_order,
        "is_public": entry.is_public,
    }
    updated = [key for key, value in details.items() if value is not None and getattr(plan, key) != value]
    for key in updated:
        setattr(plan, key, details[key])
    if created or updated:
        plan.save()

    latest = None if created else plan_latest_published_version(plan)
    if latest is not None and (latest.content_hash or content_hash(version_content(latest))) == content_hash(
        entry.version
    ):
        if created or updated:
            return (
                f"plan {entry.code}: updated {', '.join(updated)}; pricing unchanged (v{latest.number})",
                True,
            )
        return f"plan {entry.code}: unchanged (v{latest.number})", False

    version = plan_version_write(plan=plan, content=entry.version, changelog_note=entry.changelog or "")
    migration = entry.migration
    version = plan_version_publish(
        plan_version=version,
        effect=None if migration is None else migration.effect,
        migrate_at=None if migration is None else migration.migrate_at,
    )
    what = "created" if created else (f"updated {', '.join(updated)}" if updated else "")
    published = f"v{version.number} published ({version.changelog_entry.effect})"
    return f"plan {entry.code}: {what + ', ' if what else ''}{published}", True
