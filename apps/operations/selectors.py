"""Reads for operators: job aggregates, broker queue depths and worker hosts.

Everything here is computed from PostgreSQL (and the broker) when asked, never from
counters kept in one process: web runs as several gunicorn processes and jobs finish in
worker processes elsewhere, so only the database sees every job (docs/decisions/0006).
"""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection
from django.db.models import (
    Count,
    DurationField,
    ExpressionWrapper,
    F,
    FloatField,
    Min,
    Q,
    QuerySet,
    Sum,
    TextField,
    Value,
)
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Coalesce, Now
from django.utils import timezone

from apps.accounts.models import User
from apps.jobs.models import (
    TERMINAL_STATUSES,
    UNFINISHED_STATUSES,
    ControlCount,
    ControlRun,
    FailureOrigin,
    Job,
    JobStatus,
    WorkerHost,
)
from project import queues

logger = logging.getLogger(__name__)

# Seconds. Jobs range from a sub-second sleep to a 3 h inference run (the longest hard limit).
DURATION_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 10800.0)
# Waiting is usually well under a second on an idle queue; minutes mean a backlog.
QUEUE_WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts (one per bound, `+Inf` is `count`), as Prometheus wants them."""

    buckets: tuple[float, ...]
    cumulative: tuple[int, ...]
    count: int
    sum: float


def jobs_for_staff(*, user: User) -> QuerySet[Job]:
    """Jobs an admin user may see: all for a superuser, else those of the organizations they belong to."""
    jobs = Job.objects.all()
    if user.is_superuser:
        return jobs
    return jobs.filter(organization__memberships__user=user)


# --- counts and histograms over every job (the /metrics collector) ----------------------


def job_failure_counts() -> list[tuple[str, str, int]]:
    """(kind, failure origin, failed jobs): the system's failures (dead letters) apart from the jobs' own."""
    rows = Job.objects.filter(status=JobStatus.FAILED).order_by().values("kind", "failure").annotate(n=Count("id"))
    return [(row["kind"], row["failure"] or "system", row["n"]) for row in rows]


def job_counts() -> list[tuple[str, str, int]]:
    """(kind, status, jobs) for every kind and status present."""
    rows = Job.objects.order_by().values("kind", "status").annotate(n=Count("id"))
    return [(row["kind"], row["status"], row["n"]) for row in rows]


def _histograms(jobs: QuerySet[Job], *, start: str, end: str, buckets: tuple[float, ...]) -> dict[str, Histogram]:
    elapsed = ExpressionWrapper(F(end) - F(start), output_field=DurationField())
    bucket_counts = {
        f"le_{i}": Count("id", filter=Q(elapsed__lte=timedelta(seconds=bound))) for i, bound in enumerate(buckets)
    }
    rows = (
        jobs.filter(**{f"{start}__isnull": False, f"{end}__isnull": False})
        .annotate(elapsed=elapsed)
        .order_by()
        .values("kind")
        .annotate(n=Count("id"), total=Sum("elapsed"), **bucket_counts)
    )
    return {
        row["kind"]: Histogram(
            buckets=buckets,
            cumulative=tuple(row[f"le_{i}"] for i in range(len(buckets))),
            count=row["n"],
            sum=row["total"].total_seconds() if row["total"] is not None else 0.0,
        )
        for row in rows
    }


def job_duration_histograms() -> dict[str, Histogram]:
    """Run time (started -> finished) of finished jobs, by kind."""
    finished = Job.objects.filter(status__in=TERMINAL_STATUSES)
    return _histograms(finished, start="started_at", end="finished_at", buckets=DURATION_BUCKETS)


def job_queue_wait_histograms() -> dict[str, Histogram]:
    """Time from (re)queued to claimed, by kind, for every job that has started at least once.

    A retried job counts its latest wait: queued_at and started_at are both its latest.
    """
    started = Job.objects.filter(started_at__gte=F("queued_at"))
    return _histograms(started, start="queued_at", end="started_at", buckets=QUEUE_WAIT_BUCKETS)


def inference_totals() -> list[tuple[str, float, float, int]]:
    """(provider, rows, executor seconds, jobs) over succeeded inference jobs."""
    rows = (
        Job.objects.filter(kind="inference", status=JobStatus.SUCCEEDED, result__has_key="rows")
        .annotate(provider=Coalesce(KeyTextTransform("provider", "result"), Value("unknown"), output_field=TextField()))
        .order_by()
        .values("provider")
        .annotate(
            rows=Sum(Cast(KeyTextTransform("rows", "result"), FloatField())),
            seconds=Sum(Cast(KeyTextTransform("seconds", "result"), FloatField())),
            n=Count("id"),
        )
    )
    return [(row["provider"], row["rows"] or 0.0, row["seconds"] or 0.0, row["n"]) for row in rows]


def inference_recent_rows_per_second(*, window: timedelta = timedelta(minutes=5)) -> float:
    """Rows per executor-second of the inference jobs that finished within `window`."""
    totals = (
        Job.objects.filter(
            kind="inference",
            status=JobStatus.SUCCEEDED,
            finished_at__gte=timezone.now() - window,
            result__has_key="rows",
        )
        .order_by()
        .aggregate(
            rows=Sum(Cast(KeyTextTransform("rows", "result"), FloatField())),
            seconds=Sum(Cast(KeyTextTransform("seconds", "result"), FloatField())),
        )
    )
    if not totals["seconds"]:
        return 0.0
    return totals["rows"] / totals["seconds"]


def sandbox_verdicts() -> list[tuple[str, int]]:
    """(verdict, jobs) over finished sandbox runs; a run cancelled before it ran has verdict `none`."""
    rows = (
        Job.objects.filter(kind="sandbox", status__in=TERMINAL_STATUSES)
        .annotate(verdict=Coalesce(KeyTextTransform("verdict", "result"), Value("none"), output_field=TextField()))
        .order_by()
        .values("verdict")
        .annotate(n=Count("id"))
    )
    return [(row["verdict"], row["n"]) for row in rows]


def live_worker_hosts_by_queue() -> dict[str, int]:
    """Worker hosts heard from within JOBS_WORKER_ALIVE_SECONDS, per queue; every known queue appears."""
    horizon = timezone.now() - timedelta(seconds=settings.JOBS_WORKER_ALIVE_SECONDS)
    counts = dict.fromkeys(queues.QUEUE_NAMES, 0)
    alive = WorkerHost.objects.filter(stopped_at__isnull=True, last_heartbeat_at__gte=horizon)
    for host_queues in alive.values_list("queues", flat=True):
        for name in host_queues:
            counts[name] = counts.get(name, 0) + 1
    return counts


def oldest_queued_age_by_queue() -> dict[str, float]:
    """Seconds the longest-waiting queued job of each queue has waited; 0 where none waits.

    What the queue-wait histogram cannot show: it counts only jobs that were claimed, so a
    consumer that stopped taking messages while its host still heartbeats leaves it flat.
    """
    ages = dict.fromkeys(queues.QUEUE_NAMES, 0.0)
    now = timezone.now()
    oldest = Job.objects.filter(status=JobStatus.QUEUED).order_by().values("queue").annotate(at=Min("queued_at"))
    for row in oldest:
        ages[row["queue"]] = max(0.0, (now - row["at"]).total_seconds())
    return ages


def control_runs_with_age() -> list[tuple[ControlRun, float | None]]:
    """Each housekeeping task's row, with seconds since its last success by the database's clock (None: never)."""
    since = ExpressionWrapper(Now() - F("last_success_at"), output_field=DurationField())
    rows = ControlRun.objects.annotate(since=since).order_by("task")
    return [(row, row.since.total_seconds() if row.since is not None else None) for row in rows]


def control_counts() -> list[tuple[str, str, int]]:
    """(task, name, total) of what the housekeeping tasks did, e.g. ("reap", "leases_expired", 12)."""
    return list(ControlCount.objects.order_by("task", "name").values_list("task", "name", "value"))


def broker_queue_depths() -> dict[str, int] | None:
    """Messages ready in each broker queue, or None when the broker cannot be reached.

    Redis: the sum over kombu's per-priority lists; RabbitMQ: the queue's ready count.
    Messages a worker holds unacknowledged are not counted on either.
    """
    from project.celery import app

    depths = {}
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=0, timeout=settings.CELERY_BROKER_CONNECTION_TIMEOUT)
            channel = conn.default_channel
            for queue in queues.TASK_QUEUES:
                # Declaring with the queue's own arguments is idempotent; a passive declare
                # of a queue no worker created yet would close the AMQP channel instead.
                depths[queue.name] = queue(channel).queue_declare().message_count
    except Exception:  # kombu raises transport-specific errors; any of them means "unknown now"
        logger.warning("operations.broker_depth_failed", exc_info=True)
        return None
    return depths


# --- the last hour, for the admin dashboard ---------------------------------------------


@dataclass(frozen=True)
class Minutes:
    """Per-minute series over a window ending now: `starts[i]` is the start of minute i."""

    starts: list[datetime]
    series: dict[str, list[int]]


def _minute_starts(minutes: int) -> list[datetime]:
    now = timezone.now().replace(second=0, microsecond=0)
    return [now - timedelta(minutes=minutes - 1 - i) for i in range(minutes)]


def _organization_filter(user: User) -> tuple[str, list]:
    if user.is_superuser:
        return "", []
    return (
        " AND j.organization_id IN (SELECT organization_id FROM accounts_membership WHERE user_id = %s)",
        [user.pk],
    )


# Failed jobs per minute, apart by whose failure it was (Job.failure).
FAILURE_SERIES = {FailureOrigin.SYSTEM: "system failed", FailureOrigin.USER: "job's own failure"}


def throughput_by_minute(*, user: User, minutes: int = 60) -> Minutes:
    """Jobs finished per minute by outcome (succeeded, failed, cancelled), and jobs submitted."""
    starts = _minute_starts(minutes)
    index = {start: i for i, start in enumerate(starts)}
    series = {name: [0] * minutes for name in ("submitted", *TERMINAL_STATUSES, *FAILURE_SERIES.values())}
    jobs = jobs_for_staff(user=user)
    finished = (
        jobs.filter(status__in=TERMINAL_STATUSES, finished_at__gte=starts[0])
        .order_by()
        .values_list("finished_at", "status", "failure")
    )
    for finished_at, status, failure in finished.iterator():
        i = index.get(finished_at.replace(second=0, microsecond=0))
        if i is not None:
            series[status][i] += 1
            if status == JobStatus.FAILED:
                series[FAILURE_SERIES[failure or FailureOrigin.SYSTEM]][i] += 1
    for created_at in jobs.filter(created_at__gte=starts[0]).order_by().values_list("created_at", flat=True):
        i = index.get(created_at.replace(second=0, microsecond=0))
        if i is not None:
            series["submitted"][i] += 1
    return Minutes(starts=starts, series=series)


def backlog_by_minute(*, user: User, minutes: int = 60) -> Minutes:
    """Jobs waiting (queued, not yet claimed) at the end of each minute, per queue.

    Rebuilt from the rows' timestamps, so it needs no sampler: a job waited over [queued_at,
    started_at) when it started after its latest queueing, else until now or its cancel.
    """
    starts = _minute_starts(minutes)
    scope, params = _organization_filter(user)
    sql = f"""
        SELECT m.t, j.queue, count(j.id)
          FROM generate_series(%s::timestamptz, %s::timestamptz, interval '1 minute') AS m(t)
          JOIN jobs_job AS j
            ON j.queued_at <= m.t + interval '1 minute'
           AND (j.started_at IS NULL OR j.started_at < j.queued_at OR j.started_at > m.t + interval '1 minute')
           AND (j.finished_at IS NULL OR j.finished_at < j.queued_at OR j.finished_at > m.t + interval '1 minute')
         WHERE (j.status = 'queued' OR j.started_at >= %s OR j.finished_at >= %s){scope}
         GROUP BY m.t, j.queue
    """  # noqa: S608 (only the fixed scope clause is interpolated; values are parameters)
    series = {name: [0] * minutes for name in queues.QUEUE_NAMES}
    index = {start: i for i, start in enumerate(starts)}
    with connection.cursor() as cursor:
        cursor.execute(sql, [starts[0], starts[-1], starts[0], starts[0], *params])
        for minute, queue, waiting in cursor.fetchall():
            i = index.get(minute)
            if i is not None:
                series.setdefault(queue, [0] * minutes)[i] = waiting
    return Minutes(starts=starts, series=series)


def queue_overview(*, user: User) -> list[dict]:
    """Per queue now: broker messages, jobs queued (and how long the oldest waits) and running, live worker hosts."""
    depths = broker_queue_depths()
    hosts = live_worker_hosts_by_queue()
    counts, oldest_queued = {}, {}
    for row in (
        jobs_for_staff(user=user)
        .filter(status__in=UNFINISHED_STATUSES)
        .order_by()
        .values("queue", "status")
        .annotate(n=Count("id"), oldest=Min("queued_at"))
    ):
        counts[(row["queue"], row["status"])] = row["n"]
        if row["status"] == JobStatus.QUEUED:
            oldest_queued[row["queue"]] = row["oldest"]
    now = timezone.now()
    return [
        {
            "queue": name,
            "broker": None if depths is None else depths.get(name),
            "queued": counts.get((name, JobStatus.QUEUED), 0),
            "oldest_wait": now - oldest_queued[name] if name in oldest_queued else None,
            "running": counts.get((name, JobStatus.RUNNING), 0) + counts.get((name, JobStatus.CANCELLING), 0),
            "workers": hosts.get(name, 0),
        }
        for name in queues.QUEUE_NAMES
    ]


def slowest_jobs(*, user: User, since: timedelta = timedelta(hours=1), limit: int = 10) -> list[Job]:
    """Jobs finished within `since` or still running, longest run time first."""
    now = timezone.now()
    run_time = ExpressionWrapper(Coalesce(F("finished_at"), now) - F("started_at"), output_field=DurationField())
    return list(
        jobs_for_staff(user=user)
        .filter(started_at__isnull=False)
        .filter(Q(finished_at__gte=now - since) | Q(status__in=[JobStatus.RUNNING, JobStatus.CANCELLING]))
        .annotate(run_time=run_time)
        .select_related("organization")
        .order_by("-run_time")[:limit]
    )


def failing_jobs(*, user: User, since: timedelta = timedelta(hours=1), limit: int = 15) -> list[Job]:
    """The latest failed jobs within `since`, newest first."""
    return list(
        jobs_for_staff(user=user)
        .filter(status=JobStatus.FAILED, finished_at__gte=timezone.now() - since)
        .select_related("organization")
        .order_by("-finished_at")[:limit]
    )


def failures_by_code(*, user: User, since: timedelta = timedelta(hours=1)) -> list[dict]:
    """Failed jobs within `since` grouped by whose failure it was, kind and error code, most frequent first."""
    return list(
        jobs_for_staff(user=user)
        .filter(status=JobStatus.FAILED, finished_at__gte=timezone.now() - since)
        .annotate(code=Coalesce(KeyTextTransform("code", "error"), Value("unknown"), output_field=TextField()))
        .order_by()
        .values("failure", "kind", "code")
        .annotate(n=Count("id"))
        .order_by("failure", "-n", "kind", "code")
    )


def worker_hosts() -> list[WorkerHost]:
    """Every worker host ever registered, live ones first."""
    hosts = list(WorkerHost.objects.order_by("hostname"))
    return sorted(hosts, key=lambda host: (not host.is_alive, host.hostname))
