"""Files: where an attempt writes, recording what it produced (fenced), and uploaded inputs."""

import hashlib
import logging
import tempfile
import uuid
from functools import partial
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.db import IntegrityError, transaction

from apps.accounts.models import Membership
from apps.accounts.permissions import SUBMIT_JOBS, has_permission
from apps.core import artifact_storage
from apps.core.errors import DomainError, PermissionDenied
from apps.jobs.models import (
    ACTIVE_STATUSES,
    Artifact,
    ArtifactRole,
    Job,
)
from workers import array_files

logger = logging.getLogger(__name__)


def job_output_workdir(*, job_id, attempt: int):
    """A private local folder where an attempt writes its files before they are stored (removed on exit).

    On this host's disk, never in the storage: nothing another host (or the web) sees is half-written.
    """
    return artifact_storage.local_workdir(prefix=f"job-{job_id}-attempt-{attempt}-")


def job_output_name(*, job_id, attempt: int, name: str) -> str:
    """The storage name of an attempt's output: one folder per job, one per attempt (the orphan sweep reads it)."""
    return f"artifacts/{job_id}/attempt-{attempt}/{name}"


def _holds(job_id, attempt: int) -> bool:
    return Job.objects.filter(pk=job_id, attempt=attempt, status__in=ACTIVE_STATUSES).exists()


def job_artifact_add(
    *,
    job_id: uuid.UUID,
    attempt: int,
    path: Path,
    name: str,
    sha256: str,
    content_type: str = "application/octet-stream",
    role: str = "output",
) -> bool:
    """Store the local file `path` as the job's artifact `name`, only while `attempt` still holds the job.

    Fenced like every worker write: an attempt that no longer holds the job stores nothing (checked
    first, so it does not upload), and when it loses the job during the upload, the uploaded
    object is deleted and no row names it. Returns whether the artifact was recorded. The
    artifact this one replaces (an earlier attempt's, same name) loses its file once this commits.
    """
    if not _holds(job_id, attempt):
        return False
    size = path.stat().st_size
    stored = artifact_storage.store_local_file(
        job_output_name(job_id=job_id, attempt=attempt, name=name), path, move=True
    )
    try:
        with transaction.atomic():
            holder = Job.objects.select_for_update().filter(pk=job_id, attempt=attempt, status__in=ACTIVE_STATUSES)
            owner = holder.values_list("organization_id", "owner_id").first()
            if owner is not None:
                replaced = list(
                    Artifact.objects.filter(job_id=job_id, role=role, name=name)
                    .exclude(file=stored)
                    .values_list("file", flat=True)
                )
                Artifact.objects.filter(job_id=job_id, role=role, name=name).delete()
                Artifact.objects.create(
                    organization_id=owner[0],
                    owner_id=owner[1],
                    job_id=job_id,
                    role=role,
                    name=name,
                    file=stored,
                    size_bytes=size,
                    sha256=sha256,
                    content_type=content_type,
                    attempt=attempt,
                )
                transaction.on_commit(partial(artifact_storage.delete_stored, replaced))
    except BaseException:
        artifact_storage.delete_stored([stored])
        raise
    if owner is None:
        # Fenced out while uploading: the attempt's object is never attached, and goes now.
        artifact_storage.delete_stored([stored])
        logger.info("artifact.fenced_out", extra={"job_id": str(job_id), "attempt": attempt, "storage_name": stored})
        return False
    return True


ARRAY_CONTENT_TYPES = {"npy": "application/x-npy", "npz": "application/x-npz"}


def artifact_upload(*, membership: Membership, source, name: str) -> tuple[Artifact, bool]:
    """Store a `.npy`/`.npz` file as the organization's input artifact, for jobs to name (`inputs_artifact`).

    `source` is a path or a readable binary file. The file is read once while it is
    staged (sha256 and size limit), then every array header is read and every member's
    CRC checked; object arrays (pickle) are refused. Returns (artifact, created): the same
    bytes uploaded again give back the first upload. A refused upload leaves no row and no file.
    """
    if not has_permission(membership, SUBMIT_JOBS):
        raise PermissionDenied(f"Role '{membership.role}' may not upload job inputs.")
    name = Path(str(name or "")).name
    if not name.lower().endswith((".npy", ".npz")) or len(name) > 200:
        message = f"The name must end in .npy or .npz (at most 200 characters); got '{name[:200]}'."
        raise DomainError(f"file: {message}", fields={"file": [message]})
    limit = settings.ARTIFACTS_MAX_UPLOAD_BYTES
    with tempfile.TemporaryDirectory(prefix="artifact-upload-") as workdir:
        staged = Path(workdir) / "upload"
        digest = hashlib.sha256()
        size = 0
        chunks = _source_chunks(source)
        with staged.open("wb") as out:
            for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    # Stop reading: a huge upload is refused without landing on disk whole.
                    raise DomainError(
                        f"file: larger than the limit of {limit} bytes.",
                        fields={"file": [f"At most {limit} bytes (ARTIFACTS_MAX_UPLOAD_BYTES)."]},
                        details={"code": "too_large"},
                    )
                digest.update(chunk)
                out.write(chunk)
        try:
            file_format = array_files.array_file_format(staged)
            if file_format != name.lower().rsplit(".", 1)[-1]:
                raise array_files.ArrayFileError(f"the file is a .{file_format} but is named {name}")
            array_files.verify(staged)
            headers = array_files.read_headers(staged)
        except array_files.ArrayFileError as exc:
            raise DomainError(f"file: {exc.message}", fields={"file": [exc.message]}) from exc
        sha256 = digest.hexdigest()
        meta = {"format": file_format, "arrays": {key: header.to_dict() for key, header in headers.items()}}
        with transaction.atomic():
            existing = Artifact.objects.filter(
                organization=membership.organization, job__isnull=True, sha256=sha256
            ).first()
            if existing is not None:
                return existing, False
            artifact = Artifact(
                organization=membership.organization,
                owner=membership.user,
                role=ArtifactRole.INPUT,
                name=name,
                content_type=ARRAY_CONTENT_TYPES[file_format],
                size_bytes=size,
                sha256=sha256,
                meta=meta,
            )
            storage_name = f"artifacts/uploads/{membership.organization.slug}/{sha256[:2]}/{sha256}.{file_format}"
            with staged.open("rb") as handle:
                artifact.file.save(storage_name, File(handle), save=False)
            # The submit check on this host reads its headers from here instead of fetching it back.
            artifact_storage.local_cache_put(staged, sha256=sha256, name=artifact.file.name)
            try:
                with transaction.atomic():
                    artifact.save()
            except IntegrityError:
                # The same bytes were uploaded at the same moment: theirs is kept, this copy goes.
                artifact.file.storage.delete(artifact.file.name)
                kept = Artifact.objects.get(organization=membership.organization, job__isnull=True, sha256=sha256)
                return kept, False
            except Exception:
                artifact.file.storage.delete(artifact.file.name)
                raise
    logger.info(
        "artifact.uploaded",
        extra={"artifact_id": str(artifact.id), "organization_id": membership.organization_id, "size_bytes": size},
    )
    return artifact, True


def _source_chunks(source):
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise DomainError(f"file: no such file {path}.", fields={"file": ["No such file."]})

        def read_file():
            with path.open("rb") as handle:
                yield from iter(lambda: handle.read(1 << 20), b"")

        return read_file()
    if hasattr(source, "chunks"):
        return source.chunks()
    return iter(lambda: source.read(1 << 20), b"")
