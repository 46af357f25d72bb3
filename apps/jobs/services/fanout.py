"""A parent job and its children: submitted at most once each, counted, aggregated on control.

A chord whose counter is the database: each child that ends asks `control` to look at its
parent (`jobs.children_changed`); the look that finds every child ended runs the parent
kind's aggregate and finishes the parent. Celery's own chord counts header results in a
result backend keyed by task id, which a reaper re-dispatch (new task id), a flushed Redis or
a RabbitMQ-only deployment would break; here a lost notification costs one reaper interval
(the reaper looks at every waiting parent), never the sweep.
"""

import logging
import uuid
from functools import partial

from django.db import transaction
from django.db.models import Count, Q

from apps.accounts.models import Membership
from apps.core.errors import DomainError, PermissionDenied
from apps.jobs.kinds import get_kind
from apps.jobs.models import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    Job,
    JobStatus,
)
from apps.jobs.services.dispatch import jobs_publish_group
from apps.jobs.services.lifecycle import job_finish, requeue_ended
from apps.jobs.services.submit import job_submit
from workers.errors import JobError

logger = logging.getLogger(__name__)


def job_children_submit(*, parent_id: uuid.UUID, attempt: int, children: list[dict]) -> tuple[int, int]:
    """Submit a fan-out's children, at most once each, and publish the new ones as one Celery group.

    `children`: [{"kind", "params", "key"}]; `key` is unique within the parent, so a second
    attempt of the parent (after a crash, or a retry) finds the children the first one made:
    those that ended failed or cancelled are queued again, the others are left as they are.
    Returns (children in all, children queued now). Refused (LookupError) when `attempt`
    no longer holds the parent.
    """
    with transaction.atomic():
        parent = (
            Job.objects.select_for_update(of=("self",))
            .select_related("organization", "owner")
            .filter(pk=parent_id, attempt=attempt, status__in=ACTIVE_STATUSES)
            .first()
        )
        if parent is None:
            raise LookupError(f"attempt {attempt} no longer holds job {parent_id}")
        membership = Membership.objects.filter(organization=parent.organization, user=parent.owner).first()
        if membership is None:
            raise PermissionDenied("The job's owner is no longer a member of its organization.")
        new, requeued = [], 0
        for child in children:
            job, created = job_submit(
                membership=membership,
                kind=child["kind"],
                params=child["params"],
                priority=parent.priority,
                idempotency_key=f"{parent.pk}:{child['key']}",
                parent=parent,
                publish=False,
            )
            if created:
                new.append(job)
                continue
            locked = Job.objects.select_for_update().get(pk=job.pk)
            if locked.status in (JobStatus.FAILED, JobStatus.CANCELLED):
                requeue_ended(locked, actor=None, message=f"parent {parent.short_id} attempt {attempt} runs it again")
                requeued += 1
        transaction.on_commit(partial(jobs_publish_group, new))
    return len(children), len(new) + requeued


def job_children_changed(*, parent_id: uuid.UUID | str, worker: str = "control") -> str:
    """Count a waiting parent's children into its progress; once all ended, aggregate and finish it."""
    with transaction.atomic():
        parent = (
            Job.objects.select_for_update()
            .filter(pk=parent_id, status__in=ACTIVE_STATUSES, lease_expires_at__isnull=True)
            .first()
        )
        if parent is None:
            return "not_waiting"  # still fanning out (it holds a lease), or already finished
        # One indexed COUNT per notification; the children themselves are loaded once, for the
        # aggregate (loading them on every notification made a sweep O(n^2) in Python objects).
        counts = parent.children.aggregate(total=Count("id"), ended=Count("id", filter=Q(status__in=TERMINAL_STATUSES)))
        total, ended = counts["total"], counts["ended"]
        if ended < total or not total:
            Job.objects.filter(pk=parent.pk).update(
                progress=ended / total if total else 0.0,
                progress_message=f"{ended}/{total} children ended",
            )
            return "waiting"
        children = list(parent.children.order_by("created_at", "id"))
        finish = {"job_id": parent.id, "attempt": parent.attempt, "worker": worker}
        if parent.status == JobStatus.CANCELLING:
            job_finish(**finish, status=JobStatus.CANCELLED)
            return JobStatus.CANCELLED
        kind = get_kind(parent.kind)
        try:
            if kind is None or kind.aggregate is None:
                raise DomainError(f"No aggregate for kind '{parent.kind}' on {worker}.")
            result = kind.aggregate(parent, children)
        except DomainError as exc:
            error = {"code": exc.code, "message": exc.message, "details": exc.details}
            job_finish(**finish, status=JobStatus.FAILED, error=error)
            return JobStatus.FAILED
        except JobError as exc:
            error = {"code": exc.code, "message": exc.message, "details": exc.details}
            job_finish(**finish, status=JobStatus.FAILED, result=exc.details.get("result"), error=error)
            return JobStatus.FAILED
        job_finish(**finish, status=JobStatus.SUCCEEDED, result=result)
    return JobStatus.SUCCEEDED
