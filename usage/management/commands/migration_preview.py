"""``manage.py migration_preview PLAN VERSION``: each subscriber's last closed periods under the new version."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.money import format_money
from plans.models import PlanVersion
from usage.selectors.price_changes import migration_preview


class Command(BaseCommand):
    help = "Re-rate every subscriber's last three closed periods under its version and under PLAN's VERSION."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("plan", help="The plan code, e.g. pro.")
        parser.add_argument("version", type=int, help="The version number to preview (a draft, usually).")
        parser.add_argument("--periods", type=int, default=3, help="Closed periods per customer (default 3).")

    def handle(self, *args: Any, **options: Any) -> None:
        version = PlanVersion.objects.filter(plan__code=options["plan"], number=options["version"]).first()
        if version is None:
            raise CommandError(f"No version {options['version']} of plan {options['plan']!r}.")
        preview = migration_preview(version=version, periods=options["periods"])

        def money(amount: Any) -> str:
            return format_money(amount, version.currency)

        self.stdout.write(
            f"{version}: {len(preview.customers)} customers over their last {preview.periods} closed periods; "
            f"{preview.paying_more} pay more, {preview.paying_less} less; revenue {money(preview.revenue_difference)}"
        )
        for row in preview.customers:
            self.stdout.write(
                f"  {row.customer}: {money(row.old_total)} -> {money(row.new_total)} ({money(row.difference)})"
            )
        for customer in preview.unpriced:
            self.stdout.write(f"  {customer}: its usage has no price on this version")
