from django.core.management.base import BaseCommand

from usage.partitions import month_partitions, usage_partitions_maintain


class Command(BaseCommand):
    help = (
        "Make the usage ledger's monthly partitions USAGE_PARTITIONS_AHEAD_MONTHS ahead and, when "
        "USAGE_EVENT_RETENTION_MONTHS is set, detach (never drop) the months past it whose billing periods "
        "are closed; what the daily job does. Lists the partitions attached afterwards."
    )

    def handle(self, *args: object, **options: object) -> None:
        report = usage_partitions_maintain()
        for name in report.created:
            self.stdout.write(f"made {name}")
        if report.moved_from_default:
            self.stdout.write(f"moved {report.moved_from_default} events out of the default partition")
        for detached in report.detached:
            self.stdout.write(
                self.style.WARNING(
                    f"detached {detached.table_name} ({detached.event_count} events): the table is kept; "
                    "archive it, then drop it"
                )
            )
        for name in report.kept_open:
            self.stdout.write(f"kept {name}: past retention, but it holds events of an open billing period")
        partitions = month_partitions()
        if partitions:
            self.stdout.write(
                f"{len(partitions)} monthly partitions attached, {partitions[0].start:%Y-%m} to "
                f"{partitions[-1].start:%Y-%m}, and the default partition"
            )
