"""``manage.py usage_percentiles METER [--days 90]``: what an included quota of a meter would cover."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from plans.models import Meter
from usage.selectors.formatting import format_quantity
from usage.selectors.price_changes import usage_percentiles


class Command(BaseCommand):
    help = "Per-customer period usage of a meter over the last days: p50, p90, p95, p99 and whom each covers."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("meter", help="The meter key, e.g. ai_action.")
        parser.add_argument("--days", type=int, default=90, help="The window in days (default 90).")

    def handle(self, *args: Any, **options: Any) -> None:
        meter = Meter.objects.filter(key=options["meter"]).first()
        if meter is None:
            raise CommandError(f"No meter with key {options['meter']!r}.")
        if not 1 <= options["days"] <= 730:
            raise CommandError("--days is from 1 to 730.")
        found = usage_percentiles(meter=meter, days=options["days"])
        self.stdout.write(
            f"{meter.key}: {found.customers} customers with usage in the last {found.days} days"
        )
        for percentile, value in found.values.items():
            share = f"{found.covered[percentile]} of {found.customers}" if found.customers else "none"
            self.stdout.write(
                f"  p{percentile}: {format_quantity(value)} {meter.unit} covers {share} customers"
            )
