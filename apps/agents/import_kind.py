"""The `memory_import` job kind: memories from an uploaded JSONL/CSV file, embedded in batches, with progress."""

from pathlib import Path

from django.conf import settings
from django.db import OperationalError
from rest_framework import serializers

from apps.core import artifact_storage
from apps.jobs.kinds import JobKind, PermanentJobError
from project import queues
from workers.memory_file import FORMATS, MemoryFileError, detect_format, read_memory_rows


def _read(path: Path, fmt: str):
    from apps.agents.models import MemoryKind

    return read_memory_rows(
        path,
        fmt,
        dimension=settings.AGENTS_EMBEDDING_DIM,
        kinds=tuple(MemoryKind.values),
        default_kind=MemoryKind.OBSERVATION,
        max_rows=settings.AGENTS_IMPORT_MAX_ROWS,
    )


class MemoryImportParams(serializers.Serializer):
    agent_id = serializers.IntegerField(min_value=1, help_text="The agent the memories belong to.")
    source = serializers.CharField(
        help_text="The uploaded file as stored by POST /api/v1/agents/<id>/memories/import (imports/<org>/...)."
    )
    source_sha256 = serializers.RegexField(
        r"^[0-9a-f]{64}$",
        required=False,
        help_text="The stored file's sha256 (filled in at submit when not given); hosts check their copies against it.",
    )
    format = serializers.ChoiceField(choices=FORMATS, required=False, help_text="Default: from the file name.")
    batch_size = serializers.IntegerField(
        min_value=1, max_value=1024, default=64, help_text="Rows embedded and inserted per step (progress, cancel)."
    )
    # Filled in at submit from the checked file and the organization's embedding model.
    rows = serializers.IntegerField(required=False)
    embedding_model = serializers.CharField(required=False, allow_blank=True)
    embedding_model_version_id = serializers.IntegerField(required=False, allow_null=True)

    def validate(self, attrs):
        from apps.agents.embeddings import embedding_model_get
        from apps.agents.models import Agent
        from apps.core.errors import DomainError

        membership = self.context["membership"]
        if not Agent.objects.filter(pk=attrs["agent_id"], organization=membership.organization).exists():
            raise serializers.ValidationError({"agent_id": ["No such agent."]})
        # Only files stored for this organization: `source` must not name any other stored file.
        source = attrs["source"]
        folder = f"imports/{membership.organization_id}/"
        if not (
            artifact_storage.safe_storage_name(source)
            and source.startswith(folder)
            and artifact_storage.stored_exists(source)
        ):
            raise serializers.ValidationError({"source": ["No such uploaded file for this organization."]})
        fmt = attrs.get("format") or detect_format(source)
        if fmt is None:
            raise serializers.ValidationError({"format": ["Give jsonl or csv."]})
        if not attrs.get("source_sha256"):
            attrs["source_sha256"] = artifact_storage.stored_sha256(source)
        try:
            rows = _read(artifact_storage.local_copy(source, sha256=attrs["source_sha256"]), fmt)
        except MemoryFileError as exc:
            raise serializers.ValidationError({"source": exc.errors}) from exc
        except artifact_storage.StoredFileCorrupt as exc:
            raise serializers.ValidationError({"source_sha256": [str(exc)]}) from exc
        attrs.update(format=fmt, rows=len(rows), embedding_model="", embedding_model_version_id=None)
        missing = sum(1 for row in rows if row.embedding is None)
        if missing:
            try:
                version = embedding_model_get(organization=membership.organization)
            except DomainError as exc:
                raise serializers.ValidationError(
                    {"source": [f"{missing} rows have no embedding and cannot be embedded: {exc.message}"]}
                ) from exc
            attrs.update(embedding_model=str(version), embedding_model_version_id=version.pk)
        return attrs


def _execute(context) -> dict:
    from apps.agents.embeddings import embed_with
    from apps.agents.models import Agent, Memory
    from apps.agents.services import memory_import_batch
    from apps.jobs.runner import LeaseLost
    from apps.registry.models import ModelVersion

    params = context.params
    if not Agent.objects.filter(pk=params["agent_id"], organization_id=context.organization_id).exists():
        raise PermanentJobError("agent_gone", "The agent was deleted before its memories were imported.")
    try:
        # Jobs submitted before files were stored by digest carry no source_sha256.
        sha256 = params.get("source_sha256") or artifact_storage.stored_sha256(params["source"])
        rows = _read(artifact_storage.local_copy(params["source"], sha256=sha256), params["format"])
    except (MemoryFileError, FileNotFoundError, artifact_storage.StoredFileCorrupt) as exc:
        raise PermanentJobError("bad_file", f"The import file cannot be read: {exc}") from exc
    done = set(Memory.objects.filter(import_job_id=context.job_id).values_list("import_line", flat=True))
    todo = [row for row in rows if row.line not in done]
    version = None
    if params.get("embedding_model_version_id"):
        version = ModelVersion.objects.select_related("model").filter(pk=params["embedding_model_version_id"]).first()
        if version is None:
            raise PermanentJobError("embedding_model_gone", f"Model {params['embedding_model']} no longer exists.")
    embedded = 0
    batch_size = params["batch_size"]
    for start in range(0, len(todo), batch_size):
        context.raise_if_cancelled()
        batch = todo[start : start + batch_size]
        vectors = [row.embedding for row in batch]
        sources = ["client" if row.embedding is not None else params["embedding_model"] for row in batch]
        need = [i for i, row in enumerate(batch) if row.embedding is None]
        if need:
            computed = embed_with(version, [batch[i].text for i in need])
            for i, vector in zip(need, computed, strict=True):
                vectors[i] = vector
            embedded += len(need)
        if not memory_import_batch(
            job_id=context.job_id,
            attempt=context.attempt,
            agent_id=params["agent_id"],
            rows=batch,
            vectors=vectors,
            sources=sources,
        ):
            raise LeaseLost()
        finished = len(done) + start + len(batch)
        context.report_progress(finished / len(rows), f"{finished}/{len(rows)} memories")
    return {
        "agent_id": params["agent_id"],
        "rows": len(rows),
        "inserted": len(todo),
        "already_imported": len(done),
        "embedded": embedded,
        "embedding_model": params["embedding_model"] or None,
    }


MEMORY_IMPORT = JobKind(
    name="memory_import",
    description="Import an agent's memories from a JSONL or CSV file; rows without a vector are embedded "
    "by the organization's production embedding model.",
    params_serializer=MemoryImportParams,
    execute=_execute,
    pick_queue=lambda params: queues.CPU,
    soft_time_limit_s=3600,
    time_limit_s=3660,
    # Rows are keyed by (job, line), so a retried attempt skips what was inserted: safe to retry.
    transient_errors=(OperationalError, *artifact_storage.TRANSIENT_STORAGE_ERRORS),
)
