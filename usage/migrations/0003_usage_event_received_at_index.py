"""Index the ledger by (customer, received_at) for the circuit breaker's "usage in the last hour".

The ledger is the largest table and ingest writes to it all the time, so on PostgreSQL the index is built
CONCURRENTLY (no write lock; hence ``atomic = False``). SQLite, the embedded default, builds it plainly.
"""

from django.db import migrations, models


class AddIndexConcurrentlyOnPostgres(migrations.AddIndex):
    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        model = to_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            schema_editor.add_index(model, self.index, concurrently=True)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return super().database_backwards(app_label, schema_editor, from_state, to_state)
        model = from_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            schema_editor.remove_index(model, self.index, concurrently=True)


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("usage", "0002_append_only_ledger"),
    ]

    operations = [
        AddIndexConcurrentlyOnPostgres(
            model_name="usageevent",
            index=models.Index(fields=["customer", "received_at"], name="usage_usage_custome_162dec_idx"),
        ),
    ]
