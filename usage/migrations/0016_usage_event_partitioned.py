"""The usage ledger becomes a table partitioned by month of ``timestamp``, converting the rows it holds.

A partitioned table's primary and unique keys must include the partition key, so:

- the primary key becomes (id, timestamp); ids stay unique, drawn from one sequence that continues after
  the largest id (and the old sequence's position) so no id is ever given twice;
- (customer, idempotency_key) stays unique in ``usage_usageeventkey``, which a statement-level trigger
  fills with the keys of every row inserted into the ledger, in the same transaction;
- the unique index on ``reservation_id`` becomes a plain index (one event per reservation is kept by the
  commit's key ``reservation:<id>``, see ``UsageEvent.reservation``);
- the foreign keys that point at events (credit ledger, Stripe outbox, corrections) lose their database
  constraint; ``ledger_check`` proves them.

The conversion copies the table's definition as it stands when the migration runs (columns, defaults,
checks, indexes, foreign keys and triggers of the old table), so columns added by earlier migrations come
along. It takes the table's exclusive lock for the copy: on a large ledger, run it in a maintenance window.
Partitions cover every month from the oldest event to three months ahead, plus a default partition; the
``usage_partitions_maintain`` job keeps making them ahead. This code is kept frozen as the migration was
written: the job's own code lives in ``usage.partitions``.
"""

import re
from datetime import UTC, datetime

from django.db import migrations, models
import django.db.models.deletion

TABLE = "usage_usageevent"
OLD = "usage_usageevent_unpartitioned"
KEYS = "usage_usageeventkey"
MONTHS_AHEAD = 3
# Unique constraints of the old table that cannot live on the partitioned one, and where their rule went.
MOVED_UNIQUES = {"usage_usageevent_reservation_id_key"}

KEYS_FUNCTION = f"""
CREATE OR REPLACE FUNCTION usage_event_keys_record() RETURNS trigger AS $$
BEGIN
    INSERT INTO {KEYS} (event_id, customer_id, idempotency_key, timestamp)
    SELECT id, customer_id, idempotency_key, timestamp FROM inserted;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
"""


def _month_start(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def _next_month(start: datetime) -> datetime:
    return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)


def _relocated(definition: str) -> str:
    """An index or trigger definition of the old table, made for the new one."""
    relocated, count = re.subn(rf"\bON (?:\S+\.)?{OLD}\b", f"ON {TABLE}", definition, count=1)
    if count != 1:
        raise RuntimeError(f"Cannot move to the partitioned ledger: {definition}")
    return relocated


def convert(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {TABLE} RENAME TO {OLD}")
        cursor.execute(
            f"""
            SELECT c.conname, c.contype, pg_get_constraintdef(c.oid), c.confrelid = c.conrelid
            FROM pg_constraint c WHERE c.conrelid = '{OLD}'::regclass AND c.contype IN ('p', 'u', 'f')
            """
        )
        constraints = cursor.fetchall()
        unexpected = [name for name, kind, _, _ in constraints if kind == "u" and name not in MOVED_UNIQUES]
        if unexpected:
            raise RuntimeError(
                f"{TABLE} has unique constraints a partitioned table cannot hold: {', '.join(unexpected)}"
            )
        foreign_keys = [(name, definition) for name, kind, definition, to_self in constraints if kind == "f" and not to_self]
        cursor.execute(
            f"""
            SELECT pg_get_indexdef(i.indexrelid), i.indisunique FROM pg_index i
            WHERE i.indrelid = '{OLD}'::regclass
              AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
            """
        )
        indexes = cursor.fetchall()
        if any(unique for _, unique in indexes):
            raise RuntimeError(f"{TABLE} has unique indexes a partitioned table cannot hold")
        cursor.execute(
            f"SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = '{OLD}'::regclass AND NOT tgisinternal"
        )
        triggers = [definition for (definition,) in cursor.fetchall()]
        cursor.execute(f"SELECT min(timestamp), max(timestamp), max(id) FROM {OLD}")
        oldest, newest, max_id = cursor.fetchone()
        cursor.execute(f"SELECT pg_get_serial_sequence('{OLD}', 'id')")
        (old_sequence,) = cursor.fetchone()
        next_id = max_id or 0
        if old_sequence:
            cursor.execute(f"SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM {old_sequence}")
            next_id = max(next_id, cursor.fetchone()[0])

        # Columns, defaults, NOT NULLs and checks as they are now; the identity of ``id`` becomes a sequence
        # below (PostgreSQL 15 has no identity columns on partitioned tables).
        cursor.execute(
            f"CREATE TABLE {TABLE} (LIKE {OLD} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE "
            "INCLUDING COMMENTS INCLUDING GENERATED) PARTITION BY RANGE (timestamp)"
        )
        now = datetime.now(UTC)
        month = _month_start(min(oldest or now, now))
        last = _month_start(max(newest or now, now))
        for _ in range(MONTHS_AHEAD):
            last = _next_month(last)
        while month <= last:
            end = _next_month(month)
            cursor.execute(
                f"CREATE TABLE {TABLE}_y{month:%Y}m{month:%m} PARTITION OF {TABLE} "
                "FOR VALUES FROM (%s) TO (%s)",
                [month, end],
            )
            month = end
        cursor.execute(f"CREATE TABLE {TABLE}_default PARTITION OF {TABLE} DEFAULT")

        cursor.execute(f"INSERT INTO {TABLE} SELECT * FROM {OLD}")
        cursor.execute(
            f"INSERT INTO {KEYS} (event_id, customer_id, idempotency_key, timestamp) "
            f"SELECT id, customer_id, idempotency_key, timestamp FROM {OLD}"
        )
        # Its sequence, triggers and the foreign keys that pointed at it go with it.
        cursor.execute(f"DROP TABLE {OLD}")

        cursor.execute(f"ALTER TABLE {TABLE} ADD CONSTRAINT {TABLE}_pkey PRIMARY KEY (id, timestamp)")
        for definition, _ in indexes:
            cursor.execute(_relocated(definition))
        cursor.execute(f"CREATE INDEX {TABLE}_reservation_id ON {TABLE} (reservation_id)")
        for name, definition in foreign_keys:
            cursor.execute(f"ALTER TABLE {TABLE} ADD CONSTRAINT {name} {definition}")
        cursor.execute(f"CREATE SEQUENCE {TABLE}_id_seq AS bigint OWNED BY {TABLE}.id")
        if next_id:
            cursor.execute(f"SELECT setval('{TABLE}_id_seq', %s)", [next_id])
        cursor.execute(f"ALTER TABLE {TABLE} ALTER COLUMN id SET DEFAULT nextval('{TABLE}_id_seq')")

        # The append-only trigger (and any other): a row trigger on a partitioned table applies to every
        # partition, those made later included.
        for definition in triggers:
            cursor.execute(_relocated(definition))
        cursor.execute(KEYS_FUNCTION)
        cursor.execute(
            f"CREATE TRIGGER {TABLE}_keys AFTER INSERT ON {TABLE} REFERENCING NEW TABLE AS inserted "
            "FOR EACH STATEMENT EXECUTE FUNCTION usage_event_keys_record()"
        )
        # A key, once taken, is never given back or changed.
        cursor.execute(
            f"CREATE TRIGGER {KEYS}_append_only BEFORE UPDATE OR DELETE ON {KEYS} "
            "FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change()"
        )
        cursor.execute(f"ANALYZE {TABLE}")
        cursor.execute(f"ANALYZE {KEYS}")


def refuse_reverse(apps, schema_editor):
    raise RuntimeError(
        "The partitioned usage ledger is not converted back to one table: restore the backup taken before "
        "migrating, or copy the rows of usage_usageevent into a table of your own first."
    )


class Migration(migrations.Migration):
    dependencies = [
        ("customers", "0009_spend_controls_meter_limits"),
        ("usage", "0015_usage_corrections"),
    ]

    operations = [
        migrations.AlterField(
            model_name="creditledgerentry",
            name="usage_event",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="ledger_entries",
                to="usage.usageevent",
            ),
        ),
        migrations.AlterField(
            model_name="stripeusageoutbox",
            name="last_event",
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="usage.usageevent",
            ),
        ),
        migrations.AlterField(
            model_name="usageevent",
            name="corrects",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="corrections",
                to="usage.usageevent",
            ),
        ),
        migrations.RemoveConstraint(model_name="usageevent", name="usage_event_idempotency_unique"),
        migrations.CreateModel(
            name="DetachedUsagePartition",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("table_name", models.CharField(max_length=63, unique=True)),
                ("range_start", models.DateTimeField()),
                ("range_end", models.DateTimeField()),
                ("event_count", models.PositiveBigIntegerField()),
                ("detached_at", models.DateTimeField()),
            ],
            options={"ordering": ["range_start"]},
        ),
        migrations.CreateModel(
            name="UsageEventKey",
            fields=[
                (
                    "event",
                    models.OneToOneField(
                        db_constraint=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        primary_key=True,
                        related_name="key",
                        serialize=False,
                        to="usage.usageevent",
                    ),
                ),
                ("idempotency_key", models.CharField(max_length=255)),
                ("timestamp", models.DateTimeField()),
                (
                    "customer",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT, related_name="+", to="customers.customer"
                    ),
                ),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(
                        fields=("customer", "idempotency_key"), name="usage_event_idempotency_unique"
                    )
                ]
            },
        ),
        migrations.RunPython(convert, refuse_reverse),
    ]
