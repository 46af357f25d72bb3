"""What people do to jobs and queues: cancel, retry, requeue, pause; permission-checked and audited."""

import logging

from django.db import transaction
from django.utils import timezone

from apps.accounts.models import User
from apps.accounts.permissions import MANAGE_ANY_JOB, SUBMIT_JOBS, Actor, has_permission
from apps.accounts.services import audit_record
from apps.core.errors import Conflict, DomainError, PermissionDenied
from apps.jobs.models import (
    Job,
    JobStatus,
    QueueState,
)
from apps.jobs.services.dispatch import PAUSABLE_QUEUES, job_dispatch
from apps.jobs.services.housekeeping import jobs_ring
from apps.jobs.services.lifecycle import cancel, record_event, requeue_ended

logger = logging.getLogger(__name__)


def _check_may_manage(job: Job, actor_membership: Actor) -> None:
    if job.organization_id != actor_membership.organization_id:
        raise PermissionDenied("This job belongs to another organization.")
    if job.owner_id != actor_membership.user_id and not has_permission(actor_membership, MANAGE_ANY_JOB):
        raise PermissionDenied(f"Role '{actor_membership.role}' may only cancel or retry its own jobs.")
    if job.owner_id == actor_membership.user_id and not has_permission(actor_membership, SUBMIT_JOBS):
        raise PermissionDenied(f"Role '{actor_membership.role}' may not manage jobs.")


def job_cancel(*, job: Job, actor: Actor) -> Job:
    """A queued job is cancelled at once; a running one goes `cancelling` and stops at its next check."""
    _check_may_manage(job, actor)
    with transaction.atomic():
        cancelled = cancel(job_id=job.id, actor=actor.user)
        _audit_if_someone_elses(job, actor, "job.cancelled", status=cancelled.status)
    return cancelled


def _audit_if_someone_elses(job: Job, actor: Actor, action: str, **details) -> None:
    if job.owner_id != actor.user_id:
        audit_record(
            organization=job.organization_id,
            actor=actor,
            action=action,
            target=job,
            details={"owner": job.owner.get_username() if job.owner_id else None, "kind": job.kind, **details},
        )


def job_retry(*, job: Job, actor: Actor) -> Job:
    """failed|cancelled -> queued, with a fresh budget of attempts (the attempt count itself never goes back)."""
    _check_may_manage(job, actor)
    with transaction.atomic():
        locked = Job.objects.select_for_update().get(pk=job.pk)
        if locked.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
            raise Conflict(f"Only failed or cancelled jobs can be retried; this one is {locked.status}.")
        previous = locked.status
        requeue_ended(locked, actor=actor.user, message="retried")
        _audit_if_someone_elses(locked, actor, "job.retried", previous_status=previous)
    return locked


def jobs_retry_many(*, jobs: list[Job], actor: Actor) -> list[Job]:
    """Retry each job (failed or cancelled), each checked and audited like a single retry; all or none."""
    with transaction.atomic():
        return [job_retry(job=job, actor=actor) for job in jobs]


def job_requeue(*, job: Job, actor: Actor) -> Job:
    """Publish a queued job's message again (e.g. after the broker lost it); harmless if it was not lost."""
    _check_may_manage(job, actor)
    if job.status != JobStatus.QUEUED:
        raise Conflict(f"Only queued jobs can be requeued; this one is {job.status}.")
    record_event(job, from_status=JobStatus.QUEUED, to_status=JobStatus.QUEUED, actor=actor.user, message="requeued")
    job_dispatch(job_id=job.id)
    return job


def queue_set_paused(*, queue: str, paused: bool, actor: User, reason: str = "") -> QueueState:
    """Pause or resume a queue (platform operators only): claims stop or restart at once, audited."""
    if not (actor.is_active and actor.is_superuser):
        raise PermissionDenied("Only platform operators (superusers) pause or resume queues.")
    if queue not in PAUSABLE_QUEUES:
        # Sandbox runs are pushed to their hosts with the program in the message, so no claim
        # could hold them back; control is housekeeping.
        choices = ", ".join(PAUSABLE_QUEUES)
        raise DomainError(f"queue: '{queue[:64]}' cannot be paused.", fields={"queue": [f"Choose one of {choices}."]})
    if len(reason) > 200:
        raise DomainError("reason: at most 200 characters.", fields={"reason": ["At most 200 characters."]})
    with transaction.atomic():
        state, _ = QueueState.objects.select_for_update().get_or_create(name=queue)
        if state.paused != paused:
            state.paused, state.reason, state.changed_by, state.changed_at = paused, reason, actor, timezone.now()
            state.save()
            audit_record(
                organization=None,
                actor=actor,
                action="queue.paused" if paused else "queue.resumed",
                target=state,
                details={"queue": queue, "reason": reason},
            )
            if not paused:
                transaction.on_commit(jobs_ring)  # the work that waited gets its doorbells now
    logger.info("queue.paused" if paused else "queue.resumed", extra={"queue": queue, "reason": reason})
    return state
