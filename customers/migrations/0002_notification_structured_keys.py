"""Notifications are told once per limit amount or frozen hour, kept as values instead of formatted text."""

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from django.db import migrations, models
from django.db.models import Q

LIMIT_KINDS = ("soft_limit_crossed", "hard_limit_reached")


def threshold_to_values(apps, schema_editor):
    Notification = apps.get_model("customers", "Notification")
    for notification in Notification.objects.exclude(threshold=""):
        if notification.kind in LIMIT_KINDS:
            try:
                notification.limit = Decimal(notification.threshold)
            except InvalidOperation:
                continue
        elif notification.kind == "account_frozen":
            try:
                notification.frozen_hour = datetime.strptime(notification.threshold, "%Y-%m-%dT%H").replace(
                    tzinfo=UTC
                )
            except ValueError:
                continue
        else:
            continue
        notification.save(update_fields=["limit", "frozen_hour"])


def values_to_threshold(apps, schema_editor):
    Notification = apps.get_model("customers", "Notification")
    for notification in Notification.objects.filter(Q(limit__isnull=False) | Q(frozen_hour__isnull=False)):
        if notification.limit is not None:
            notification.threshold = f"{notification.limit:f}"
        else:
            notification.threshold = notification.frozen_hour.astimezone(UTC).strftime("%Y-%m-%dT%H")
        notification.save(update_fields=["threshold"])


class Migration(migrations.Migration):
    dependencies = [
        ("customers", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="notification",
            name="limit",
            field=models.DecimalField(
                blank=True,
                decimal_places=4,
                help_text="The spend limit crossed, in the plan currency.",
                max_digits=18,
                null=True,
            ),
        ),
        migrations.AddField(
            model_name="notification",
            name="frozen_hour",
            field=models.DateTimeField(blank=True, help_text="The hour the account was frozen in.", null=True),
        ),
        migrations.RemoveConstraint(model_name="notification", name="notification_once_per_period"),
        migrations.RunPython(threshold_to_values, values_to_threshold),
        migrations.RemoveField(model_name="notification", name="threshold"),
        migrations.AddConstraint(
            model_name="notification",
            constraint=models.UniqueConstraint(
                condition=models.Q(("limit__isnull", False)),
                fields=("customer", "kind", "period_start", "limit"),
                name="notification_limit_once_per_period",
            ),
        ),
        migrations.AddConstraint(
            model_name="notification",
            constraint=models.UniqueConstraint(
                condition=models.Q(("frozen_hour__isnull", False)),
                fields=("customer", "kind", "period_start", "frozen_hour"),
                name="notification_freeze_once_per_hour",
            ),
        ),
    ]
