"""Reads for jobs, always scoped to the caller's organization."""

from django.db.models import QuerySet

from apps.accounts.models import Membership
from apps.core.errors import NotFound
from apps.jobs.models import Artifact, Job, JobEvent, WorkerHost


def job_list(*, membership: Membership) -> QuerySet[Job]:
    return Job.objects.filter(organization=membership.organization).select_related("owner")


def job_get(*, membership: Membership, job_id) -> Job:
    # Another organization's job answers exactly like a missing one.
    job = job_list(membership=membership).filter(pk=job_id).first()
    if job is None:
        raise NotFound("No such job.")
    return job


def job_events(*, job: Job) -> QuerySet[JobEvent]:
    return job.events.select_related("actor").order_by("created_at", "id")


def job_artifacts(*, job: Job) -> QuerySet[Artifact]:
    return job.artifacts.order_by("created_at")


def worker_hosts() -> QuerySet[WorkerHost]:
    return WorkerHost.objects.order_by("hostname")


def live_worker_hosts(*, queue: str | None = None) -> list[WorkerHost]:
    hosts = [host for host in worker_hosts() if host.is_alive]
    return [host for host in hosts if queue is None or queue in host.queues]


def input_artifact_list(*, membership: Membership) -> QuerySet[Artifact]:
    """The organization's uploaded inputs (artifacts that belong to no job), newest first."""
    return Artifact.objects.filter(organization=membership.organization, job__isnull=True).order_by("-created_at")


def input_artifact_get(*, membership: Membership, artifact_id) -> Artifact:
    # Another organization's upload answers exactly like a missing one.
    artifact = input_artifact_list(membership=membership).filter(pk=artifact_id).first()
    if artifact is None:
        raise NotFound("No such artifact.")
    return artifact
