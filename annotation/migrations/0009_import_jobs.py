# Import jobs (issue 17, part 2): imports run in the background and report their progress.

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("annotation", "0008_gold_and_consensus"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='ImportJob',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('state', models.CharField(choices=[('queued', 'Queued'), ('running', 'Running'), ('succeeded', 'Succeeded'), ('rejected', 'Rejected'), ('failed', 'Failed'), ('cancelled', 'Cancelled')], default='queued', max_length=10)),
                ('filename', models.CharField(help_text="The uploaded file's name, as the user's browser gave it.", max_length=255)),
                ('upload', models.CharField(help_text="The bundle's path on the server; removed when the import ends.", max_length=500)),
                ('size_bytes', models.PositiveBigIntegerField(default=0)),
                ('options', models.JSONField(default=dict, help_text='mode, format, manifest, split, limit, heldout')),
                ('progress', models.JSONField(default=dict, help_text="phase, fraction and the report's counts so far")),
                ('report', models.JSONField(blank=True, null=True)),
                ('error', models.TextField(blank=True)),
                ('cancel_requested', models.BooleanField(default=False)),
                ('worker', models.CharField(blank=True, help_text='host:pid of the process running the import', max_length=200)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('started_at', models.DateTimeField(blank=True, null=True)),
                ('heartbeat_at', models.DateTimeField(blank=True, null=True)),
                ('finished_at', models.DateTimeField(blank=True, null=True)),
                ('created_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                ('project', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='import_jobs', to='annotation.project')),
            ],
            options={
                'indexes': [models.Index(fields=['project', '-created_at'], name='importjob_project_created')],
            },
        ),
    ]
