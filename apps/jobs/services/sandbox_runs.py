"""Runs reported by hosts without database access (sandbox): start, output chunks, outcome."""

import base64
import hashlib
import logging
import uuid

from apps.core import artifact_storage
from apps.jobs.models import (
    ACTIVE_STATUSES,
    Artifact,
    Job,
    JobStatus,
)
from apps.jobs.sandbox_kind import (
    REMOTE_STREAM,
    SUCCESS_VERDICTS,
    sandbox_announced_artifacts,
    sandbox_lease_wall_seconds,
    sandbox_outcome_for_storage,
)
from apps.jobs.services.artifacts import job_artifact_add, job_output_workdir
from apps.jobs.services.lifecycle import job_claim, job_finish, job_retry_later

logger = logging.getLogger(__name__)


def remote_run_started(*, job_id: str, task_id: str, worker: str) -> Job | None:
    """A sandbox host started the dispatch `task_id`: claim the job for it, leased for the run's wall limit."""
    job = Job.objects.filter(pk=job_id).only("params").first()
    if job is None:
        return None
    wall = sandbox_lease_wall_seconds(job.params)
    # The host cannot renew a lease; it covers the wall limit plus time to report back.
    return job_claim(job_id=job_id, worker=worker, task_id=task_id, lease_seconds=wall + 60)


class RemoteOutputIncomplete(Exception):
    """Chunks of a long output stream announced by the outcome have not all arrived yet."""


# A sandbox host sends a stream longer than the inline head in base64 chunks of at most this size
# (workers/sandbox/runner.OUTPUT_CHUNK_BYTES), at most output_bytes (10 MB) in all.
MAX_OUTPUT_CHUNK_B64 = 400_000


MAX_OUTPUT_CHUNKS = 64


def _remote_output_staging(job_id, task_id: str) -> str:
    """The storage folder where the chunks of one dispatch's long streams wait for its outcome.

    In the artifact storage, not on this host's disk: the chunks and the outcome are separate
    `control` tasks, which any control host may run.
    """
    return f"artifacts/{job_id}/sandbox-{uuid.UUID(task_id).hex}"


def remote_run_output(*, job_id: str, task_id: str, stream: str, index: int, chunk: str) -> bool:
    """Stage one chunk of a long output stream of the dispatch that holds the job."""
    if (
        not isinstance(stream, str)
        or not REMOTE_STREAM.fullmatch(stream)
        or not 0 <= index < MAX_OUTPUT_CHUNKS
        or len(chunk) > MAX_OUTPUT_CHUNK_B64
    ):
        return False
    if not Job.objects.filter(pk=job_id, task_id=task_id, status__in=[JobStatus.QUEUED, *ACTIVE_STATUSES]).exists():
        return False
    # Stored whole or not at all (store_bytes): the outcome counts the parts that exist.
    name = f"{_remote_output_staging(job_id, task_id)}/{stream}.{index:05d}"
    artifact_storage.store_bytes(name, base64.b64decode(chunk, validate=True))
    return True


def _remote_output_artifacts(job: Job, task_id: str, outcome: dict, *, allow_incomplete: bool) -> None:
    """Keep each long stream (and judge output file) whose chunks have all arrived as the job's artifact.

    The outcome says which (sandbox_announced_artifacts); each one's artifact id is noted in it.
    """
    staging = _remote_output_staging(job.id, task_id)
    staged = {item.name for item in artifact_storage.stored_objects(staging)}
    with job_output_workdir(job_id=job.id, attempt=job.attempt) as workdir:
        for stream, name, expected, entry, key in sandbox_announced_artifacts(outcome):
            if not isinstance(expected, int) or not 0 < expected <= MAX_OUTPUT_CHUNKS:
                continue
            parts = [f"{staging}/{stream}.{index:05d}" for index in range(expected)]
            if not all(part in staged for part in parts):
                if not allow_incomplete:
                    arrived = sum(part in staged for part in parts)
                    raise RemoteOutputIncomplete(f"{stream}: {arrived} of {expected} chunks")
                entry[key] = None
                continue
            target = workdir / stream
            digest = hashlib.sha256()
            with target.open("wb") as whole:
                for part in parts:
                    for data in artifact_storage.stored_chunks(part):
                        digest.update(data)
                        whole.write(data)
            job_artifact_add(job_id=job.id, attempt=job.attempt, path=target, name=name, sha256=digest.hexdigest())
            artifact = Artifact.objects.filter(job_id=job.id, role="output", name=name).values_list("id", flat=True)
            entry[key] = str(artifact.first()) if artifact.exists() else None
    artifact_storage.delete_stored(sorted(staged))


def remote_run_finished(
    *, job_id: str, task_id: str, worker: str, outcome: dict, allow_incomplete_output: bool = False
) -> bool:
    """Finish the job with a sandbox outcome, only for the dispatch that holds it.

    Raises RemoteOutputIncomplete while chunks of a long stream the outcome announces are still
    on their way (the task retries); with `allow_incomplete_output` it finishes without them.
    """
    job = Job.objects.filter(pk=job_id, task_id=task_id).first()
    if job is None:
        return False
    if job.status == JobStatus.QUEUED:
        # The outcome overtook the `started` report on the control queue.
        job = remote_run_started(job_id=job_id, task_id=task_id, worker=worker)
        if job is None:
            return False
    outcome = sandbox_outcome_for_storage(outcome)
    _remote_output_artifacts(job, task_id, outcome, allow_incomplete=allow_incomplete_output)
    verdict = outcome.get("verdict", "internal_error")
    if outcome.get("infrastructure_error"):
        # The sandbox could not be set up (never the program's doing): run it again, with backoff.
        error = {"code": "sandbox_unavailable", "message": outcome.get("message") or "sandbox set-up failed"}
        logger.warning("sandbox.infrastructure_error", extra={"job_id": str(job.id), "reason": error["message"]})
        return job_retry_later(job_id=job.id, attempt=job.attempt, error=error, worker=worker) == JobStatus.QUEUED
    if verdict in SUCCESS_VERDICTS:
        return job_finish(job_id=job.id, attempt=job.attempt, status=JobStatus.SUCCEEDED, result=outcome, worker=worker)
    message = outcome.get("message") or f"verdict {verdict}"
    if verdict == "runtime_error" and outcome.get("mode") != "judge":
        message = f"program exited with code {outcome.get('exit_code')}"
    error = {"code": verdict, "message": message, "details": {"verdict": verdict}}
    return job_finish(
        job_id=job.id, attempt=job.attempt, status=JobStatus.FAILED, result=outcome, error=error, worker=worker
    )
