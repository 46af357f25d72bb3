"""The job life cycle: every change of a job's state, and the rules they all keep.

States and who moves a job between them (each arrow is one function here):

    (new)      -> queued       insert_submitted      web, through submit.job_submit
    queued     -> running      job_claim_next        a worker a doorbell woke (the scheduler's pick)
    running -> ended, queued -> running   job_finish_and_claim_next   a turn's finish and next claim, one statement
    queued     -> running      job_claim             a pushed run's host reporting its start (by dispatch id)
    running    -> running      job_heartbeat         the attempt's worker renews its lease
    running    -> running      job_await_children    a fan-out parent gives up its lease until its children end
    running    -> succeeded | failed | cancelled      job_finish   the attempt's worker, or control
    cancelling -> cancelled                           job_finish   (fan-out parents, sandbox outcomes)
    running    -> queued | failed  job_retry_later   after a transient error: backoff, or attempts exhausted
    running    -> queued       job_snooze            the job asked to wait; no attempt is used
    queued     -> queued       move_queue            the reaper, when the queue a job waits on has no host left
    queued     -> cancelled    cancel                a member, an operator, or a cancelled parent
    running    -> cancelling   cancel                the worker stops at its next check (or cancelled at
                                                     once for kinds whose run is terminated)
    failed | cancelled -> queued   requeue_ended     retry by a member or operator, or a parent's new attempt
    running | cancelling -> queued | failed | cancelled   reap_expired_leases   the reaper, on an expired lease

Invariants:

1. Fencing by attempt. `attempt` only grows: each claim adds one, nothing ever lowers it
   (a retry grows `max_attempts` instead, a snooze grows both). Every worker write
   (heartbeat, progress, finish, retry, snooze, await, artifacts) names the attempt it
   holds and the states it starts from in one conditional statement; a fenced-out attempt
   changes nothing and is told so (False, None or "fenced").
2. One clock. Leases, `run_after` and expiry are judged by PostgreSQL's `now()`, never by
   a worker's or the control host's clock.
3. Every transition writes its JobEvent in the same transaction (claim, submit and
   finish in the same statement; a turn's finish and its next claim share one statement,
   each with its own event: tests/integration/test_turns.py).
4. Ended is final, except through `requeue_ended` (an explicit retry), which gives a new
   budget of attempts on top of the attempts already spent.
5. Messages follow state, not the other way round: doorbells, revokes and parent
   notifications are sent on commit, and losing any of them is harmless, because the ring
   and the reaper (services.housekeeping) recover by the rows' state.
"""

import functools
import json
import logging
import random
import uuid
import zlib
from datetime import timedelta
from functools import partial

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.db.models import F
from django.db.models.functions import Now
from django.utils import timezone

from apps.accounts.models import User
from apps.core.db import PreparedStatement
from apps.core.errors import Conflict
from apps.jobs.kinds import get_kind
from apps.jobs.models import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    FailureOrigin,
    Job,
    JobEvent,
    JobStatus,
    failure_origin,
)
from apps.jobs.services.dispatch import job_dispatch, notify_parent, revoke_run

logger = logging.getLogger(__name__)


def record_event(
    job: Job, *, from_status: str, to_status: str, message: str = "", worker: str = "", actor=None
) -> None:
    JobEvent.objects.create(
        job=job,
        from_status=from_status,
        to_status=to_status,
        attempt=job.attempt,
        worker=worker,
        actor=actor,
        message=message,
    )


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


def insert_submitted(job: Job, *, actor: User) -> None:
    """INSERT the job and its first event in one statement (submit is on every job's path)."""
    values = [field.get_db_prep_save(field.pre_save(job, add=True), connection) for field in Job._meta.concrete_fields]
    with connection.cursor() as cursor:
        cursor.execute(*_insert_statement().sql_and_args([*values, actor.pk]))
    job._state.adding = False
    job._state.db = "default"


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


# The finish's CTEs (`previous`, `finished`, `finish_event`, `finish_usage`); the finish alone
# and the finish that claims the next job in the same statement (job_finish_and_claim_next) use them.
_FINISH_CTES = """
previous AS (
    SELECT id, status FROM jobs_job
     WHERE id = %(job_id)s AND attempt = %(attempt)s AND status IN ('running', 'cancelling')
       FOR UPDATE
), finished AS (
    UPDATE jobs_job AS job
       SET status = %(status)s::text, result = %(result)s::jsonb, error = %(error)s::jsonb, finished_at = now(),
           failure = %(failure)s::text,
           lease_expires_at = NULL, updated_at = now(),
           progress = CASE WHEN %(status)s::text = 'succeeded' THEN 1 ELSE job.progress END,
           progress_message = CASE WHEN %(status)s::text = 'succeeded' THEN '' ELSE job.progress_message END
      FROM previous
     WHERE job.id = previous.id
 RETURNING job.id, job.attempt, job.parent_id, previous.status AS from_status, job.organization_id, job.queue,
           job.started_at
), finish_event AS (
    INSERT INTO jobs_jobevent (job_id, created_at, from_status, to_status, attempt, worker, message)
    SELECT id, now(), from_status, %(status)s::text, attempt, %(worker)s, %(message)s::text FROM finished
), finish_usage AS (
    -- The attempt's wall time joins its organization's decayed cost on the queue (fair share).
    INSERT INTO jobs_organizationusage AS usage (organization_id, queue, cost_s, updated_at)
    SELECT organization_id, queue, GREATEST(EXTRACT(EPOCH FROM now() - started_at)::float8, 0), now()
      FROM finished WHERE started_at IS NOT NULL
        ON CONFLICT (organization_id, queue) DO UPDATE
       SET cost_s = usage.cost_s * exp(-EXTRACT(EPOCH FROM now() - usage.updated_at)::float8 * ln(2) / %(half_life)s)
                    + EXCLUDED.cost_s,
           updated_at = now()
)"""
_FINISH_SQL = "WITH" + _FINISH_CTES + "\nSELECT count(*), max(parent_id::text) FROM finished\n"


# The scheduler: the best eligible job of a queue, in one statement. Eligible: queued, with an
# attempt left, due (`run_after`, judged by the database clock), its queue not paused, its
# organization under its running limit for the queue (OrganizationQuota.running_jobs) and its
# concurrency key under the key's limit. Best: priority; then weighted fair share, the
# organization whose recent cost on the queue (decayed, running attempts included) divided by
# its weight (OrganizationQuota.share_weight) is lowest; then age. The limits count running
# jobs, so claims of one queue take turns (job_claim_next holds a transaction-level advisory
# lock per queue while it counts); SKIP LOCKED still keeps other work from waiting on a row.
# apps.jobs.selectors.job_wait_reason explains a queued job by the same rules.

# The limits, as CTEs both the claim and the wait reason (apps.jobs.selectors) use: `active`
# (running attempts), `organization_full` (organizations at their running limit on the queue),
# `key_running` (running jobs per concurrency key) and `kind_rate_full` (kinds at their start
# rate, OrganizationQuota.starts_per_minute). Parameters: queue, default_running.
_ACTIVE_CTE = """
active AS (
    SELECT organization_id, queue, concurrency_key, started_at FROM jobs_job
     WHERE status IN ('running', 'cancelling')
)"""
_LIMITS_ON_ACTIVE = """, organization_full AS (
    SELECT active.organization_id FROM active
      LEFT JOIN accounts_organizationquota AS quota ON quota.organization_id = active.organization_id
     WHERE active.queue = %(queue)s
     GROUP BY active.organization_id
    HAVING count(*) >= min(COALESCE((quota.running_jobs ->> %(queue)s)::int, %(default_running)s::int))
), key_running AS (
    SELECT organization_id, concurrency_key, count(*) AS running FROM active
     WHERE concurrency_key IS NOT NULL
     GROUP BY organization_id, concurrency_key
), kind_rate_full AS (
    -- (organization, kind) pairs that started their `starts_per_minute` in the last 60 s.
    SELECT quota.organization_id, limits.kind FROM accounts_organizationquota AS quota
     CROSS JOIN LATERAL jsonb_each_text(quota.starts_per_minute) AS limits(kind, per_minute)
     WHERE (SELECT count(*) FROM jobs_job AS started
             WHERE started.organization_id = quota.organization_id AND started.kind = limits.kind
               AND started.started_at > now() - interval '60 seconds') >= limits.per_minute::int
)"""
LIMITS_CTES = _ACTIVE_CTE + _LIMITS_ON_ACTIVE
# A queued job held by its concurrency key's limit or its kind's start rate (`job` is the row).
KEY_HELD_SQL = """(EXISTS (
    SELECT 1 FROM key_running AS k
     WHERE k.organization_id = job.organization_id AND k.concurrency_key = job.concurrency_key
       AND k.running >= job.concurrency_limit
) OR EXISTS (
    SELECT 1 FROM kind_rate_full AS r WHERE r.organization_id = job.organization_id AND r.kind = job.kind
))"""
# A queued job of `queue` that a claim could take now, by every rule but the queue's pause
# (`job` is the row; needs LIMITS_CTES): the ring's count and the wait reason use it.
ELIGIBLE_SQL = (
    "job.queue = %(queue)s AND job.status = 'queued'"  # noqa: S608 - constant SQL fragments only
    " AND job.attempt < job.max_attempts AND (job.run_after IS NULL OR job.run_after <= now())"
    " AND job.organization_id NOT IN (SELECT organization_id FROM organization_full)"
    " AND NOT " + KEY_HELD_SQL
)

# From the running attempts' cost to the claimed row and its event; RUNNING_ATTEMPTS stands for
# the CTE of running attempts the fair share charges (`active`, or `running_now` in the
# statement that also finishes a job).
_PICK_AND_CLAIM_CTES = (
    """, running_cost AS ("""  # noqa: S608 - constant SQL fragments only, values are parameters
    """
    SELECT organization_id, sum(GREATEST(EXTRACT(EPOCH FROM now() - started_at)::float8, 0)) AS cost_s
      FROM RUNNING_ATTEMPTS
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
           AND NOT """
    + KEY_HELD_SQL
    + """
         -- The order of job_queued_by_organization: the head is the first eligible index entry.
         ORDER BY job.priority DESC, job.created_at
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
    -- By primary key alone: with `status = 'queued'` here the planner may take a partial index
    -- of queued jobs instead (statistics from an emptier table make it look tiny) and walk the
    -- whole backlog (1.3 ms a claim at 500 queued, docs/benchmarks.md). The locked row's
    -- current status is checked in `claimed`: a row that changed after this statement's
    -- snapshot (e.g. cancelled) is returned here as it is now.
    SELECT job.id, job.status FROM jobs_job AS job
     WHERE job.id = (SELECT id FROM best)
       FOR UPDATE OF job SKIP LOCKED
), claimed AS (
    UPDATE jobs_job AS job
       SET status = 'running', attempt = attempt + 1, started_at = now(), finished_at = NULL,
           lease_expires_at = now() + make_interval(secs => %(lease)s), worker_host = %(worker)s,
           progress = 0, progress_message = '', updated_at = now(), run_after = NULL,
           task_id = COALESCE(%(task_id)s::text, job.task_id)
      FROM candidate
     WHERE job.id = candidate.id AND candidate.status = 'queued'
 RETURNING job.*
), event AS (
    INSERT INTO jobs_jobevent (job_id, created_at, from_status, to_status, attempt, worker, message)
    SELECT id, now(), 'queued', 'running', attempt, %(worker)s, 'attempt ' || attempt || ' of ' || max_attempts
      FROM claimed
)"""
)
_CLAIM_NEXT_SQL = (
    "WITH RECURSIVE"
    + LIMITS_CTES
    + _PICK_AND_CLAIM_CTES.replace("RUNNING_ATTEMPTS", "active")
    + "\nSELECT * FROM claimed\n"
)

# Finish job N and claim the queue's next best eligible job in one statement, so a turn's
# worker commits once per job instead of twice (`manage.py bench jobs`; decision 0049).
# Every CTE sees the snapshot from before the statement, where the attempt being finished is
# still running: `active` leaves it out (it holds no slot once this commits), so the limits
# are judged as if the finish had committed first; the fair share still charges its time
# (`running_now`), which is what the finish adds to the organization's usage. A fenced
# finish matches no running row of that attempt, so nothing is left out.
_FINISH_CLAIM_NEXT_SQL = (
    "WITH RECURSIVE"  # noqa: S608 - constant SQL fragments only, values are parameters
    + _FINISH_CTES
    + """, running_now AS (
    SELECT id, attempt, organization_id, queue, concurrency_key, started_at FROM jobs_job
     WHERE status IN ('running', 'cancelling')
), active AS (
    SELECT organization_id, queue, concurrency_key, started_at FROM running_now
     WHERE NOT (id = %(job_id)s AND attempt = %(attempt)s)
)"""
    + _LIMITS_ON_ACTIVE
    + _PICK_AND_CLAIM_CTES.replace("RUNNING_ATTEMPTS", "running_now")
    + """
SELECT (SELECT count(*) FROM finished), (SELECT max(parent_id::text) FROM finished), claimed.*
  FROM (VALUES (1)) AS one LEFT JOIN claimed ON true
"""
)


# pg_advisory_xact_lock(CLAIM_LOCK_CLASS, crc32(queue)): one claim of a queue counts at a time.
CLAIM_LOCK_CLASS = 0x5377


@functools.cache
def _claim_next_statement() -> PreparedStatement:
    columns = ", ".join(f"job.{connection.ops.quote_name(field.column)}" for field in Job._meta.concrete_fields)
    return PreparedStatement(
        "switchyard_job_claim_next", _CLAIM_NEXT_SQL.replace("RETURNING job.*", f"RETURNING {columns}")
    )


@functools.cache
def _finish_claim_next_statement() -> PreparedStatement:
    columns = ", ".join(f"job.{connection.ops.quote_name(field.column)}" for field in Job._meta.concrete_fields)
    return PreparedStatement(
        "switchyard_job_finish_claim_next", _FINISH_CLAIM_NEXT_SQL.replace("RETURNING job.*", f"RETURNING {columns}")
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
    return _claimed_from_row(_fetch_one(statement, params, prefix), params)


def _fetch_one(statement: PreparedStatement, params: dict, prefix: tuple[str, list] | None = None):
    """Execute `statement` (after `prefix`, a statement with positional args, in the same round trip); its row."""
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
        return cursor.fetchone()


def _claimed_from_row(row, params: dict) -> Job | None:
    if row is None or row[0] is None:
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
    params = _claim_next_params(queue=queue, worker=worker, task_id=task_id, lease_seconds=lease_seconds)
    return _claimed(_claim_next_statement(), params, prefix=_claim_lock(queue))


def _claim_next_params(*, queue: str, worker: str, task_id: str | None, lease_seconds: float | None) -> dict:
    return {
        "queue": queue,
        "worker": worker,
        "task_id": task_id,
        "lease": lease_seconds or settings.JOBS_LEASE_SECONDS,
        "default_running": settings.ORGANIZATION_QUOTA_DEFAULTS.get("running_jobs", {}).get(queue),
        "half_life": settings.JOBS_FAIR_SHARE_HALF_LIFE_SECONDS,
    }


def _claim_lock(queue: str) -> tuple[str, list]:
    """The queue's claim lock, sent before a claim in its round trip.

    Two statements of one implicit transaction: the claim's snapshot is taken after the
    lock, so the running jobs it counts include every claim of this queue that committed
    before it.
    """
    return ("SELECT pg_advisory_xact_lock(%s, %s); ", [CLAIM_LOCK_CLASS, zlib.crc32(queue.encode()) & 0x7FFFFFFF])


def job_finish_and_claim_next(
    *,
    job_id: uuid.UUID,
    attempt: int,
    status: str,
    queue: str,
    result: dict | None = None,
    error: dict | None = None,
    worker: str = "",
    task_id: str | None = None,
    lease_seconds: float | None = None,
) -> tuple[bool, Job | None]:
    """job_finish, then job_claim_next on `queue`, in one statement and one commit: (finished, next job or None).

    For a doorbell's turn (apps.jobs.runner.run_next). The finish is fenced exactly as
    job_finish's (a fenced-out attempt changes nothing, and the next job is claimed all the
    same: the worker's slot is free); the claim judges priority, limits, fair share and
    pause as job_claim_next would right after the finish committed. One transaction: if it
    fails, neither happened.
    """
    params = {
        **_finish_params(job_id=job_id, attempt=attempt, status=status, result=result, error=error, worker=worker),
        **_claim_next_params(queue=queue, worker=worker, task_id=task_id, lease_seconds=lease_seconds),
    }
    row = _fetch_one(_finish_claim_next_statement(), params, prefix=_claim_lock(queue))
    finished, parent_id = row[0], row[1]
    _finished(job_id=job_id, attempt=attempt, status=status, finished=finished, parent_id=parent_id)
    return bool(finished), _claimed_from_row(row[2:], params)


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
    params = _finish_params(job_id=job_id, attempt=attempt, status=status, result=result, error=error, worker=worker)
    finished, parent_id = _fetch_one(_FINISH, params)
    return _finished(job_id=job_id, attempt=attempt, status=status, finished=finished, parent_id=parent_id)


def _finish_params(*, job_id, attempt: int, status: str, result: dict | None, error: dict | None, worker: str) -> dict:
    if status not in TERMINAL_STATUSES:
        raise ValueError(f"not a terminal status: {status}")
    return {
        "job_id": str(job_id),
        "attempt": attempt,
        "status": str(status),
        "worker": worker,
        "result": _jsonb(result),
        "error": _jsonb(error),
        "message": error["message"] if error else "",
        "failure": failure_origin(error) if status == JobStatus.FAILED else "",
        "half_life": settings.JOBS_FAIR_SHARE_HALF_LIFE_SECONDS,
    }


def _finished(*, job_id, attempt: int, status: str, finished: int, parent_id) -> bool:
    """After a finish statement: log it, and tell a parent; whether it was this attempt's."""
    if not finished:
        logger.warning("job.finish_fenced", extra={"job_id": str(job_id), "attempt": attempt})
        return False
    if parent_id is not None:
        notify_parent(parent_id)
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
    record_event(locked, from_status=locked.status, to_status=JobStatus.QUEUED, worker=worker, message=message)
    transaction.on_commit(partial(job_dispatch, job_id=locked.id, countdown=seconds))


def move_queue(job: Job, *, to_queue: str, why: str) -> bool:
    """A queued job waits on `to_queue` from now on (only while it is still queued on its old queue)."""
    with transaction.atomic():
        moved = Job.objects.filter(pk=job.pk, status=JobStatus.QUEUED, queue=job.queue).update(queue=to_queue)
        if moved:
            record_event(
                job,
                from_status=JobStatus.QUEUED,
                to_status=JobStatus.QUEUED,
                worker="reaper",
                message=f"moved from {job.queue} to {to_queue}: {why}",
            )
    return bool(moved)


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


def cancel(*, job_id: uuid.UUID, actor: User | None, message: str = "cancel requested") -> Job:
    now = timezone.now()
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        if job.status == JobStatus.QUEUED:
            if _terminates_on_cancel(job):
                revoke_run(job)  # its message may already sit on a host that cannot read this row
            job.status, job.finished_at = JobStatus.CANCELLED, now
            job.save(update_fields=["status", "finished_at", "updated_at"])
            record_event(job, from_status=JobStatus.QUEUED, to_status=JobStatus.CANCELLED, actor=actor, message=message)
        elif job.status == JobStatus.RUNNING and _terminates_on_cancel(job):
            revoke_run(job)
            job.status, job.finished_at, job.lease_expires_at = JobStatus.CANCELLED, now, None
            job.save(update_fields=["status", "finished_at", "lease_expires_at", "updated_at"])
            record_event(
                job,
                from_status=JobStatus.RUNNING,
                to_status=JobStatus.CANCELLED,
                actor=actor,
                message=f"{message}; run terminated",
            )
        elif job.status == JobStatus.RUNNING:
            job.status = JobStatus.CANCELLING
            job.save(update_fields=["status", "updated_at"])
            record_event(
                job, from_status=JobStatus.RUNNING, to_status=JobStatus.CANCELLING, actor=actor, message=message
            )
        elif job.status in TERMINAL_STATUSES:
            raise Conflict(f"The job already ended ({job.status}); there is nothing to cancel.")
        for child_id in job.children.exclude(status__in=TERMINAL_STATUSES).values_list("id", flat=True):
            cancel(job_id=child_id, actor=actor, message=f"parent {job.short_id} cancelled")
        if job.parent_id is not None and job.status == JobStatus.CANCELLED:
            notify_parent(job.parent_id)
        if job.status == JobStatus.CANCELLING and job.lease_expires_at is None:
            notify_parent(job.pk)  # a waiting parent: it ends once its children have
    return job


def _terminates_on_cancel(job: Job) -> bool:
    kind = get_kind(job.kind)
    return bool(kind and kind.terminate_on_cancel)


def requeue_ended(locked: Job, *, actor: User | None, message: str) -> None:
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
    locked.failure = ""
    locked.result = None
    locked.progress = 0.0
    locked.progress_message = ""
    locked.save()
    record_event(locked, from_status=previous, to_status=JobStatus.QUEUED, actor=actor, message=message)
    transaction.on_commit(partial(job_dispatch, job_id=locked.id))


def reap_expired_leases(*, limit: int) -> dict:
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
                job.status, job.finished_at, job.failure = JobStatus.FAILED, now, FailureOrigin.SYSTEM
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
            record_event(job, from_status=previous, to_status=job.status, message=lost, worker="reaper")
            if job.parent_id is not None and job.status in TERMINAL_STATUSES:
                notify_parent(job.parent_id)
    return counts


def job_await_children(*, job_id: uuid.UUID, attempt: int, worker: str, children: int) -> bool:
    """A parent that fanned out keeps `running` without a lease until its last child ends."""
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=job_id, attempt=attempt, status__in=ACTIVE_STATUSES).first()
        if job is None:
            return False
        Job.objects.filter(pk=job.pk).update(lease_expires_at=None, progress_message=f"0/{children} children ended")
        record_event(
            job, from_status=job.status, to_status=job.status, worker=worker, message=f"waiting for {children} children"
        )
        notify_parent(job.pk)  # children may all have ended already
    return True
