"""Submitting a job: validate, admit (quotas, backlog caps, idempotency) and record it as queued."""

import hashlib
import json
import logging
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from rest_framework import serializers

from apps.accounts.models import Membership
from apps.accounts.permissions import SUBMIT_JOBS, may_submit_kind
from apps.core.errors import DomainError, IdempotencyConflict, PermissionDenied, ServiceUnavailable
from apps.jobs.kinds import get_kind
from apps.jobs.models import Job, JobEvent, JobStatus
from apps.jobs.quotas import (
    organization_quota,
    quota_admit,
    quota_admit_many,
    quota_check_params,
    quota_needs_transaction,
)
from apps.jobs.services.dispatch import publish_run, publish_runs
from apps.jobs.services.lifecycle import insert_submitted
from project import queues

logger = logging.getLogger(__name__)


def validate_params(kind_name: str, params, membership: Membership) -> tuple:
    kind = get_kind(kind_name)
    if kind is None:
        from apps.jobs.kinds import all_kinds

        raise DomainError(
            f"kind: unknown job kind '{kind_name}'.",
            fields={"kind": [f"Unknown job kind '{kind_name}'. Choose one of: {', '.join(sorted(all_kinds()))}."]},
        )
    if not isinstance(params, dict):
        raise DomainError("params: must be a JSON object.", fields={"params": ["Must be a JSON object."]})
    serializer = kind.params_serializer(data=params, context={"membership": membership})
    if not serializer.is_valid():
        fields = {f"params.{name}": [str(e) for e in errors] for name, errors in serializer.errors.items()}
        first_name, first_errors = next(iter(fields.items()))
        raise DomainError(f"{first_name}: {first_errors[0]}", fields=fields)
    unknown = sorted(set(params) - set(serializer.fields))
    if unknown:
        raise DomainError(
            f"params.{unknown[0]}: unknown parameter.",
            fields={f"params.{name}": ["Unknown parameter."] for name in unknown},
        )
    return kind, serializers.Serializer.to_representation(serializer, serializer.validated_data)


def _prepared_job(
    membership: Membership,
    *,
    kind: str,
    params,
    priority: int = 5,
    max_attempts: int | None = None,
    run_after: datetime | None = None,
    concurrency_key: str | None = None,
    concurrency_limit: int | None = None,
    idempotency_key: str | None = None,
    fingerprint: str = "",
    parent: Job | None = None,
) -> Job:
    """Everything about one job that can be checked without writing (after `_check_may_submit`): a Job to insert."""
    job_kind, clean_params = validate_params(kind, params, membership)
    if max_attempts is not None and not (
        isinstance(max_attempts, int) and not isinstance(max_attempts, bool) and 1 <= max_attempts <= 20
    ):
        raise DomainError("max_attempts: must be an integer from 1 to 20.", fields={"max_attempts": ["Must be 1-20."]})
    _check_schedule(run_after=run_after, concurrency_key=concurrency_key, concurrency_limit=concurrency_limit)
    if concurrency_key is not None and concurrency_limit is None:
        concurrency_limit = 1
    quota_check_params(quota=organization_quota(membership.organization), kind=kind, params=clean_params)
    # Recorded as dispatched with the insert: if the publish after it fails, the ring (or,
    # for pushed kinds, the reaper) publishes again like for a lost message.
    return Job(
        organization=membership.organization,
        owner=membership.user,
        kind=kind,
        params=clean_params,
        priority=priority,
        queue=job_kind.pick_queue(clean_params),
        max_attempts=max_attempts or job_kind.default_max_attempts,
        idempotency_key=idempotency_key,
        idempotency_fingerprint=fingerprint,
        parent=parent,
        task_id=str(uuid.uuid4()),
        dispatched_at=timezone.now(),
        run_after=run_after,
        concurrency_key=concurrency_key,
        concurrency_limit=concurrency_limit,
    )


def _check_may_submit(membership: Membership, *, kind: str, priority) -> None:
    if not may_submit_kind(membership, kind):
        raise PermissionDenied(
            f"Role '{membership.role}' may not submit {kind} jobs.", details={"action": SUBMIT_JOBS, "kind": kind}
        )
    if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= queues.MAX_PRIORITY:
        raise DomainError("priority: must be an integer from 0 to 9.", fields={"priority": ["Must be 0-9."]})


def job_submit(
    *,
    membership: Membership,
    kind: str,
    params: dict,
    priority: int = 5,
    max_attempts: int | None = None,
    idempotency_key: str | None = None,
    parent: Job | None = None,
    publish: bool = True,
    run_after: datetime | None = None,
    concurrency_key: str | None = None,
    concurrency_limit: int | None = None,
) -> tuple[Job, bool]:
    """Validate, admit and record a job, and publish it once the transaction commits.

    Returns (job, created); with an idempotency key already used in this organization,
    the existing job comes back with created=False and nothing is published. With
    `publish=False` the caller publishes (a fan-out sends its children as one group); the
    job is recorded as dispatched either way, so the reaper publishes it if nobody does.
    The children of a fan-out count against their parent's concurrency quota, not their
    own kind's: the parent was admitted for all of them.
    """
    _check_may_submit(membership, kind=kind, priority=priority)
    fingerprint = ""
    if idempotency_key is not None:
        fingerprint = _request_fingerprint(
            kind=kind,
            params=params,
            priority=priority,
            max_attempts=max_attempts,
            run_after=run_after,
            concurrency_key=concurrency_key,
            concurrency_limit=concurrency_limit,
        )
        existing = _idempotent_job(membership, idempotency_key, fingerprint, expires=parent is None)
        if existing is not None:
            return existing, False
    job = _prepared_job(
        membership,
        kind=kind,
        params=params,
        priority=priority,
        max_attempts=max_attempts,
        run_after=run_after,
        concurrency_key=concurrency_key,
        concurrency_limit=concurrency_limit,
        idempotency_key=idempotency_key,
        fingerprint=fingerprint,
        parent=parent,
    )
    queue = job.queue
    _admit(queue, organization_id=membership.organization_id)
    quota = organization_quota(membership.organization)
    admit_quota = parent is None
    try:
        if (admit_quota and quota_needs_transaction(quota=quota, kind=kind)) or connection.in_atomic_block:
            with transaction.atomic():
                if admit_quota:
                    quota_admit(quota=quota, organization=membership.organization, kind=kind, queue=queue)
                insert_submitted(job, actor=membership.user)
                if publish:
                    transaction.on_commit(partial(publish_run, job=job, countdown=_delay_s(run_after)))
        else:
            # Nothing to hold a lock for and no caller's transaction: the one INSERT statement
            # (job and first event) commits on its own, saving a BEGIN/COMMIT round trip.
            if admit_quota:
                quota_admit(quota=quota, organization=membership.organization, kind=kind, queue=queue)
            insert_submitted(job, actor=membership.user)
            if publish:
                publish_run(job=job, countdown=_delay_s(run_after))
    except IntegrityError:
        # Two submits raced on one idempotency key; the other one won.
        if idempotency_key is None:
            raise
        existing = _idempotent_job(membership, idempotency_key, fingerprint, expires=False)
        if existing is None:
            raise
        return existing, False
    logger.info(
        "job.submitted",
        extra={"job_id": str(job.id), "organization_id": membership.organization_id, "kind": kind, "queue": queue},
    )
    return job, True


def jobs_submit_bulk(*, membership: Membership, requests: list[dict | None], problems: dict | None = None) -> list[Job]:
    """Submit up to JOBS_BULK_MAX jobs at once: all of them or none.

    Every request is validated first (one refusal lists every bad item by index and field,
    e.g. `jobs[3].params.duration_s`); then the backlog caps and quotas are checked once for
    the whole batch and the jobs and their first events are inserted in one transaction;
    after commit each queue gets the doorbells it lacks through one producer, not one
    broker round trip per job. `requests` items take job_submit's arguments (no
    idempotency key: a bulk request is not repeatable by key); None stands for an item the
    caller could not parse, whose reasons come in `problems` (by `jobs[i].field`).
    """
    limit = settings.JOBS_BULK_MAX
    if not isinstance(requests, list) or not 1 <= len(requests) <= limit:
        raise DomainError(f"jobs: give 1 to {limit} jobs.", fields={"jobs": [f"Give 1 to {limit} jobs."]})
    jobs, problems = [], dict(problems or {})
    for index, request in enumerate(requests):
        if request is None:
            continue
        try:
            _check_may_submit(membership, kind=request.get("kind"), priority=request.get("priority", 5))
            jobs.append(_prepared_job(membership, **request))
        except PermissionDenied as exc:
            raise PermissionDenied(f"jobs[{index}]: {exc.message}", details=exc.details) from exc
        except DomainError as exc:
            for name, messages in (exc.fields or {"non_field_errors": [exc.message]}).items():
                problems[f"jobs[{index}].{name}"] = messages
    if problems:
        first, messages = next(iter(problems.items()))
        raise DomainError(
            f"{first}: {messages[0]} ({len(problems)} problem(s) in all; nothing was submitted)",
            fields=dict(sorted(problems.items(), key=lambda item: _item_index(item[0]))),
            details={"invalid": sorted({_item_index(name) for name in problems})},
        )
    per_queue = Counter(job.queue for job in jobs)
    for queue, count in per_queue.items():
        _admit(queue, organization_id=membership.organization_id, adding=count)
    quota = organization_quota(membership.organization)
    events = [
        JobEvent(
            job=job, from_status="", to_status=JobStatus.QUEUED, attempt=0, actor=membership.user, message="submitted"
        )
        for job in jobs
    ]
    with transaction.atomic():
        quota_admit_many(
            quota=quota, organization=membership.organization, counts=Counter((job.kind, job.queue) for job in jobs)
        )
        Job.objects.bulk_create(jobs, batch_size=500)
        JobEvent.objects.bulk_create(events, batch_size=500)
        transaction.on_commit(partial(publish_runs, jobs))
    logger.info(
        "jobs.submitted_bulk",
        extra={"organization_id": membership.organization_id, "jobs": len(jobs), "queues": dict(per_queue)},
    )
    return jobs


def _item_index(field: str) -> int:
    """3 for "jobs[3].params.x"."""
    return int(field[len("jobs[") : field.index("]")])


MAX_RUN_AFTER = timedelta(days=30)


def _check_schedule(*, run_after, concurrency_key, concurrency_limit) -> None:
    """When a job may run and what it shares a limit with: checked before anything is written."""
    if run_after is not None:
        if not isinstance(run_after, datetime) or timezone.is_naive(run_after):
            raise DomainError(
                "run_after: must be a date-time with a time zone.", fields={"run_after": ["Give an ISO 8601 time."]}
            )
        if run_after > timezone.now() + MAX_RUN_AFTER:
            raise DomainError("run_after: at most 30 days ahead.", fields={"run_after": ["At most 30 days from now."]})
    if concurrency_key is not None and not (isinstance(concurrency_key, str) and 0 < len(concurrency_key) <= 100):
        raise DomainError(
            "concurrency_key: 1 to 100 characters.", fields={"concurrency_key": ["Give 1 to 100 characters."]}
        )
    if concurrency_limit is not None:
        if concurrency_key is None:
            raise DomainError(
                "concurrency_limit: only with a concurrency_key.",
                fields={"concurrency_limit": ["Give a concurrency_key too."]},
            )
        if (
            not isinstance(concurrency_limit, int)
            or isinstance(concurrency_limit, bool)
            or not 1 <= concurrency_limit <= 1000
        ):
            raise DomainError(
                "concurrency_limit: an integer from 1 to 1000.", fields={"concurrency_limit": ["Must be 1-1000."]}
            )


def _delay_s(run_after: datetime | None) -> float | None:
    """Seconds until `run_after` for a delayed doorbell (the ring covers it if this one is lost)."""
    if run_after is None:
        return None
    seconds = (run_after - timezone.now()).total_seconds()
    return seconds if seconds > 0 else None


def _request_fingerprint(**request) -> str:
    """The request as submitted (before defaults), canonical JSON, hashed: what a key is bound to."""
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), cls=DjangoJSONEncoder)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _idempotent_job(membership: Membership, key: str, fingerprint: str, *, expires: bool) -> Job | None:
    """The job an Idempotency-Key already made, None if none (or it expired); 422 for another request.

    Client keys live IDEMPOTENCY_KEY_TTL_S after their job was created; then the key is taken
    off that job (a conditional UPDATE, so two requests cannot both release it) and can make a
    new one. Keys a fan-out gives its children (`expires=False`) never expire.
    """
    existing = Job.objects.filter(organization=membership.organization, idempotency_key=key).first()
    if existing is None:
        return None
    if expires and existing.created_at < timezone.now() - timedelta(seconds=settings.IDEMPOTENCY_KEY_TTL_S):
        Job.objects.filter(pk=existing.pk, idempotency_key=key).update(idempotency_key=None)
        return None
    # Jobs recorded before fingerprints were stored have none and match any request.
    if existing.idempotency_fingerprint and existing.idempotency_fingerprint != fingerprint:
        raise IdempotencyConflict(
            f"Idempotency-Key '{key}' was used for job {existing.pk} with a different request "
            "(kind, params, priority, max_attempts, run_after or concurrency); use a new key for a new request.",
            fields={"Idempotency-Key": ["Already used with a different request."]},
            details={"job_id": str(existing.pk)},
        )
    return existing


_backlog_cache: dict[str, tuple[float, int]] = {}


BACKLOG_CACHE_SECONDS = 1.0


def _queued_count(queue: str, organization_id: int | None = None) -> int:
    # Admission is approximate by nature; counting the backlog once a second per process
    # keeps a COUNT over thousands of queued rows off every submit.
    now = time.monotonic()
    key = f"{queue}:{organization_id or ''}"
    cached = _backlog_cache.get(key)
    if cached is None or now - cached[0] > BACKLOG_CACHE_SECONDS:
        queued = Job.objects.filter(queue=queue, status=JobStatus.QUEUED)
        if organization_id is not None:
            queued = queued.filter(organization_id=organization_id)
        cached = (now, queued.count())
        _backlog_cache[key] = cached
    return cached[1]


def _admit(queue: str, *, organization_id: int, adding: int = 1) -> None:
    """Bounded backlogs: one organization's flood meets its own cap long before the queue's, which everyone shares."""
    mine = _queued_count(queue, organization_id)
    if mine + adding > settings.JOBS_ORGANIZATION_MAX_BACKLOG:
        raise ServiceUnavailable(
            f"Your organization has {mine} jobs queued on '{queue}' (maximum "
            f"{settings.JOBS_ORGANIZATION_MAX_BACKLOG} per organization); retry later.",
            details={"cap": "organization_backlog", "queue": queue, "queued": mine, "retry_after_s": 30},
        )
    backlog = _queued_count(queue)
    if backlog + adding > settings.JOBS_QUEUE_MAX_BACKLOG:
        raise ServiceUnavailable(
            f"Queue '{queue}' holds {backlog} queued jobs (maximum {settings.JOBS_QUEUE_MAX_BACKLOG}); retry later.",
            details={"cap": "queue_backlog", "queue": queue, "queued": backlog, "retry_after_s": 30},
        )
