from django.db import migrations


class Migration(migrations.Migration):
    """Every embedding column depends on pgvector; fail here, early, if the server lacks it."""

    initial = True
    dependencies = []
    operations = [
        migrations.RunSQL("CREATE EXTENSION IF NOT EXISTS vector", reverse_sql=migrations.RunSQL.noop),
    ]
