"""ModelVersion.batching: the upload-time probe that decides whether a job may split rows into batches.

Versions registered before it are probed here from their stored files, so they keep
running in batches where that is safe; a file that cannot be read gets no record and
runs whole (never split), the safe side.
"""

import logging

from django.db import migrations, models

logger = logging.getLogger(__name__)


def probe_existing_versions(apps, schema_editor):
    import onnxruntime as ort

    from workers.onnx_models import TensorSpec, probe_batching

    ModelVersion = apps.get_model("registry", "ModelVersion")
    for version in ModelVersion.objects.filter(batching={}).iterator():
        try:
            with version.file.open("rb") as handle:
                session = ort.InferenceSession(handle.read(), providers=["CPUExecutionProvider"])
            inputs = [TensorSpec.from_dict(spec) for spec in version.signature.get("inputs", [])]
            version.batching = probe_batching(session, inputs)
        except Exception:  # a missing or unloadable file: no record, so the version runs whole
            logger.exception("registry.batching_probe_failed", extra={"version_id": version.pk})
            continue
        version.save(update_fields=["batching"])


class Migration(migrations.Migration):
    dependencies = [
        ("registry", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="modelversion",
            name="batching",
            field=models.JSONField(
                blank=True,
                default=dict,
                help_text="The upload-time probe: {batch_axis, rows_independent, split, zero_rows, reason}; "
                "rows are split into batches only where split is true.",
            ),
        ),
        migrations.RunPython(probe_existing_versions, migrations.RunPython.noop),
    ]
