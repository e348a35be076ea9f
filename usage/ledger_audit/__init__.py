"""Proof that the ledger agrees with itself: what ``manage.py ledger_check`` runs.

Each proof reads the rows as stored and returns what disagrees; an empty list is the proof. They are
separate functions, each in a module of this package, so a test can ask for one family at a time
(``tests/usage/test_simulation.py``):

- ``cached_total_mismatches``: every cached balance and period total equals the rows it summarizes;
- ``event_split_mismatches``: every event's recorded split adds up to its cost, and the draw-down rows a
  write left equal the credits and wallet shares of the events it recorded;
- ``overage_outbox_mismatches``: post-paid overage, give-backs netted, equals what the Stripe outbox holds;
- ``rollup_mismatches``: the daily rollups equal their events, per day and billing period;
- ``balance_mismatches``: no balance is negative and no open hold keeps more than its sources have;
- ``correction_mismatches``: no event is corrected below zero, and a correction corrects an original event of
  its own customer, meter and period;
- ``event_reference_mismatches``: what the database cannot enforce on the partitioned usage ledger: every
  reference to an event finds it, every event has its idempotency key, and a reservation has one event.

Once retention has detached months of the ledger (``usage.partitions``), the totals are proved for the billing
periods that start in the months still attached (``retained_since``): older periods lost some of their events.

Decimals are compared exactly: PostgreSQL sums them exactly, and the engine quantizes each amount once
(``core.money.ledger_amount``), so a total and its rows agree to the last digit or something is wrong.
"""

from collections.abc import Callable
from datetime import datetime

from django.utils import timezone

from usage.ledger_audit.balances import balance_mismatches
from usage.ledger_audit.common import Mismatch
from usage.ledger_audit.corrections import correction_mismatches
from usage.ledger_audit.outbox import overage_outbox_mismatches
from usage.ledger_audit.references import event_reference_mismatches
from usage.ledger_audit.rollups import rollup_mismatches
from usage.ledger_audit.splits import event_split_mismatches
from usage.ledger_audit.totals import cached_total_mismatches

# The proofs by family, in the order ``ledger_check`` reports them.
PROOFS: dict[str, Callable[[datetime], list[Mismatch]]] = {
    "cached_totals": cached_total_mismatches,
    "event_split": event_split_mismatches,
    "overage_outbox": overage_outbox_mismatches,
    "rollups": rollup_mismatches,
    "balances": balance_mismatches,
    "corrections": correction_mismatches,
    "event_references": event_reference_mismatches,
}


def ledger_mismatches(*, now: datetime | None = None) -> list[Mismatch]:
    """Everything any proof finds wrong; empty when the ledger is consistent."""
    now = now or timezone.now()
    return [mismatch for proof in PROOFS.values() for mismatch in proof(now)]


__all__ = [
    "PROOFS",
    "Mismatch",
    "balance_mismatches",
    "cached_total_mismatches",
    "correction_mismatches",
    "event_reference_mismatches",
    "event_split_mismatches",
    "ledger_mismatches",
    "overage_outbox_mismatches",
    "rollup_mismatches",
]
