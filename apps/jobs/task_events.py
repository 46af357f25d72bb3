"""Each job attempt as a Celery task in Flower: standard task events named after the job's kind.

Jobs are not Celery tasks: a doorbell (`workers.claim_next`) claims the best eligible job
of its queue in SQL and runs it. Flower only knows Celery tasks, so without this it shows
doorbells, all SUCCESS and none naming a job. The runner therefore sends, through the
worker's event dispatcher, the events Celery's own worker sends for a task
(`task-received`, `task-started`, then `task-succeeded` / `task-failed` / `task-retried` /
`task-revoked`), for a task whose uuid is `<job id>:<attempt>` and whose name is
`jobs.<kind>`. Flower's task list, counters, Failed filter and task page then show jobs.
Nothing is executed through these events: they describe a run, the Job row decides it
(docs/decisions/0034).

Events are advice, like Celery's own: one that cannot be sent is logged and dropped, and
never fails a job.
"""

import logging
import os
import time

from celery.utils.saferepr import saferepr

from apps.jobs.models import Job, JobStatus

logger = logging.getLogger(__name__)

# What the runner returned -> the event that ends the attempt's task in Flower.
SUCCEEDED_OUTCOMES = {JobStatus.SUCCEEDED, "awaiting_children"}
RETRIED_OUTCOMES = {JobStatus.QUEUED, "snoozed"}
REVOKED_OUTCOMES = {JobStatus.CANCELLED}
# Anything else (failed, lease_lost, fenced) ends it as a failure: the attempt's work was not recorded.
OUTCOME_MESSAGES = {
    "lease_lost": "lease_lost: another attempt holds the job; this one's work was not recorded",
    "fenced": "lease_lost: another attempt holds the job; this one's work was not recorded",
    "snoozed": "snoozed: the job asked to be run again later (no attempt used)",
}


def task_name(kind: str) -> str:
    return f"jobs.{kind}"


def task_uuid(job_id, attempt: int) -> str:
    """The id of a job attempt's task in Flower (the admin's Flower link points at it)."""
    return f"{job_id}:{attempt}"


# One event dispatcher per worker process and node name, on its own broker connection, kept
# between jobs: 0.28 ms per event against 0.40 ms for one taken from the producer pool per
# event (Celery's `default_dispatcher`), three events per job (docs/decisions/0034). Task
# events are buffered and published together (Celery's `task.multi` batches, which Flower
# reads like single events) whenever an attempt starts and at the end of a doorbell's turn:
# one publish per job of a turn instead of three, and a long job still shows as started at once.
_dispatchers: dict[str, object] = {}
_dispatchers_pid: int | None = None


def _dispatcher(hostname: str):
    global _dispatchers_pid
    from project.celery import app

    if _dispatchers_pid != os.getpid():  # a forked pool child must not share its parent's socket
        _dispatchers.clear()
        _dispatchers_pid = os.getpid()
    dispatcher = _dispatchers.get(hostname)
    if dispatcher is None:
        # Not buffered while the broker is away: an event that cannot be sent now is dropped.
        dispatcher = app.events.Dispatcher(
            app.connection_for_write(),
            hostname=hostname,
            buffer_while_offline=False,
            buffer_group={"task"},
            buffer_limit=BUFFER_LIMIT,
        )
        _dispatchers[hostname] = dispatcher
    return dispatcher


BUFFER_LIMIT = 64  # a safety bound: the runner flushes long before


def flush(hostname: str) -> None:
    """Publish the task events buffered for `hostname` in this process (one broker message)."""
    dispatcher = _dispatchers.get(hostname) if _dispatchers_pid == os.getpid() else None
    if dispatcher is None:
        return
    try:
        dispatcher.flush()
    except Exception:
        logger.warning("job.task_events_not_flushed", extra={"worker": hostname}, exc_info=True)
        _drop(hostname)


def _drop(hostname: str) -> None:
    broken = _dispatchers.pop(hostname, None)
    if broken is not None:  # the next event starts on a new connection (a broker restart)
        try:
            broken.connection.release()
        except Exception:
            logger.debug("job.task_event_connection_not_released", exc_info=True)


def _send(event_type: str, *, hostname: str, uuid: str, **fields) -> None:
    from project.celery import app

    if not app.conf.worker_send_task_events:
        return
    try:
        _dispatcher(hostname).send(event_type, uuid=uuid, **fields)
    except Exception:
        logger.warning("job.task_event_not_sent", extra={"event": event_type, "task_uuid": uuid}, exc_info=True)
        _drop(hostname)


class AttemptEvents:
    """The task events of one claimed attempt, from the worker process that runs it."""

    def __init__(self, job: Job, *, worker: str, doorbell_id: str | None = None):
        self.job = job
        self.worker = worker
        self.uuid = task_uuid(job.id, job.attempt)
        self.doorbell_id = doorbell_id
        self._started = time.monotonic()

    def started(self) -> None:
        job = self.job
        # Params stay out: they can be large and hold a tenant's data; the admin shows them.
        kwargs = {
            "organization_id": job.organization_id,
            "queue": job.queue,
            "attempt": job.attempt,
            "max_attempts": job.max_attempts,
            "priority": job.priority,
        }
        if self.doorbell_id:
            kwargs["doorbell"] = self.doorbell_id
        self._started = time.monotonic()
        _send(
            "task-received",
            hostname=self.worker,
            uuid=self.uuid,
            name=task_name(job.kind),
            args=saferepr([str(job.id)]),
            kwargs=saferepr(kwargs),
            root_id=self.uuid,
            parent_id=None,
            retries=max(0, job.attempt - 1),
            eta=None,
            expires=None,
        )
        _send("task-started", hostname=self.worker, uuid=self.uuid)  # the dispatcher adds its pid
        flush(self.worker)  # with the previous attempt's end: the job shows as started before it runs

    def ended(self, outcome: str, *, runtime: float | None = None) -> None:
        if runtime is None:
            runtime = time.monotonic() - self._started
        if outcome in SUCCEEDED_OUTCOMES:
            result = {"job_id": str(self.job.id), "status": str(outcome)}
            _send("task-succeeded", hostname=self.worker, uuid=self.uuid, result=saferepr(result), runtime=runtime)
        elif outcome in REVOKED_OUTCOMES:
            _send("task-revoked", hostname=self.worker, uuid=self.uuid, terminated=False, signum=None, expired=False)
        elif outcome in RETRIED_OUTCOMES:
            _send("task-retried", hostname=self.worker, uuid=self.uuid, exception=self._error(outcome), traceback="")
        else:
            _send(
                "task-failed",
                hostname=self.worker,
                uuid=self.uuid,
                exception=self._error(outcome),
                traceback=self._traceback(),
                runtime=runtime,
            )

    def _error_row(self) -> dict:
        # Read back once, after the finish: the runner's branches each build their own error.
        if not hasattr(self, "_row"):
            try:
                self._row = Job.objects.filter(pk=self.job.id).values("status", "error").first() or {}
            except Exception:  # the database is away: the event goes without the error's text
                self._row = {}
        return self._row

    def _error(self, outcome: str) -> str:
        if outcome in OUTCOME_MESSAGES:
            return OUTCOME_MESSAGES[outcome]
        error = self._error_row().get("error") or {}
        return saferepr(f"{error.get('code', outcome)}: {error.get('message', '')}", maxlen=2000)

    def _traceback(self) -> str:
        details = (self._error_row().get("error") or {}).get("details") or {}
        return str(details.get("traceback", ""))[:20_000]


def remote_attempt_started(job: Job | None, *, worker: str) -> None:
    """A sandbox host began a run (reported on `control`): its attempt's task starts, on that host's name."""
    if job is not None:
        AttemptEvents(job, worker=worker, doorbell_id=job.task_id).started()


def remote_attempt_ended(*, job_id: str, worker: str) -> None:
    """A sandbox run's outcome was recorded on `control`: end its attempt's task as the Job row now says."""
    job = Job.objects.filter(pk=job_id).first()
    if job is None or job.status in (JobStatus.RUNNING, JobStatus.CANCELLING):
        return
    ran = job.finished_at - job.started_at if job.finished_at and job.started_at else None
    AttemptEvents(job, worker=worker).ended(str(job.status), runtime=ran.total_seconds() if ran else 0.0)
    flush(worker)
