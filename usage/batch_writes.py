"""Writing a batch's rows in bulk: events, ledger rows, grants, wallet, period totals, rollups, outbox.

``usage.recording`` decides usage customer by customer and gathers what it writes in a
``BatchWrites``; ``flush`` writes each table with one statement for the whole batch. The hot path
is a batch of 1,000 events, so events are plain rows (no model instance each), inserted by COPY on
PostgreSQL, and the database sums the daily rollups from the rows just written.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

from django.db import connection
from django.db.models import BooleanField, Count, F, Q, QuerySet, Sum
from django.db.models.expressions import RawSQL
from django.db.models.functions import Coalesce, TruncDate

from core.sql_rows import Statement, rows_insert_statement, rows_update_statements, writes_run
from usage.models import (
    CreditGrant,
    CreditLedgerEntry,
    CustomerBalance,
    DailyUsageRollup,
    PeriodUsage,
    StripeUsageOutbox,
    UsageEvent,
)
from usage.overage import ZERO, overage_quantity_sql
from usage.signals import wallet_drawn_on_commit


@dataclass(slots=True)
class NewUsageEvent:
    """A usage event decided but not yet written: the columns of ``UsageEvent``, without a model instance.

    A batch of 1,000 events builds no model objects for its events: building and saving them
    through the ORM was a third of a batch's time. ``id`` is set when the batch is written.
    """

    customer_id: int
    meter_id: int
    member_id: int | None
    idempotency_key: str
    quantity: Decimal
    properties: str  # as JSON
    timestamp: datetime
    received_at: datetime
    period_start: datetime
    action: str
    dimension_value: str
    billable: bool
    reservation_id: Any
    cost_unit: str
    cost: Decimal
    included_quantity: Decimal
    credits_amount: Decimal
    wallet_amount: Decimal
    overage_amount: Decimal
    fingerprint: str | None = None  # of the event as the client sent it (``usage.validation``)
    wallet_money: Decimal = ZERO  # what the wallet paid, in money (``UsageEvent.wallet_money``)
    money_grant_credits: Decimal = ZERO  # of credits_amount, paid by monetary grants
    money_grant_amount: Decimal = ZERO  # the money those grants gave
    serving_cost: Decimal = ZERO  # what serving it cost us, in the operator's currency
    # Set on a correction only (``usage.corrections``): the event it corrects, why, by whom, what it went past.
    corrects_id: int | None = None
    correction_reason: str = ""
    corrected_by: str = ""
    correction_flags: str = ""
    id: int | None = None

    def written_id(self) -> int:
        if self.id is None:
            raise RuntimeError("The event has no id before the batch is written.")
        return self.id

    def as_model(self) -> UsageEvent:
        fields = {name: getattr(self, name) for name in EVENT_COLUMNS}
        fields["properties"] = json.loads(self.properties)
        return UsageEvent(id=self.id, **fields)


EVENT_COLUMNS = tuple(name for name in NewUsageEvent.__dataclass_fields__ if name != "id")


class BatchWrites:
    """The rows a batch writes, gathered customer by customer and written with one statement each.

    Events get their ids when they are written; ledger and outbox rows gathered before then keep
    the event they point at and take its id in ``flush``.
    """

    def __init__(self) -> None:
        self.events: list[NewUsageEvent] = []
        self.ledger_entries: list[tuple[CreditLedgerEntry, NewUsageEvent]] = []
        self.grants: list[CreditGrant] = []
        self.balances: list[CustomerBalance] = []
        self.period_rows: list[PeriodUsage] = []
        self.outbox: list[tuple[StripeUsageOutbox, NewUsageEvent]] = []

    def flush(self, *, also: Sequence[Statement] = ()) -> None:
        """The events first (the other rows point at them), then everything else in one round trip, with
        ``also`` last: a caller's own write that follows the batch's."""
        events_insert(self.events)
        for entry, event in self.ledger_entries:
            entry.usage_event_id = event.written_id()
        for row, event in self.outbox:
            row.last_event_id = event.written_id()
        writes_run(
            [
                *rows_insert_statement([entry for entry, _ in self.ledger_entries]),
                *rows_update_statements(self.grants, ["remaining"]),
                *rows_update_statements(self.balances, ["wallet_balance", "updated_at"]),
                *period_totals_statement(self.period_rows),
                *rollups_add_statement(self.events),
                *rows_insert_statement([row for row, _ in self.outbox]),
                *also,
            ]
        )
        wallet_drawn_on_commit(self.balances)


def events_insert(events: list[NewUsageEvent]) -> None:
    """Insert the batch's events by COPY, with their ids taken from the sequence first."""
    if not events:
        return
    table = UsageEvent._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
            [table, len(events)],
        )
        for event, (pk,) in zip(events, cursor.fetchall(), strict=True):
            event.id = pk
        columns = ("id", *EVENT_COLUMNS)
        with cursor.cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for event in events:
                copy.write_row([getattr(event, name) for name in columns])


# --- period totals -------------------------------------------------------------------------------


PERIOD_KEY = ("customer_id", "meter_id", "period_start")
PERIOD_TOTALS = (
    "period_end",
    "unit",
    "quantity",
    "non_billable_quantity",
    "event_count",
    "cost",
    "included_quantity",
    "credits_amount",
    "wallet_amount",
    "overage_amount",
    "serving_cost",
)


def period_totals_statement(rows: list[PeriodUsage]) -> list[Statement]:
    """The write of the period totals a batch changed, new or not, in one statement (none for no row).

    The totals are the consumption engine's, read under the customer's lock, so they overwrite what is stored.
    """
    if not rows:
        return []
    columns = (*PERIOD_KEY, *PERIOD_TOTALS)
    concrete = {field.attname: field for field in PeriodUsage._meta.concrete_fields}
    fields = [concrete[name] for name in columns]
    table = PeriodUsage._meta.db_table
    values = ", ".join(["(" + ", ".join(["%s"] * len(columns)) + ")"] * len(rows))
    # Only constant names are formatted in; every value is a parameter.
    sql = (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES {values} "  # noqa: S608
        f"ON CONFLICT ({', '.join(PERIOD_KEY)}) DO UPDATE SET "
        + ", ".join(f"{name} = EXCLUDED.{name}" for name in PERIOD_TOTALS)
    )
    params = [
        field.get_db_prep_save(getattr(row, field.attname), connection) for row in rows for field in fields
    ]
    return [(sql, params)]


# --- daily rollups -------------------------------------------------------------------------------


# A day can belong to two periods (a plan change opens a new one mid-day): the period is part of the key.
ROLLUP_KEY = ("customer_id", "meter_id", "member_id", "action", "dimension_value", "period_start", "day")
ROLLUP_TOTALS = (
    "quantity",
    "billable_quantity",
    "overage_quantity",
    "event_count",
    "cost",
    "overage_amount",
    "serving_cost",
)


def rollups_add_statement(events: list[NewUsageEvent]) -> list[Statement]:
    """The statement that adds the batch's events, once written, to their daily rollups (none for no event).

    The database sums the rows just written per rollup key: a batch may touch as many rollups as
    it has events, and sending them all as parameters cost more than the sums.
    """
    if not events:
        return []
    sql, params = _rollups_upsert_sql()
    ids = [event.written_id() for event in events]
    # The batch's time span lets PostgreSQL read only the months it falls in, not every partition.
    span = {
        _EVENT_IDS: ids,
        _FIRST_TIMESTAMP: min(event.timestamp for event in events),
        _LAST_TIMESTAMP: max(event.timestamp for event in events),
    }
    return [(sql, [span.get(param, param) if isinstance(param, _Slot) else param for param in params])]


def _rollup_deltas(written: QuerySet[UsageEvent]) -> QuerySet[UsageEvent, dict[str, Any]]:
    """The events summed per rollup key; each total of the rollup is named ``add_<total>``."""
    billable = Q(billable=True)
    billable_units = F("quantity") - F("included_quantity")
    return (
        written.annotate(day=TruncDate("timestamp", tzinfo=UTC))  # UTC days, whatever offset was sent
        .values(*ROLLUP_KEY)
        .annotate(
            add_quantity=Sum("quantity"),
            add_billable_quantity=Coalesce(Sum(billable_units, filter=billable), ZERO),
            add_overage_quantity=Coalesce(Sum(overage_quantity_sql(), filter=billable), ZERO),
            add_event_count=Count("id"),
            add_cost=Coalesce(Sum("cost", filter=billable), ZERO),
            add_overage_amount=Coalesce(Sum("overage_amount", filter=billable), ZERO),
            # Every event's serving cost, billable or not: a cache hit is free to the customer, not to us.
            add_serving_cost=Coalesce(Sum("serving_cost"), ZERO),
        )
        .order_by()
    )


class _Slot:
    """Stands for a batch's value in the compiled statement, whose other parameters are constants."""


_EVENT_IDS, _FIRST_TIMESTAMP, _LAST_TIMESTAMP = _Slot(), _Slot(), _Slot()


@lru_cache(maxsize=1)
def _rollups_upsert_sql() -> tuple[str, list[Any]]:
    """The upsert, compiled once per process: compiling the aggregate took longer than running it."""
    table = DailyUsageRollup._meta.db_table
    events = UsageEvent._meta.db_table
    written = UsageEvent.objects.filter(
        RawSQL(  # noqa: S611
            f"{events}.id = ANY(%s) AND {events}.timestamp BETWEEN %s AND %s",
            (_EVENT_IDS, _FIRST_TIMESTAMP, _LAST_TIMESTAMP),
            output_field=BooleanField(),
        )
    )
    select, params = _rollup_deltas(written).query.get_compiler(connection=connection).as_sql()
    columns = (*ROLLUP_KEY, *ROLLUP_TOTALS)
    sources = (*ROLLUP_KEY, *(f"add_{name}" for name in ROLLUP_TOTALS))
    # Only constant names and the compiled query are formatted in; every value is a parameter.
    sql = (
        f"INSERT INTO {table} ({', '.join(columns)}) "  # noqa: S608
        f"SELECT {', '.join(sources)} FROM ({select}) AS batch "
        f"ON CONFLICT ({', '.join(ROLLUP_KEY)}) DO UPDATE SET "
        + ", ".join(f"{name} = {table}.{name} + EXCLUDED.{name}" for name in ROLLUP_TOTALS)
    )
    return sql, list(params)
