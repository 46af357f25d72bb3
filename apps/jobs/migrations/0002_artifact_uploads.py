"""Artifacts uploaded as job inputs: owned by an organization, not (yet) by a job."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def organization_from_job(apps, schema_editor):
    Artifact = apps.get_model("jobs", "Artifact")
    Job = apps.get_model("jobs", "Job")
    Artifact.objects.update(
        organization_id=models.Subquery(Job.objects.filter(pk=models.OuterRef("job_id")).values("organization_id"))
    )


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("jobs", "0001_initial"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="artifact",
            name="organization",
            field=models.ForeignKey(
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="artifacts",
                to="accounts.organization",
            ),
        ),
        migrations.RunPython(organization_from_job, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="artifact",
            name="organization",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT, related_name="artifacts", to="accounts.organization"
            ),
        ),
        migrations.AddField(
            model_name="artifact",
            name="owner",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AddField(
            model_name="artifact",
            name="meta",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.AlterField(
            model_name="artifact",
            name="job",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="artifacts",
                to="jobs.job",
            ),
        ),
        migrations.AddConstraint(
            model_name="artifact",
            constraint=models.UniqueConstraint(
                condition=models.Q(("job__isnull", True)),
                fields=("organization", "sha256"),
                name="artifact_upload_unique_sha256_per_org",
            ),
        ),
        migrations.AddConstraint(
            model_name="artifact",
            constraint=models.CheckConstraint(
                condition=models.Q(("job__isnull", False), ("role", "input"), _connector="OR"),
                name="artifact_upload_is_input",
            ),
        ),
    ]
