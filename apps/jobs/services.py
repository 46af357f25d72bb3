"""Every change of a job's state: submit, dispatch, claim, heartbeat, progress, finish, cancel, retry, reap.

Concurrency guards are conditional UPDATEs: a transition names the state (and, for a
worker, the attempt) it starts from, so two actors racing on one job cannot both win.
"""

import base64
import functools
import hashlib
import json
import logging
import random
import shutil
import tempfile
import time
import uuid
import zlib
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q
from django.db.models.functions import Now
from django.utils import timezone
from rest_framework import serializers

from apps.accounts.models import Membership, User
from apps.accounts.permissions import MANAGE_ANY_JOB, SUBMIT_JOBS, Actor, has_permission, may_submit_kind
from apps.accounts.services import audit_record
from apps.core.db import PreparedStatement
from apps.core.errors import Conflict, DomainError, IdempotencyConflict, PermissionDenied, ServiceUnavailable
from apps.jobs.kinds import get_kind
from apps.jobs.models import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    Artifact,
    ArtifactRole,
    Job,
    JobEvent,
    JobStatus,
    QueueState,
)
from apps.jobs.quotas import organization_quota, quota_admit, quota_check_params, quota_needs_transaction
from apps.jobs.sandbox_kind import (
    REMOTE_STREAM,
    SUCCESS_VERDICTS,
    sandbox_announced_artifacts,
    sandbox_lease_wall_seconds,
    sandbox_outcome_for_storage,
)
from project import queues
from workers import array_files
from workers.errors import JobError

logger = logging.getLogger(__name__)

RUN_JOB_TASK = "workers.run_job"
# A doorbell: "queue Q may have work". The worker that takes it claims the best eligible job
# of Q (job_claim_next); the message names no job, so losing or duplicating one is harmless.
DOORBELL_TASK = "workers.claim_next"
REAPER_LOCK_ID = 0x5377_6A6F  # pg_try_advisory_lock key: one reaper at a time, however many beats run
RING_LOCK_ID = 0x5377_6A70  # one ringer at a time
# The queues whose jobs workers claim from PostgreSQL: rung, and pausable.
PULLED_QUEUES = PAUSABLE_QUEUES = (queues.CPU, queues.GPU)


def _event(job: Job, *, from_status: str, to_status: str, message: str = "", worker: str = "", actor=None) -> None:
    JobEvent.objects.create(
        job=job,
        from_status=from_status,
        to_status=to_status,
        attempt=job.attempt,
        worker=worker,
        actor=actor,
        message=message,
    )


# --- submit and dispatch -----------------------------------------------------------------


def _validate_params(kind_name: str, params, membership: Membership) -> tuple:
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
    if not may_submit_kind(membership, kind):
        raise PermissionDenied(
            f"Role '{membership.role}' may not submit {kind} jobs.", details={"action": SUBMIT_JOBS, "kind": kind}
        )
    if not isinstance(priority, int) or not 0 <= priority <= queues.MAX_PRIORITY:
        raise DomainError("priority: must be an integer from 0 to 9.", fields={"priority": ["Must be 0-9."]})
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
    job_kind, clean_params = _validate_params(kind, params, membership)
    if max_attempts is not None and not (isinstance(max_attempts, int) and 1 <= max_attempts <= 20):
        raise DomainError("max_attempts: must be an integer from 1 to 20.", fields={"max_attempts": ["Must be 1-20."]})
    _check_schedule(run_after=run_after, concurrency_key=concurrency_key, concurrency_limit=concurrency_limit)
    if concurrency_key is not None and concurrency_limit is None:
        concurrency_limit = 1
    quota = organization_quota(membership.organization)
    quota_check_params(quota=quota, kind=kind, params=clean_params)
    queue = job_kind.pick_queue(clean_params)
    _admit(queue, organization_id=membership.organization_id)

    # Recorded as dispatched with the insert: if the publish after it fails, the reaper
    # publishes again like for a lost message.
    job = Job(
        organization=membership.organization,
        owner=membership.user,
        kind=kind,
        params=clean_params,
        priority=priority,
        queue=queue,
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
    admit_quota = parent is None
    try:
        if (admit_quota and quota_needs_transaction(quota=quota, kind=kind)) or connection.in_atomic_block:
            with transaction.atomic():
                if admit_quota:
                    quota_admit(quota=quota, organization=membership.organization, kind=kind, queue=queue)
                _insert_submitted(job, actor=membership.user)
                if publish:
                    transaction.on_commit(partial(_publish, job=job, countdown=_delay_s(run_after)))
        else:
            # Nothing to hold a lock for and no caller's transaction: the one INSERT statement
            # (job and first event) commits on its own, saving a BEGIN/COMMIT round trip.
            if admit_quota:
                quota_admit(quota=quota, organization=membership.organization, kind=kind, queue=queue)
            _insert_submitted(job, actor=membership.user)
            if publish:
                _publish(job=job, countdown=_delay_s(run_after))
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


@functools.cache
def _insert_statement() -> PreparedStatement:
    columns = ", ".join(connection.ops.quote_name(field.column) for field in Job._meta.concrete_fields)
    # Only column names from the model and %s placeholders are interpolated; values are parameters.
    placeholders = ", ".join(["%s"] * len(Job._meta.concrete_fields))
    return PreparedStatement(
        "switchyard_job_submit",
        f"WITH job AS (INSERT INTO jobs_job ({columns}) VALUES ({placeholders})"  # noqa: S608
        " RETURNING id, created_at)"
        " INSERT INTO jobs_jobevent (job_id, created_at, from_status, to_status, attempt, worker, message, actor_id)"
        " SELECT id, created_at, '', 'queued', 0, '', 'submitted', %s::bigint FROM job",
    )


def _insert_submitted(job: Job, *, actor: User) -> None:
    """INSERT the job and its first event in one statement (submit is on every job's path)."""
    values = [field.get_db_prep_save(field.pre_save(job, add=True), connection) for field in Job._meta.concrete_fields]
    with connection.cursor() as cursor:
        cursor.execute(*_insert_statement().sql_and_args([*values, actor.pk]))
    job._state.adding = False
    job._state.db = "default"


def _admit(queue: str, *, organization_id: int) -> None:
    """Bounded backlogs: one organization's flood meets its own cap long before the queue's, which everyone shares."""
    mine = _queued_count(queue, organization_id)
    if mine >= settings.JOBS_ORGANIZATION_MAX_BACKLOG:
        raise ServiceUnavailable(
            f"Your organization has {mine} jobs queued on '{queue}' (maximum "
            f"{settings.JOBS_ORGANIZATION_MAX_BACKLOG} per organization); retry later.",
            details={"cap": "organization_backlog", "queue": queue, "queued": mine, "retry_after_s": 30},
        )
    backlog = _queued_count(queue)
    if backlog >= settings.JOBS_QUEUE_MAX_BACKLOG:
        raise ServiceUnavailable(
            f"Queue '{queue}' holds {backlog} queued jobs (maximum {settings.JOBS_QUEUE_MAX_BACKLOG}); retry later.",
            details={"cap": "queue_backlog", "queue": queue, "queued": backlog, "retry_after_s": 30},
        )


def _broker_priority(priority: int) -> int:
    """Job priority 9 is the most urgent; Redis (kombu) serves the lowest number first."""
    if settings.CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
        return queues.MAX_PRIORITY - priority
    return priority


def job_dispatch(*, job_id: uuid.UUID, countdown: float | None = None) -> None:
    """Publish a queued job's run message again (retry, reaper, requeue)."""
    job = Job.objects.filter(pk=job_id, status=JobStatus.QUEUED).first()
    if job is None:
        return
    job.task_id = str(uuid.uuid4())
    Job.objects.filter(pk=job.pk).update(dispatched_at=timezone.now(), task_id=job.task_id)
    _publish(job=job, countdown=countdown)


def is_pulled(kind_name: str) -> bool:
    """Whether workers claim this kind's jobs from PostgreSQL (doorbells), rather than receive them.

    Kinds whose host has no database (sandbox) get the job itself in the message instead.
    """
    kind = get_kind(kind_name)
    return kind is None or kind.message is None


def _run_message(job: Job, *, countdown: float | None = None) -> tuple[str, dict]:
    """The message that gets a job run (task name, publish options): a doorbell for its queue, or the job itself."""
    kind = get_kind(job.kind)
    if kind and kind.message:
        task_name, args = kind.message(job)
        soft_limit, hard_limit = kind.soft_time_limit_s, kind.time_limit_s
    else:
        # A doorbell may claim any kind of its queue: Celery's limits for it are the
        # longest any pulled kind may take, and the runner holds the claimed job to its own
        # kind's limits (apps.jobs.runner.time_limits).
        task_name, args = DOORBELL_TASK, [job.queue]
        soft_limit = hard_limit = doorbell_time_limit_s()
    return task_name, {
        "args": args,
        "task_id": job.task_id,
        "queue": queues.direct_queue(job.queue),
        # Doorbells are all alike (the claim orders by priority); the broker priority only
        # gets a doorbell rung for urgent work read sooner.
        "priority": _broker_priority(job.priority),
        "countdown": countdown,
        "soft_time_limit": soft_limit,
        "time_limit": hard_limit + DOORBELL_HARD_LIMIT_MARGIN_S if hard_limit else None,
    }


# Celery's own hard limit on a doorbell comes this long after the longest kind's hard limit,
# so the runner's per-kind limits always act first.
DOORBELL_HARD_LIMIT_MARGIN_S = 30


def doorbell_time_limit_s() -> int:
    from apps.jobs.kinds import all_kinds

    return max((kind.time_limit_s for kind in all_kinds().values() if kind.message is None), default=3600)


def _publish(*, job: Job, countdown: float | None = None) -> bool:
    """Send the run message: the one place that talks to the broker for a job."""
    from project.celery import app

    task_name, options = _run_message(job, countdown=countdown)
    try:
        app.send_task(task_name, **options)
    except Exception:
        # The job is safe in PostgreSQL; the reaper publishes it again once the broker is back.
        logger.exception("job.dispatch_failed", extra={"job_id": str(job.id), "queue": job.queue})
        return False
    return True


def jobs_publish_group(jobs: list[Job]) -> bool:
    """Publish several jobs' run messages as one Celery group (a fan-out's children)."""
    from celery import group

    from project.celery import app

    if not jobs:
        return True
    signatures = []
    for job in jobs:
        task_name, options = _run_message(job)
        signatures.append(app.signature(task_name, immutable=True, **options))
    try:
        group(signatures).apply_async()
    except Exception:
        logger.exception("job.group_dispatch_failed", extra={"jobs": len(jobs)})
        return False
    return True


# --- worker side -------------------------------------------------------------------------


# Claim and finish are single statements (a conditional UPDATE and its audit event in one
# CTE): they run once per job on every worker, and as ORM calls their query building cost
# more CPU than the database work (`manage.py bench jobs`).
_CLAIM_SQL = """
WITH claimed AS (
    UPDATE jobs_job
       SET status = 'running', attempt = attempt + 1, started_at = now(), finished_at = NULL,
           lease_expires_at = now() + make_interval(secs => %(lease)s), worker_host = %(worker)s,
           progress = 0, progress_message = '', updated_at = now()
     WHERE id = %(job_id)s AND status = 'queued' AND attempt < max_attempts
       AND (%(task_id)s::text IS NULL OR task_id = %(task_id)s::text)
 RETURNING *
), event AS (
    INSERT INTO jobs_jobevent (job_id, created_at, from_status, to_status, attempt, worker, message)
    SELECT id, now(), 'queued', 'running', attempt, %(worker)s, 'attempt ' || attempt || ' of ' || max_attempts
      FROM claimed
)
SELECT * FROM claimed
"""

_FINISH_SQL = """
WITH previous AS (
    SELECT id, status FROM jobs_job
     WHERE id = %(job_id)s AND attempt = %(attempt)s AND status IN ('running', 'cancelling')
       FOR UPDATE
), finished AS (
    UPDATE jobs_job AS job
       SET status = %(status)s::text, result = %(result)s::jsonb, error = %(error)s::jsonb, finished_at = now(),
           lease_expires_at = NULL, updated_at = now(),
           progress = CASE WHEN %(status)s::text = 'succeeded' THEN 1 ELSE job.progress END,
           progress_message = CASE WHEN %(status)s::text = 'succeeded' THEN '' ELSE job.progress_message END
      FROM previous
     WHERE job.id = previous.id
 RETURNING job.id, job.attempt, job.parent_id, previous.status AS from_status, job.organization_id, job.queue,
           job.started_at
), event AS (
    INSERT INTO jobs_jobevent (job_id, created_at, from_status, to_status, attempt, worker, message)
    SELECT id, now(), from_status, %(status)s::text, attempt, %(worker)s, %(message)s::text FROM finished
), usage AS (
    -- The attempt's wall time joins its organization's decayed cost on the queue (fair share).
    INSERT INTO jobs_organizationusage AS usage (organization_id, queue, cost_s, updated_at)
    SELECT organization_id, queue, GREATEST(EXTRACT(EPOCH FROM now() - started_at)::float8, 0), now()
      FROM finished WHERE started_at IS NOT NULL
        ON CONFLICT (organization_id, queue) DO UPDATE
       SET cost_s = usage.cost_s * exp(-EXTRACT(EPOCH FROM now() - usage.updated_at)::float8 * ln(2) / %(half_life)s)
                    + EXCLUDED.cost_s,
           updated_at = now()
)
SELECT count(*), max(parent_id::text) FROM finished
"""


# The scheduler: the best eligible job of a queue, in one statement. Eligible: queued, with an
# attempt left, due (`run_after`, judged by the database clock), its queue not paused, its
# organization under its running limit for the queue (OrganizationQuota.running_jobs) and its
# concurrency key under the key's limit. Best: priority; then weighted fair share, the
# organization whose recent cost on the queue (decayed, running attempts included) divided by
# its weight (OrganizationQuota.share_weight) is lowest; then age. The limits count running
# jobs, so claims of one queue take turns (job_claim_next holds a transaction-level advisory
# lock per queue while it counts); SKIP LOCKED still keeps other work from waiting on a row.
# apps.jobs.selectors.job_wait_reason explains a queued job by the same rules.
_CLAIM_NEXT_SQL = """
WITH RECURSIVE active AS (
    SELECT organization_id, queue, concurrency_key, started_at FROM jobs_job
     WHERE status IN ('running', 'cancelling')
), organization_full AS (
    SELECT active.organization_id FROM active
      LEFT JOIN accounts_organizationquota AS quota ON quota.organization_id = active.organization_id
     WHERE active.queue = %(queue)s
     GROUP BY active.organization_id
    HAVING count(*) >= min(COALESCE((quota.running_jobs ->> %(queue)s)::int, %(default_running)s::int))
), key_running AS (
    SELECT organization_id, concurrency_key, count(*) AS running FROM active
     WHERE concurrency_key IS NOT NULL
     GROUP BY organization_id, concurrency_key
), running_cost AS (
    SELECT organization_id, sum(GREATEST(EXTRACT(EPOCH FROM now() - started_at)::float8, 0)) AS cost_s FROM active
     WHERE queue = %(queue)s AND started_at IS NOT NULL
     GROUP BY organization_id
), organizations AS (
    -- Each organization with queued work on the queue: one index probe per organization.
    (SELECT organization_id FROM jobs_job WHERE queue = %(queue)s AND status = 'queued'
      ORDER BY organization_id LIMIT 1)
    UNION ALL
    SELECT (SELECT job.organization_id FROM jobs_job AS job
             WHERE job.queue = %(queue)s AND job.status = 'queued'
               AND job.organization_id > organizations.organization_id
             ORDER BY job.organization_id LIMIT 1)
      FROM organizations WHERE organizations.organization_id IS NOT NULL
), heads AS (
    -- Each organization's best eligible job.
    SELECT head.* FROM organizations
     CROSS JOIN LATERAL (
        SELECT job.id, job.organization_id, job.priority, job.created_at FROM jobs_job AS job
         WHERE job.queue = %(queue)s AND job.status = 'queued' AND job.organization_id = organizations.organization_id
           AND job.attempt < job.max_attempts
           AND (job.run_after IS NULL OR job.run_after <= now())
           AND NOT EXISTS (
               SELECT 1 FROM key_running AS k
                WHERE k.organization_id = job.organization_id AND k.concurrency_key = job.concurrency_key
                  AND k.running >= job.concurrency_limit
           )
         ORDER BY job.priority DESC, job.created_at, job.id
         LIMIT 1
     ) AS head
     WHERE organizations.organization_id IS NOT NULL
       AND organizations.organization_id NOT IN (SELECT organization_id FROM organization_full)
       AND NOT EXISTS (SELECT 1 FROM jobs_queuestate WHERE name = %(queue)s AND paused)
), best AS (
    -- Priority first; then the organization furthest below its share (recent cost over
    -- weight, running attempts included); then age.
    SELECT heads.id FROM heads
      LEFT JOIN jobs_organizationusage AS usage
             ON usage.organization_id = heads.organization_id AND usage.queue = %(queue)s
      LEFT JOIN running_cost ON running_cost.organization_id = heads.organization_id
      LEFT JOIN accounts_organizationquota AS quota ON quota.organization_id = heads.organization_id
     ORDER BY heads.priority DESC,
              (COALESCE(usage.cost_s * exp(-EXTRACT(EPOCH FROM now() - usage.updated_at)::float8 * ln(2)
                                           / %(half_life)s), 0)
               + COALESCE(running_cost.cost_s, 0)) / COALESCE(quota.share_weight, 1.0),
              heads.created_at, heads.id
     LIMIT 1
), candidate AS (
    SELECT job.id FROM jobs_job AS job
     WHERE job.id = (SELECT id FROM best) AND job.status = 'queued'
       FOR UPDATE OF job SKIP LOCKED
), claimed AS (
    UPDATE jobs_job AS job
       SET status = 'running', attempt = attempt + 1, started_at = now(), finished_at = NULL,
           lease_expires_at = now() + make_interval(secs => %(lease)s), worker_host = %(worker)s,
           progress = 0, progress_message = '', updated_at = now(), run_after = NULL,
           task_id = COALESCE(%(task_id)s::text, job.task_id)
      FROM candidate
     WHERE job.id = candidate.id
 RETURNING job.*
), event AS (
    INSERT INTO jobs_jobevent (job_id, created_at, from_status, to_status, attempt, worker, message)
    SELECT id, now(), 'queued', 'running', attempt, %(worker)s, 'attempt ' || attempt || ' of ' || max_attempts
      FROM claimed
)
SELECT * FROM claimed
"""
# pg_advisory_xact_lock(CLAIM_LOCK_CLASS, crc32(queue)): one claim of a queue counts at a time.
CLAIM_LOCK_CLASS = 0x5377


@functools.cache
def _claim_next_statement() -> PreparedStatement:
    columns = ", ".join(f"job.{connection.ops.quote_name(field.column)}" for field in Job._meta.concrete_fields)
    return PreparedStatement(
        "switchyard_job_claim_next", _CLAIM_NEXT_SQL.replace("RETURNING job.*", f"RETURNING {columns}")
    )


@functools.cache
def _claim_statement() -> PreparedStatement:
    # RETURNING the model's columns in its field order, so a row becomes a Job without a RawQuerySet
    # (whose per-row machinery cost more than the claim's database work).
    columns = ", ".join(connection.ops.quote_name(field.column) for field in Job._meta.concrete_fields)
    return PreparedStatement("switchyard_job_claim", _CLAIM_SQL.replace("RETURNING *", f"RETURNING {columns}"))


def _job_from_row(row) -> Job:
    values = [
        field.from_db_value(value, None, connection) if hasattr(field, "from_db_value") else value
        for field, value in zip(Job._meta.concrete_fields, row, strict=True)
    ]
    return Job.from_db("default", [field.attname for field in Job._meta.concrete_fields], values)


_FINISH = PreparedStatement("switchyard_job_finish", _FINISH_SQL)


def _jsonb(value) -> str | None:
    return None if value is None else json.dumps(value, cls=DjangoJSONEncoder)


def job_claim(
    *, job_id: uuid.UUID | str, worker: str, task_id: str | None = None, lease_seconds: float | None = None
) -> Job | None:
    """queued -> running, taking a lease and the next attempt; None when there is nothing to claim.

    With `task_id`, only the job's latest dispatch may claim it (hosts that report back
    through `control` instead of claiming themselves).
    """
    params = {
        "job_id": str(job_id),
        "worker": worker,
        "task_id": task_id,
        "lease": lease_seconds or settings.JOBS_LEASE_SECONDS,
    }
    return _claimed(_claim_statement(), params)


def _claimed(statement: PreparedStatement, params: dict, prefix: tuple[str, list] | None = None) -> Job | None:
    """Run a claim statement (after `prefix`, a statement with positional args); the Job it took (logged), or None."""
    sql, args = statement.sql_and_args(params)
    if prefix is not None:
        if isinstance(args, dict):  # plain SQL with named placeholders (prepared statements off)
            named = {f"prefix_{i}": value for i, value in enumerate(prefix[1])}
            sql = prefix[0] % tuple(f"%({name})s" for name in named) + sql
            args = {**args, **named}
        else:
            sql, args = prefix[0] + sql, [*prefix[1], *args]
    with connection.cursor() as cursor:
        cursor.execute(sql, args)
        row = cursor.fetchone()
    if row is None:
        return None
    job = _job_from_row(row)
    logger.info(
        "job.claimed",
        extra={
            "job_id": str(job.id),
            "organization_id": job.organization_id,
            "kind": job.kind,
            "attempt": job.attempt,
            "worker": params["worker"],
        },
    )
    return job


def job_claim_next(
    *, queue: str, worker: str, task_id: str | None = None, lease_seconds: float | None = None
) -> Job | None:
    """Claim the best eligible job of `queue` (a doorbell rang); None when nothing is eligible."""
    lease = lease_seconds or settings.JOBS_LEASE_SECONDS
    default_running = settings.ORGANIZATION_QUOTA_DEFAULTS.get("running_jobs", {}).get(queue)
    params = {
        "queue": queue,
        "worker": worker,
        "task_id": task_id,
        "lease": lease,
        "default_running": default_running,
        "half_life": settings.JOBS_FAIR_SHARE_HALF_LIFE_SECONDS,
    }
    # The lock and the claim go in one round trip, as two statements of one implicit
    # transaction: the claim's snapshot is taken after the lock, so the running jobs it
    # counts include every claim of this queue that committed before it.
    lock = ("SELECT pg_advisory_xact_lock(%s, %s); ", [CLAIM_LOCK_CLASS, zlib.crc32(queue.encode()) & 0x7FFFFFFF])
    return _claimed(_claim_next_statement(), params, prefix=lock)


def job_heartbeat(*, job_id: uuid.UUID, attempt: int) -> str | None:
    """Renew the lease; returns the job's status (a worker learns of `cancelling` here), None if fenced out."""
    # The database's clock, like the claim and the reaper: a worker's skewed clock cannot
    # make a lease look longer or shorter than it is.
    lease = Now() + timedelta(seconds=settings.JOBS_LEASE_SECONDS)
    # A parent waiting for its children holds no lease (NULL); a late heartbeat must not give it one.
    updated = Job.objects.filter(
        pk=job_id, attempt=attempt, status__in=ACTIVE_STATUSES, lease_expires_at__isnull=False
    ).update(lease_expires_at=lease)
    if not updated:
        return None
    return Job.objects.filter(pk=job_id).values_list("status", flat=True).first()


def job_progress(*, job_id: uuid.UUID, attempt: int, progress: float, message: str = "") -> bool:
    progress = min(1.0, max(0.0, float(progress)))
    return bool(
        Job.objects.filter(pk=job_id, attempt=attempt, status__in=ACTIVE_STATUSES).update(
            progress=progress, progress_message=message[:200]
        )
    )


def job_finish(
    *,
    job_id: uuid.UUID,
    attempt: int,
    status: str,
    result: dict | None = None,
    error: dict | None = None,
    worker: str = "",
) -> bool:
    """running|cancelling -> succeeded|failed|cancelled, only for the attempt that holds the job."""
    if status not in TERMINAL_STATUSES:
        raise ValueError(f"not a terminal status: {status}")
    params = {
        "job_id": str(job_id),
        "attempt": attempt,
        "status": str(status),
        "worker": worker,
        "result": _jsonb(result),
        "error": _jsonb(error),
        "message": error["message"] if error else "",
        "half_life": settings.JOBS_FAIR_SHARE_HALF_LIFE_SECONDS,
    }
    with connection.cursor() as cursor:
        cursor.execute(*_FINISH.sql_and_args(params))
        finished, parent_id = cursor.fetchone()
    if not finished:
        logger.warning("job.finish_fenced", extra={"job_id": str(job_id), "attempt": attempt})
        return False
    if parent_id is not None:
        _notify_parent(parent_id)
    logger.info("job.finished", extra={"job_id": str(job_id), "attempt": attempt, "status": status})
    return True


def retry_backoff_s(attempt: int) -> float:
    """Exponential backoff with full jitter, capped."""
    ceiling = min(settings.JOBS_RETRY_BACKOFF_MAX_SECONDS, settings.JOBS_RETRY_BACKOFF_SECONDS * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not security


def job_retry_later(*, job_id: uuid.UUID, attempt: int, error: dict, worker: str = "") -> str:
    """After a transient error: back to `queued` with backoff, or `failed` once attempts are exhausted."""
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=job_id, attempt=attempt, status__in=ACTIVE_STATUSES).first()
        if job is None:
            return "fenced"
        if job.status == JobStatus.CANCELLING:
            job_finish(job_id=job_id, attempt=attempt, status=JobStatus.CANCELLED, worker=worker)
            return JobStatus.CANCELLED
        if job.attempt >= job.max_attempts:
            exhausted = {
                "code": "attempts_exhausted",
                "message": f"Failed after {job.attempt} attempts: {error['message']}",
                "details": {"last_error": error},
            }
            job_finish(job_id=job_id, attempt=attempt, status=JobStatus.FAILED, error=exhausted, worker=worker)
            return JobStatus.FAILED
        countdown = retry_backoff_s(job.attempt)
        _requeue_later(
            job,
            seconds=countdown,
            worker=worker,
            message=f"transient error, retry in {countdown:.1f}s: {error['message']}",
            error=error,
        )
    return JobStatus.QUEUED


def _requeue_later(locked: Job, *, seconds: float, worker: str, message: str, **fields) -> None:
    """A running job (held FOR UPDATE) back to `queued`, not claimable for `seconds` by the database clock.

    A delayed doorbell rings when it is due, and the ring covers it if that doorbell is lost.
    """
    Job.objects.filter(pk=locked.pk).update(
        status=JobStatus.QUEUED,
        lease_expires_at=None,
        queued_at=timezone.now(),
        run_after=Now() + timedelta(seconds=seconds),
        **fields,
    )
    _event(locked, from_status=locked.status, to_status=JobStatus.QUEUED, worker=worker, message=message)
    transaction.on_commit(partial(job_dispatch, job_id=locked.id, countdown=seconds))


def job_snooze(*, job_id: uuid.UUID, attempt: int, seconds: float, worker: str = "") -> str:
    """running -> queued, due in `seconds` (database clock), without using an attempt: the job asked to wait."""
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=job_id, attempt=attempt, status__in=ACTIVE_STATUSES).first()
        if job is None:
            return "fenced"
        if job.status == JobStatus.CANCELLING:
            job_finish(job_id=job_id, attempt=attempt, status=JobStatus.CANCELLED, worker=worker)
            return JobStatus.CANCELLED
        # `attempt` only grows (it is the fencing token); the budget grows with it instead,
        # so the next claim's attempt is not one the job spent.
        _requeue_later(
            job,
            seconds=seconds,
            worker=worker,
            message=f"snoozed for {seconds:g}s (no attempt used)",
            max_attempts=F("max_attempts") + 1,
        )
    return "snoozed"


# --- operator actions --------------------------------------------------------------------


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
        cancelled = _cancel(job_id=job.id, actor=actor.user)
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


def _cancel(*, job_id: uuid.UUID, actor: User | None, message: str = "cancel requested") -> Job:
    now = timezone.now()
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        if job.status == JobStatus.QUEUED:
            if _terminates_on_cancel(job):
                _terminate(job)  # its message may already sit on a host that cannot read this row
            job.status, job.finished_at = JobStatus.CANCELLED, now
            job.save(update_fields=["status", "finished_at", "updated_at"])
            _event(job, from_status=JobStatus.QUEUED, to_status=JobStatus.CANCELLED, actor=actor, message=message)
        elif job.status == JobStatus.RUNNING and _terminates_on_cancel(job):
            _terminate(job)
            job.status, job.finished_at, job.lease_expires_at = JobStatus.CANCELLED, now, None
            job.save(update_fields=["status", "finished_at", "lease_expires_at", "updated_at"])
            _event(
                job,
                from_status=JobStatus.RUNNING,
                to_status=JobStatus.CANCELLED,
                actor=actor,
                message=f"{message}; run terminated",
            )
        elif job.status == JobStatus.RUNNING:
            job.status = JobStatus.CANCELLING
            job.save(update_fields=["status", "updated_at"])
            _event(job, from_status=JobStatus.RUNNING, to_status=JobStatus.CANCELLING, actor=actor, message=message)
        elif job.status in TERMINAL_STATUSES:
            raise Conflict(f"The job already ended ({job.status}); there is nothing to cancel.")
        for child_id in job.children.exclude(status__in=TERMINAL_STATUSES).values_list("id", flat=True):
            _cancel(job_id=child_id, actor=actor, message=f"parent {job.short_id} cancelled")
        if job.parent_id is not None and job.status == JobStatus.CANCELLED:
            _notify_parent(job.parent_id)
        if job.status == JobStatus.CANCELLING and job.lease_expires_at is None:
            _notify_parent(job.pk)  # a waiting parent: it ends once its children have
    return job


def _terminates_on_cancel(job: Job) -> bool:
    kind = get_kind(job.kind)
    return bool(kind and kind.terminate_on_cancel)


def _terminate(job: Job) -> None:
    """Revoke the job's task everywhere; a worker running it kills the process (and its sandbox)."""
    from project.celery import app

    if job.task_id:
        transaction.on_commit(
            # SIGTERM: the sandbox task's handler kills its run (see workers/sandbox/app.py).
            partial(app.control.revoke, job.task_id, terminate=True, signal="SIGTERM")
        )


def job_retry(*, job: Job, actor: Actor) -> Job:
    """failed|cancelled -> queued, with a fresh budget of attempts (the attempt count itself never goes back)."""
    _check_may_manage(job, actor)
    with transaction.atomic():
        locked = Job.objects.select_for_update().get(pk=job.pk)
        if locked.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
            raise Conflict(f"Only failed or cancelled jobs can be retried; this one is {locked.status}.")
        previous = locked.status
        _requeue_ended(locked, actor=actor.user, message="retried")
        _audit_if_someone_elses(locked, actor, "job.retried", previous_status=previous)
    return locked


def _requeue_ended(locked: Job, *, actor: User | None, message: str) -> None:
    """Back to `queued` from failed|cancelled, on a row the caller holds FOR UPDATE."""
    kind = get_kind(locked.kind)
    previous = locked.status
    locked.status = JobStatus.QUEUED
    # `attempt` is the fencing token and must only grow: a stale worker of attempt N
    # must never match a new run. The retry gets a new budget on top of it.
    locked.max_attempts = locked.attempt + (kind.default_max_attempts if kind else 1)
    locked.queued_at = timezone.now()
    locked.finished_at = None
    locked.error = None
    locked.result = None
    locked.progress = 0.0
    locked.progress_message = ""
    locked.save()
    _event(locked, from_status=previous, to_status=JobStatus.QUEUED, actor=actor, message=message)
    transaction.on_commit(partial(job_dispatch, job_id=locked.id))


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
                _requeue_ended(locked, actor=None, message=f"parent {parent.short_id} attempt {attempt} runs it again")
                requeued += 1
        transaction.on_commit(partial(jobs_publish_group, new))
    return len(children), len(new) + requeued


def job_requeue(*, job: Job, actor: Actor) -> Job:
    """Publish a queued job's message again (e.g. after the broker lost it); harmless if it was not lost."""
    _check_may_manage(job, actor)
    if job.status != JobStatus.QUEUED:
        raise Conflict(f"Only queued jobs can be requeued; this one is {job.status}.")
    _event(job, from_status=JobStatus.QUEUED, to_status=JobStatus.QUEUED, actor=actor.user, message="requeued")
    job_dispatch(job_id=job.id)
    return job


# --- reaper ------------------------------------------------------------------------------


def jobs_reap(*, limit: int = 1000) -> dict:
    """Recover work the broker or a worker lost. Runs under an advisory lock: one reaper at a time."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [REAPER_LOCK_ID])
        (locked,) = cursor.fetchone()
    if not locked:
        return {"skipped": True}
    try:
        expired = _reap_expired_leases(limit=limit)
        redispatched = _redispatch_stale_queued(limit=limit)
        rung = sum(jobs_ring().values())
        waiting_parents = _waiting_parents(limit=limit)
        for parent_id in waiting_parents:
            _send_children_changed(str(parent_id))
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [REAPER_LOCK_ID])
    if expired["requeued"] or expired["failed"] or expired["cancelled"] or redispatched:
        logger.info("jobs.reaped", extra={**expired, "redispatched": redispatched})
    return {**expired, "redispatched": redispatched, "rung": rung, "waiting_parents": len(waiting_parents)}


def _reap_expired_leases(*, limit: int) -> dict:
    counts = {"requeued": 0, "failed": 0, "cancelled": 0}
    now = timezone.now()  # for the rows written; expiry itself is judged by the database's clock
    stale_ids = list(
        Job.objects.filter(status__in=ACTIVE_STATUSES, lease_expires_at__lt=Now()).values_list("id", flat=True)[:limit]
    )
    for job_id in stale_ids:
        with transaction.atomic():
            job = (
                Job.objects.select_for_update(skip_locked=True)
                .filter(pk=job_id, status__in=ACTIVE_STATUSES, lease_expires_at__lt=Now())
                .first()
            )
            if job is None:
                continue
            lost = f"lease expired on {job.worker_host or 'unknown worker'} (attempt {job.attempt})"
            previous = job.status
            if previous == JobStatus.CANCELLING:
                job.status, job.finished_at = JobStatus.CANCELLED, now
                counts["cancelled"] += 1
            elif job.attempt >= job.max_attempts:
                job.status, job.finished_at = JobStatus.FAILED, now
                job.error = {
                    "code": "attempts_exhausted",
                    "message": f"Attempts exhausted: {lost}.",
                    "details": {"attempt": job.attempt, "max_attempts": job.max_attempts},
                }
                counts["failed"] += 1
            else:
                job.status, job.queued_at = JobStatus.QUEUED, now
                counts["requeued"] += 1
                transaction.on_commit(partial(job_dispatch, job_id=job.id))
            job.lease_expires_at = None
            job.save()
            _event(job, from_status=previous, to_status=job.status, message=lost, worker="reaper")
            if job.parent_id is not None and job.status in TERMINAL_STATUSES:
                _notify_parent(job.parent_id)
    return counts


def _redispatch_stale_queued(*, limit: int) -> int:
    """Publish again the pushed jobs (their message carries the job) queued too long without a claim."""
    from apps.jobs.kinds import all_kinds

    pushed = [name for name in all_kinds() if not is_pulled(name)]
    horizon = timezone.now() - timedelta(seconds=settings.JOBS_REDISPATCH_AFTER_SECONDS)
    stale = (
        Job.objects.filter(status=JobStatus.QUEUED, kind__in=pushed)
        .filter(Q(dispatched_at__lt=horizon) | Q(dispatched_at__isnull=True, queued_at__lt=horizon))
        .order_by("-priority", "created_at")
        .values_list("id", flat=True)[:limit]
    )
    count = 0
    for job_id in stale:
        job_dispatch(job_id=job_id)
        count += 1
    return count


def jobs_ring(*, limit: int | None = None) -> dict[str, int]:
    """Ring each pulled queue once per eligible job that has no doorbell waiting for it.

    Recovery by state, not elapsed time: after a flushed or restarted broker, a lost publish
    or a delayed job coming due, the next ring (every JOBS_RING_INTERVAL_SECONDS) restores one
    doorbell per eligible job; under a long backlog it publishes nothing, since the doorbells
    already waiting cover it. Returns the doorbells published per queue.
    """
    from apps.operations.selectors import broker_queue_depths

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [RING_LOCK_ID])
        (locked,) = cursor.fetchone()
    if not locked:
        return {}
    try:
        limit = limit or settings.JOBS_RING_MAX_PER_QUEUE
        eligible = _eligible_counts(limit=limit)
        if not eligible:
            return {}
        waiting = broker_queue_depths()
        if waiting is None:
            return {}  # the broker is down: nothing can be rung now, the next ring retries
        published = {}
        for queue, count in eligible.items():
            missing = count - waiting.get(queue, 0)
            if missing > 0:
                published[queue] = _ring(queue, missing)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [RING_LOCK_ID])
    if published:
        logger.info("jobs.rung", extra={"doorbells": published})
    return published


def _eligible_counts(*, limit: int) -> dict[str, int]:
    """Eligible queued jobs of the pulled kinds per queue (each count capped at `limit`)."""
    from apps.jobs.kinds import all_kinds

    pulled = [name for name in all_kinds() if is_pulled(name)]
    paused = set(QueueState.objects.filter(paused=True).values_list("name", flat=True))
    counts = {}
    for queue in PULLED_QUEUES:
        if queue in paused:
            continue
        eligible = Job.objects.filter(queue=queue, status=JobStatus.QUEUED, kind__in=pulled).filter(
            Q(run_after__isnull=True) | Q(run_after__lte=Now())
        )
        count = eligible.values("pk")[:limit].count()
        if count:
            counts[queue] = count
    return counts


def _ring(queue: str, doorbells: int) -> int:
    from project.celery import app

    limit = doorbell_time_limit_s()
    try:
        with app.producer_or_acquire() as producer:
            for _ in range(doorbells):
                app.send_task(
                    DOORBELL_TASK,
                    args=[queue],
                    queue=queues.direct_queue(queue),
                    producer=producer,
                    soft_time_limit=limit,
                    time_limit=limit + DOORBELL_HARD_LIMIT_MARGIN_S,
                )
    except Exception:
        logger.exception("jobs.ring_failed", extra={"queue": queue})
        return 0
    return doorbells


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


# --- fan-out: a parent job and its children ----------------------------------------------
#
# A chord whose counter is the database: each child that ends asks `control` to look at
# its parent (`jobs.children_changed`); the look that finds every child ended runs the
# parent kind's aggregate and finishes the parent. Celery's own chord counts header
# results in a result backend keyed by task id, which a reaper re-dispatch (new task id),
# a flushed Redis or a RabbitMQ-only deployment would break; here a lost notification
# costs one reaper interval (the reaper looks at every waiting parent), never the sweep.


def job_await_children(*, job_id: uuid.UUID, attempt: int, worker: str, children: int) -> bool:
    """A parent that fanned out keeps `running` without a lease until its last child ends."""
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=job_id, attempt=attempt, status__in=ACTIVE_STATUSES).first()
        if job is None:
            return False
        Job.objects.filter(pk=job.pk).update(lease_expires_at=None, progress_message=f"0/{children} children ended")
        _event(
            job, from_status=job.status, to_status=job.status, worker=worker, message=f"waiting for {children} children"
        )
        _notify_parent(job.pk)  # children may all have ended already
    return True


def _notify_parent(parent_id) -> None:
    transaction.on_commit(partial(_send_children_changed, str(parent_id)))


def _send_children_changed(parent_id: str) -> None:
    from project.celery import app

    try:
        app.send_task("jobs.children_changed", args=[parent_id], queue=queues.direct_queue(queues.CONTROL))
    except Exception:
        # The reaper looks at every waiting parent anyway.
        logger.exception("job.children_changed_not_sent", extra={"job_id": parent_id})


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
        children = list(parent.children.order_by("created_at", "id"))
        ended = sum(1 for child in children if child.status in TERMINAL_STATUSES)
        if ended < len(children) or not children:
            Job.objects.filter(pk=parent.pk).update(
                progress=ended / len(children) if children else 0.0,
                progress_message=f"{ended}/{len(children)} children ended",
            )
            return "waiting"
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


def _waiting_parents(*, limit: int) -> list:
    return list(
        Job.objects.filter(status__in=ACTIVE_STATUSES, lease_expires_at__isnull=True, children__isnull=False)
        .values_list("id", flat=True)
        .distinct()[:limit]
    )


# --- worker hosts ------------------------------------------------------------------------


def worker_host_register(*, hostname: str, queues: list[str], capabilities: dict, version: str, pid: int) -> None:
    from apps.jobs.models import WorkerHost

    now = timezone.now()
    WorkerHost.objects.update_or_create(
        hostname=hostname,
        defaults={
            "queues": sorted(queues),
            "capabilities": capabilities,
            "version": version,
            "pid": pid,
            "started_at": now,
            "last_heartbeat_at": now,
            "stopped_at": None,
        },
    )


def worker_host_heartbeat(*, hostname: str) -> None:
    from apps.jobs.models import WorkerHost

    WorkerHost.objects.filter(hostname=hostname).update(last_heartbeat_at=timezone.now(), stopped_at=None)


def worker_host_stopped(*, hostname: str) -> None:
    from apps.jobs.models import WorkerHost

    WorkerHost.objects.filter(hostname=hostname).update(stopped_at=timezone.now())


# --- runs reported by hosts without database access (sandbox) ----------------------------------


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


def _remote_output_staging(job_id, task_id: str) -> Path:
    """Where the chunks of one dispatch's long streams wait for its outcome (one folder per dispatch)."""
    return Path(settings.MEDIA_ROOT) / "artifacts" / str(job_id) / f"sandbox-{uuid.UUID(task_id).hex}"


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
    staging = _remote_output_staging(job_id, task_id)
    staging.mkdir(parents=True, exist_ok=True)
    part = staging / f"{stream}.{index:05d}"
    part.with_suffix(".tmp").write_bytes(base64.b64decode(chunk, validate=True))
    part.with_suffix(".tmp").rename(part)  # whole or absent: the outcome counts complete parts
    return True


def _remote_output_artifacts(job: Job, task_id: str, outcome: dict, *, allow_incomplete: bool) -> None:
    """Keep each long stream (and judge output file) whose chunks have all arrived as the job's artifact.

    The outcome says which (sandbox_announced_artifacts); each one's artifact id is noted in it.
    """
    staging = _remote_output_staging(job.id, task_id)
    for stream, name, expected, entry, key in sandbox_announced_artifacts(outcome):
        if not isinstance(expected, int) or not 0 < expected <= MAX_OUTPUT_CHUNKS:
            continue
        parts = [staging / f"{stream}.{index:05d}" for index in range(expected)]
        if not all(part.exists() for part in parts):
            if not allow_incomplete:
                raise RemoteOutputIncomplete(f"{stream}: {sum(p.exists() for p in parts)} of {expected} chunks")
            entry[key] = None
            continue
        target = job_output_dir(job_id=job.id, attempt=job.attempt) / stream
        digest = hashlib.sha256()
        with target.open("wb") as whole:
            for part in parts:
                data = part.read_bytes()
                digest.update(data)
                whole.write(data)
        job_artifact_add(job_id=job.id, attempt=job.attempt, path=target, name=name, sha256=digest.hexdigest())
        artifact = Artifact.objects.filter(job_id=job.id, role="output", name=name).values_list("id", flat=True)
        entry[key] = str(artifact.first()) if artifact.exists() else None
    shutil.rmtree(staging, ignore_errors=True)


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


def worker_host_report(
    *, hostname: str, event: str, queues: list[str], capabilities: dict, version: str, pid: int
) -> None:
    """WorkerHost upkeep for hosts that report through `control` instead of writing themselves."""
    if event == "ready":
        worker_host_register(hostname=hostname, queues=queues, capabilities=capabilities, version=version, pid=pid)
    elif event == "heartbeat":
        worker_host_heartbeat(hostname=hostname)
    elif event == "stopped":
        worker_host_stopped(hostname=hostname)


def job_output_dir(*, job_id, attempt: int) -> Path:
    """Where an attempt writes its files (under MEDIA_ROOT), made if missing; one folder per attempt."""
    path = Path(settings.MEDIA_ROOT) / "artifacts" / str(job_id) / f"attempt-{attempt}"
    path.mkdir(parents=True, exist_ok=True)
    return path


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
    """Record a file the job produced, only while `attempt` still holds the job (fenced like every worker write)."""
    media_root = Path(settings.MEDIA_ROOT)
    with transaction.atomic():
        holder = Job.objects.select_for_update().filter(pk=job_id, attempt=attempt, status__in=ACTIVE_STATUSES)
        owner = holder.values_list("organization_id", "owner_id").first()
        if owner is None:
            return False
        Artifact.objects.filter(job_id=job_id, role=role, name=name).delete()
        Artifact.objects.create(
            organization_id=owner[0],
            owner_id=owner[1],
            job_id=job_id,
            role=role,
            name=name,
            file=str(path.relative_to(media_root)),
            size_bytes=path.stat().st_size,
            sha256=sha256,
            content_type=content_type,
            attempt=attempt,
        )
    return True


# --- uploaded inputs ---------------------------------------------------------------------

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
