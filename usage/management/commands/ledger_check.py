from django.core.management.base import BaseCommand, CommandError

from usage.ledger_audit import PROOFS, ledger_mismatches


class Command(BaseCommand):
    help = (
        "Prove every balance and total equals its rows, every event's split equals the draw-downs it left, "
        "post-paid overage equals the Stripe outbox, rollups equal their events per period, no balance is "
        "negative and no open hold keeps more than its sources have."
    )

    def handle(self, *args: object, **options: object) -> None:
        mismatches = ledger_mismatches()
        if mismatches:
            for mismatch in mismatches:
                self.stderr.write(str(mismatch))
            raise CommandError(f"{len(mismatches)} ledger mismatch(es).")
        self.stdout.write(
            self.style.SUCCESS(
                f"Ledger consistent: {len(PROOFS)} proofs ({', '.join(PROOFS)}) found nothing."
            )
        )
