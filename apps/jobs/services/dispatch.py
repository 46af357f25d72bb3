"""Every broker message about jobs: run messages and doorbells, revokes, parent notifications.

PostgreSQL holds the backlog and decides what runs next; a message only says "look". Pulled
kinds get a doorbell for their queue (the worker claims the best eligible job); pushed kinds
(sandbox: its host has no database) get the job in the message. Losing a message is harmless.
"""

import logging
import math
import time
import uuid
from functools import partial

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.jobs.kinds import get_kind
from apps.jobs.models import (
    Job,
    JobStatus,
)
from project import queues

logger = logging.getLogger(__name__)


RUN_JOB_TASK = "workers.run_job"


# A doorbell: "queue Q may have work". The worker that takes it claims the best eligible job
# of Q (job_claim_next); the message names no job, so losing or duplicating one is harmless.
DOORBELL_TASK = "workers.claim_next"


# The queues whose jobs workers claim from PostgreSQL: rung, and pausable.
PULLED_QUEUES = PAUSABLE_QUEUES = (queues.CPU, queues.GPU)


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
    publish_run(job=job, countdown=countdown)


def is_pulled(kind_name: str) -> bool:
    """Whether workers claim this kind's jobs from PostgreSQL (doorbells), rather than receive them.

    Kinds whose host has no database (sandbox) get the job itself in the message instead.
    """
    kind = get_kind(kind_name)
    return kind is None or kind.message is None


def run_message(job: Job, *, countdown: float | None = None) -> tuple[str, dict]:
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
    """The longest any pulled kind may run, plus one doorbell turn (a job may start that late in a turn)."""
    from apps.jobs.kinds import all_kinds

    longest = max((kind.time_limit_s for kind in all_kinds().values() if kind.message is None), default=3600)
    return longest + math.ceil(settings.JOBS_DOORBELL_TURN_SECONDS)


def publish_run(*, job: Job, countdown: float | None = None) -> bool:
    """Send the run message (the one place that talks to the broker for a job), unless doorbells enough wait."""
    from project.celery import app

    task_name, options = run_message(job, countdown=countdown)
    coalesced = task_name == DOORBELL_TASK and countdown is None
    if coalesced and _doorbells_enough(job.queue):
        return True
    try:
        app.send_task(task_name, **options)
    except Exception:
        # The job is safe in PostgreSQL; the ring publishes a doorbell for it once the broker is back.
        logger.exception("job.dispatch_failed", extra={"job_id": str(job.id), "queue": job.queue})
        return False
    if coalesced:
        _doorbells_published(job.queue, 1)
    return True


def publish_runs(jobs: list[Job]) -> None:
    """Publish many jobs' run messages (a bulk submit): each queue's missing doorbells, delayed and pushed ones each."""
    doorbells: dict[str, int] = {}
    for job in jobs:
        if is_pulled(job.kind) and job.run_after is None:
            doorbells[job.queue] = doorbells.get(job.queue, 0) + 1
        else:
            delay = (job.run_after - timezone.now()).total_seconds() if job.run_after else None
            publish_run(job=job, countdown=delay if delay and delay > 0 else None)
    for queue, count in doorbells.items():
        waiting = _broker_ready_count(queue)
        _doorbells_seen[queue] = (time.monotonic(), waiting)
        ring_doorbells(queue, max(0, min(count, settings.JOBS_DOORBELLS_AHEAD - waiting)))


# Doorbells waiting in the broker per queue, as this process last counted them: (when, count).
_doorbells_seen: dict[str, tuple[float, int]] = {}
DOORBELL_COUNT_TTL_S = 0.25


def _doorbells_enough(queue: str) -> bool:
    """Whether JOBS_DOORBELLS_AHEAD doorbells of `queue` wait in the broker now, so a new job needs none.

    A doorbell is a turn that runs eligible jobs back to back until none is left (one that
    runs out of time rings again, apps.jobs.runner.run_next), so the doorbells waiting
    reach every job behind them; one per job beyond them would cost a publish at submit and
    a task that finds nothing. "Enough" is only ever decided on a fresh count from the
    broker; a count up to DOORBELL_COUNT_TTL_S old (plus this process's publishes since) is
    only trusted to say "too few", which at worst publishes one doorbell more.
    """
    seen = _doorbells_seen.get(queue)
    recent = seen is not None and time.monotonic() - seen[0] < DOORBELL_COUNT_TTL_S
    if recent and seen[1] < settings.JOBS_DOORBELLS_AHEAD:
        return False
    count = _broker_ready_count(queue)
    _doorbells_seen[queue] = (time.monotonic(), count)
    return count >= settings.JOBS_DOORBELLS_AHEAD


def _doorbells_published(queue: str, count: int) -> None:
    seen = _doorbells_seen.get(queue)
    if seen is not None:
        _doorbells_seen[queue] = (seen[0], seen[1] + count)


def _broker_ready_count(queue: str) -> int:
    from project.celery import app

    declaration = next(q for q in queues.TASK_QUEUES if q.name == queue)
    try:
        with app.producer_or_acquire() as producer:
            if _is_redis_channel(producer.channel):
                return _redis_ready_count(producer.channel, queue)
            return declaration(producer.channel).queue_declare().message_count
    except Exception:
        # Read as none waiting: the publish that follows fails or succeeds as it would have.
        logger.warning("jobs.doorbell_count_failed", extra={"queue": queue}, exc_info=True)
        return 0


def _is_redis_channel(channel) -> bool:
    from kombu.transport.redis import Channel

    return isinstance(channel, Channel)


_COUNT_CLIENT_ATTR = "_switchyard_count_client"


def _redis_ready_count(channel, queue: str) -> int:
    """What kombu's `queue_declare` counts on Redis (the queue's list per priority step), more cheaply.

    A submit counts the doorbells waiting whenever enough may be waiting (_doorbells_enough),
    which is nearly every submit while workers keep up. kombu builds a new Redis client for
    each count (its per-client setup was about half the count's CPU) and wraps the LLENs in
    MULTI/EXEC; here one client per channel is kept and the LLENs go as one plain pipeline.
    Same keys and the same sum: a read, so no transaction is needed.
    """
    client = channel.__dict__.get(_COUNT_CLIENT_ATTR)
    if client is None:
        client = channel.__dict__[_COUNT_CLIENT_ATTR] = channel._create_client()
    with client.pipeline(transaction=False) as pipe:
        for step in channel.priority_steps:
            pipe.llen(channel._q_for_pri(queue, step))
        return sum(pipe.execute())


def jobs_publish_group(jobs: list[Job]) -> bool:
    """Publish several jobs' run messages as one Celery group (a fan-out's children)."""
    from celery import group

    from project.celery import app

    if not jobs:
        return True
    signatures = []
    for job in jobs:
        task_name, options = run_message(job)
        signatures.append(app.signature(task_name, immutable=True, **options))
    try:
        group(signatures).apply_async()
    except Exception:
        logger.exception("job.group_dispatch_failed", extra={"jobs": len(jobs)})
        return False
    return True


def revoke_run(job: Job) -> None:
    """Revoke the job's task everywhere; a worker running it kills the process (and its sandbox)."""
    from project.celery import app

    if job.task_id:
        transaction.on_commit(
            # SIGTERM: the sandbox task's handler kills its run (see workers/sandbox/app.py).
            partial(app.control.revoke, job.task_id, terminate=True, signal="SIGTERM")
        )


def ring_doorbells(queue: str, doorbells: int) -> int:
    """Publish `doorbells` doorbells for `queue`; how many were sent (0 when the broker refused)."""
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
    _doorbells_published(queue, doorbells)
    return doorbells


def notify_parent(parent_id) -> None:
    transaction.on_commit(partial(send_children_changed, str(parent_id)))


def send_children_changed(parent_id: str) -> None:
    from project.celery import app

    try:
        app.send_task("jobs.children_changed", args=[parent_id], queue=queues.direct_queue(queues.CONTROL))
    except Exception:
        # The reaper looks at every waiting parent anyway.
        logger.exception("job.children_changed_not_sent", extra={"job_id": parent_id})


def sandbox_stale_deliveries_drop(*, limit: int = 1000) -> int:
    """Forget sandbox deliveries held past the visibility timeout by a host that is gone; how many.

    Sandbox hosts may not list their transport's unacked index (workers.sandbox.broker), so kombu's
    own sweep never runs for it. This one never puts a message back: any sandbox host can write that
    hash, so an entry may name any queue (`control` included) and would be published with this
    side's full rights. The job needs none of it: the reaper dispatches it again (new task id, new
    token) once its lease expires or its dispatch is found unclaimed. Redis only (RabbitMQ returns
    an unacked message itself when its consumer's connection closes).
    """
    from project.celery import app

    if not settings.CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
        return 0
    keys = queues.SANDBOX_UNACKED_KEYS
    horizon = time.time() - queues.VISIBILITY_TIMEOUT_S
    try:
        with app.connection_for_write() as conn:
            client = conn.default_channel.client
            tags = client.zrangebyscore(keys["unacked_index_key"], "-inf", horizon, start=0, num=limit)
            if tags:
                client.pipeline().hdel(keys["unacked_key"], *tags).zrem(keys["unacked_index_key"], *tags).execute()
    except Exception:
        logger.exception("jobs.sandbox_stale_deliveries_failed")
        return 0
    if tags:
        logger.info("jobs.sandbox_stale_deliveries_dropped", extra={"count": len(tags)})
    return len(tags)
