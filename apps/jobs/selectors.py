"""Reads for jobs, always scoped to the caller's organization."""

from django.db import connection
from django.db.models import Count, QuerySet

from apps.accounts.models import Membership
from apps.accounts.permissions import READ_SCHEDULES, require
from apps.core.errors import NotFound
from apps.jobs.models import Artifact, Job, JobEvent, Schedule, WorkerHost


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


def job_wait_reason(job: Job) -> dict | None:
    """Why a queued job is not running yet, by the rules the claim uses (apps.jobs.services.job_claim_next).

    {"code", "message"} with code one of: run_after, queue_paused, attempts_exhausted,
    organization_limit, key_limit, rate_limited, no_live_host, behind; None for a job that is not queued.
    """

    from datetime import timedelta

    from django.db.models.functions import Now

    from apps.jobs.models import ACTIVE_STATUSES, JobStatus, QueueState
    from apps.jobs.quotas import organization_quota

    if job.status != JobStatus.QUEUED:
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")  # the claim's clock
        (now,) = cursor.fetchone()
    if job.run_after is not None and job.run_after > now:
        seconds = (job.run_after - now).total_seconds()
        return {"code": "run_after", "message": f"Not before {job.run_after.isoformat()} (in {seconds:.0f} s)."}
    paused = QueueState.objects.filter(name=job.queue, paused=True).first()
    if paused is not None:
        why = f": {paused.reason}" if paused.reason else ""
        return {"code": "queue_paused", "message": f"Queue '{job.queue}' is paused{why}."}
    if job.attempt >= job.max_attempts:
        return {"code": "attempts_exhausted", "message": f"No attempt left ({job.attempt} of {job.max_attempts})."}
    running = Job.objects.filter(organization_id=job.organization_id, status__in=ACTIVE_STATUSES)
    limit = organization_quota(job.organization).running_jobs.get(job.queue)
    if limit is not None:
        used = running.filter(queue=job.queue).count()
        if used >= limit:
            return {
                "code": "organization_limit",
                "message": f"Your organization runs {used} of at most {limit} jobs at once on '{job.queue}'.",
            }
    if job.concurrency_key is not None:
        used = running.filter(concurrency_key=job.concurrency_key).count()
        if used >= job.concurrency_limit:
            return {
                "code": "key_limit",
                "message": f"{used} of at most {job.concurrency_limit} jobs with concurrency key "
                f"'{job.concurrency_key}' are running.",
            }
    per_minute = organization_quota(job.organization).starts_per_minute.get(job.kind)
    if per_minute is not None:
        started = Job.objects.filter(
            organization_id=job.organization_id, kind=job.kind, started_at__gt=Now() - timedelta(seconds=60)
        )
        if started.count() >= per_minute:
            return {
                "code": "rate_limited",
                "message": f"Your organization started {started.count()} {job.kind} jobs in the last minute, "
                f"at most {per_minute} (quota starts_per_minute.{job.kind}).",
            }
    if not any(host.is_alive and job.queue in host.queues for host in WorkerHost.objects.filter(stopped_at=None)):
        return {"code": "no_live_host", "message": f"No live worker consumes queue '{job.queue}'."}
    ahead, sharing = _jobs_claimed_first(job)
    message = f"Behind {ahead} eligible job(s) of '{job.queue}' that the claim takes first (higher priority, "
    message += "or your organization's own jobs queued earlier)."
    if sharing:
        message += f" {sharing} other organization(s) have work at the same priority: fair share takes turns."
    return {"code": "behind", "message": message, "ahead": ahead, "sharing": sharing}


def _jobs_claimed_first(job: Job) -> tuple[int, int]:
    """(eligible jobs the claim takes before `job`, other organizations with eligible work at its priority).

    Eligible as the claim has it (apps.jobs.services.lifecycle): due, an attempt left, the
    organization under its limit, the concurrency key under its own. Other organizations at
    the same priority are not counted ahead: fair share orders them by recent cost.
    """
    from django.conf import settings

    from apps.jobs.services.lifecycle import ELIGIBLE_SQL, LIMITS_CTES

    sql = (
        "WITH"
        + LIMITS_CTES
        + """
SELECT count(*) FILTER (
           WHERE job.priority > %(priority)s
              OR (job.organization_id = %(organization)s AND (job.created_at, job.id) < (%(created)s, %(id)s))),
       count(DISTINCT job.organization_id) FILTER (
           WHERE job.priority = %(priority)s AND job.organization_id <> %(organization)s)
  FROM jobs_job AS job
 WHERE job.id <> %(id)s AND job.priority >= %(priority)s AND """
        + ELIGIBLE_SQL
    )
    params = {
        "queue": job.queue,
        "default_running": settings.ORGANIZATION_QUOTA_DEFAULTS.get("running_jobs", {}).get(job.queue),
        "priority": job.priority,
        "organization": job.organization_id,
        "created": job.created_at,
        "id": job.pk,
    }
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        ahead, sharing = cursor.fetchone()
    return ahead, sharing


def queue_has_due_work(*, queue: str) -> bool:
    """Whether `queue` holds a queued job that is due: a probe for a lingering turn (apps.jobs.runner.Turn.linger).

    One index probe, read only (no lock, no commit to wait for), against the claim's
    advisory lock, limit CTEs and durable commit: a turn looks with this, and claims only
    when it says yes. Limits and pause are not judged here; the claim that follows does.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM jobs_job WHERE queue = %s AND status = 'queued'"
            " AND (run_after IS NULL OR run_after <= now()))",
            [queue],
        )
        return cursor.fetchone()[0]


def queue_get(*, name: str) -> dict:
    """One queue of queue_list, or NotFound."""
    found = next((queue for queue in queue_list() if queue["name"] == name), None)
    if found is None:
        from project import queues

        choices = ", ".join(name for name in queues.QUEUE_NAMES if name != queues.CONTROL)
        raise NotFound(f"No queue named '{name[:64]}'; the queues are {choices}.")
    return found


def queue_list() -> list[dict]:
    """Every job queue with its switch and how much waits in it (platform-wide, no job details)."""
    from apps.jobs.models import JobStatus, QueueState
    from project import queues

    states = {state.name: state for state in QueueState.objects.all()}
    queued = dict(Job.objects.filter(status=JobStatus.QUEUED).values_list("queue").annotate(n=Count("pk")).order_by())
    return [
        {
            "name": name,
            "paused": bool(states.get(name) and states[name].paused),
            "reason": states[name].reason if name in states else "",
            "queued": queued.get(name, 0),
        }
        for name in queues.QUEUE_NAMES
        if name != queues.CONTROL
    ]


def schedule_list(*, membership: Membership) -> QuerySet[Schedule]:
    require(membership, READ_SCHEDULES, "read schedules")
    return Schedule.objects.filter(organization=membership.organization).select_related("created_by")


def schedule_get(*, membership: Membership, schedule_id) -> Schedule:
    """The schedule, or 404 whether it does not exist or belongs to another organization."""
    schedule = schedule_list(membership=membership).filter(pk=schedule_id).first()
    if schedule is None:
        raise NotFound("No such schedule.")
    return schedule
