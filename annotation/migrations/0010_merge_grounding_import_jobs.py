# Merges the two migrations that both follow 0008 (grounding task types, import jobs), so that the
# migration graph has one leaf.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("annotation", "0009_grounding"),
        ("annotation", "0009_import_jobs"),
    ]

    operations = []
