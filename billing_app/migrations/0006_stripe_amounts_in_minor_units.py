from decimal import Decimal

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("billing_app", "0005_idempotency_keys")]

    operations = [
        migrations.RenameField(model_name="stripeusagecarry", old_name="quantity", new_name="minor_units"),
        migrations.AlterField(
            model_name="stripeusagecarry",
            name="minor_units",
            field=models.DecimalField(
                decimal_places=12,
                default=Decimal("0"),
                help_text="Overage money claimed, in minor units, exact.",
                max_digits=24,
            ),
        ),
        migrations.AlterField(
            model_name="stripeusagecarry",
            name="value",
            field=models.BigIntegerField(default=0, help_text="Whole minor units put into meter events."),
        ),
        migrations.AddField(
            model_name="stripemeterevent",
            name="amount",
            field=models.DecimalField(
                decimal_places=12,
                default=Decimal("0"),
                help_text="Exact overage money of the outbox rows, in the currency.",
                max_digits=24,
            ),
        ),
        migrations.AlterField(
            model_name="stripemeterevent",
            name="value",
            field=models.BigIntegerField(help_text="Whole minor units of money sent to Stripe."),
        ),
    ]
