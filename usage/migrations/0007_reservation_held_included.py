from decimal import Decimal

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('usage', '0006_rollup_key_has_period'),
    ]

    operations = [
        migrations.AddField(
            model_name='reservation',
            name='held_included',
            field=models.DecimalField(db_default=Decimal('0'), decimal_places=6, default=Decimal('0'), max_digits=24),
        ),
    ]
