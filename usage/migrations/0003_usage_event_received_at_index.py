"""Index the ledger by (customer, received_at) for the circuit breaker's "usage in the last hour".

The ledger is the largest table and ingest writes to it all the time, so the index is built CONCURRENTLY
(no write lock; hence ``atomic = False``).
"""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("usage", "0002_append_only_ledger"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="usageevent",
            index=models.Index(fields=["customer", "received_at"], name="usage_usage_custome_162dec_idx"),
        ),
    ]
