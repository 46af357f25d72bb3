"""The control path's periodic work: the reaper (expired leases, lost pushed messages, waiting
parents) and the ring (doorbells where eligible work has too few waiting).

Each runs one at a time however many beats run, under a LeaderLease row.
"""

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.db.models import Q
from django.utils import timezone

from apps.jobs.models import (
    ACTIVE_STATUSES,
    Job,
    JobStatus,
    QueueState,
)
from apps.jobs.services.dispatch import (
    PULLED_QUEUES,
    is_pulled,
    job_dispatch,
    ring_doorbells,
    sandbox_stale_deliveries_drop,
    send_children_changed,
)
from apps.jobs.services.lifecycle import ELIGIBLE_SQL, LIMITS_CTES, move_queue, reap_expired_leases
from project import queues

logger = logging.getLogger(__name__)


REAPER_LEASE, RING_LEASE = "reaper", "ring"
# Longer than a run takes; a holder that died mid-run delays the next run by at most this.
REAPER_LEASE_SECONDS, RING_LEASE_SECONDS = 120.0, 30.0

_TAKE_LEASE_SQL = """
INSERT INTO jobs_leaderlease AS lease (name, holder, expires_at)
VALUES (%s, %s, now() + make_interval(secs => %s))
    ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
 WHERE lease.expires_at < now()
RETURNING holder
"""


@contextmanager
def leader_turn(name: str, *, seconds: float) -> Iterator[bool]:
    """Take the lease `name` if nobody holds it (True), for at most `seconds`; give it back after.

    Single statements in autocommit, judged by the database clock: safe behind a
    transaction-mode pooler and across hosts whose clocks disagree.
    """
    holder = uuid.uuid4().hex
    with connection.cursor() as cursor:
        cursor.execute(_TAKE_LEASE_SQL, [name, holder, seconds])
        taken = cursor.fetchone() is not None
    try:
        yield taken
    finally:
        if taken:
            try:
                with connection.cursor() as cursor:
                    cursor.execute(
                        "UPDATE jobs_leaderlease SET expires_at = now() WHERE name = %s AND holder = %s", [name, holder]
                    )
            except Exception:
                # The lease expires by itself; the next run waits for that at most.
                logger.warning("jobs.lease_not_released", extra={"lease": name}, exc_info=True)


def jobs_reap(*, limit: int = 1000) -> dict:
    """Recover work the broker or a worker lost; one reaper at a time (a LeaderLease)."""
    with leader_turn(REAPER_LEASE, seconds=REAPER_LEASE_SECONDS) as mine:
        if not mine:
            return {"skipped": True}
        expired = reap_expired_leases(limit=limit)
        moved = _move_jobs_stranded_on_gpu(limit=limit)
        redispatched = _redispatch_stale_queued(limit=limit)
        rung = sum(jobs_ring().values())
        waiting_parents = _waiting_parents(limit=limit)
        for parent_id in waiting_parents:
            send_children_changed(str(parent_id))
        sandbox_stale_deliveries_drop(limit=limit)
    if expired["requeued"] or expired["failed"] or expired["cancelled"] or redispatched or moved:
        logger.info("jobs.reaped", extra={**expired, "redispatched": redispatched, "moved_to_cpu": moved})
    return {
        **expired,
        "moved_to_cpu": moved,
        "redispatched": redispatched,
        "rung": rung,
        "waiting_parents": len(waiting_parents),
    }


def _move_jobs_stranded_on_gpu(*, limit: int) -> int:
    """With no live gpu host left, queued gpu jobs go to cpu where their kind's own routing allows it."""
    from apps.jobs.kinds import get_kind
    from apps.jobs.routing import gpu_available

    stranded = Job.objects.filter(queue=queues.GPU, status=JobStatus.QUEUED).only("id", "kind", "params", "queue")
    if not stranded.exists() or gpu_available():
        return 0
    moved = 0
    for job in stranded.order_by("-priority", "created_at")[:limit]:
        kind = get_kind(job.kind)
        to_queue = kind.pick_queue(job.params) if kind else queues.GPU
        if to_queue != queues.GPU and move_queue(job, to_queue=to_queue, why="no live gpu host is left"):
            moved += 1
    return moved


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
    """Ring each pulled queue up to min(eligible jobs, JOBS_DOORBELLS_AHEAD) waiting doorbells.

    Recovery by state, not elapsed time: after a flushed or restarted broker, a lost publish
    or a delayed job coming due, the next ring (every JOBS_RING_INTERVAL_SECONDS) restores the
    doorbells; each is a turn that runs eligible jobs back to back (apps.jobs.runner.run_next),
    so under a long backlog the ring adds nothing while enough wait. One ringer at a time (a
    LeaderLease). Returns the doorbells published per queue.
    """
    from apps.operations.selectors import broker_queue_depths

    with leader_turn(RING_LEASE, seconds=RING_LEASE_SECONDS) as mine:
        if not mine:
            return {}
        limit = min(limit or settings.JOBS_RING_MAX_PER_QUEUE, settings.JOBS_DOORBELLS_AHEAD)
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
                published[queue] = ring_doorbells(queue, missing)
    if published:
        logger.info("jobs.rung", extra={"doorbells": published})
    return published


_ELIGIBLE_SQL = (
    "WITH"  # noqa: S608 - constant SQL fragments only, values are parameters
    + LIMITS_CTES
    + """
SELECT count(*) FROM (
    SELECT 1 FROM jobs_job AS job
     WHERE job.kind = ANY(%(kinds)s) AND """
    + ELIGIBLE_SQL
    + """
     LIMIT %(limit)s
) AS eligible
"""
)


def _eligible_counts(*, limit: int) -> dict[str, int]:
    """Jobs of the pulled kinds per queue that a claim could take now, by its own limits (each capped at `limit`).

    Jobs held by a limit get no doorbell: one would only find nothing, and the next ring,
    once the limit frees, rings for them.
    """
    from apps.jobs.kinds import all_kinds

    pulled = [name for name in all_kinds() if is_pulled(name)]
    paused = set(QueueState.objects.filter(paused=True).values_list("name", flat=True))
    default_running = settings.ORGANIZATION_QUOTA_DEFAULTS.get("running_jobs", {})
    counts = {}
    with connection.cursor() as cursor:
        for queue in PULLED_QUEUES:
            if queue in paused:
                continue
            params = {"queue": queue, "kinds": pulled, "limit": limit, "default_running": default_running.get(queue)}
            cursor.execute(_ELIGIBLE_SQL, params)
            (count,) = cursor.fetchone()
            if count:
                counts[queue] = count
    return counts


def _waiting_parents(*, limit: int) -> list:
    return list(
        Job.objects.filter(status__in=ACTIVE_STATUSES, lease_expires_at__isnull=True, children__isnull=False)
        .values_list("id", flat=True)
        .distinct()[:limit]
    )
