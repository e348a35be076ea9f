from django.core.management.base import BaseCommand, CommandError

from usage.ledger_audit import ledger_mismatches


class Command(BaseCommand):
    help = "Prove every balance equals its ledger rows and every period total equals its events."

    def handle(self, *args: object, **options: object) -> None:
        mismatches = ledger_mismatches()
        if mismatches:
            for mismatch in mismatches:
                self.stderr.write(str(mismatch))
            raise CommandError(f"{len(mismatches)} ledger mismatch(es).")
        self.stdout.write(self.style.SUCCESS("Ledger consistent: every balance and total equals its rows."))
