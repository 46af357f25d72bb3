"""Runs one job inside a worker process: claim, execute with heartbeat and progress, finish.

The Celery task is a thin entry point to `run_job`; everything here is about the
contract (fencing, leases, cancellation, retry policy), not about any kind.
"""

import logging
import os
import signal
import threading
import time
import traceback
import uuid
from contextlib import contextmanager
from functools import partial

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import InterfaceError, OperationalError, connections

from apps.core.db import mark_connections_used
from apps.core.logs import log_context
from apps.jobs import selectors, services, task_events
from apps.jobs.kinds import AwaitChildren, JobKind, PermanentJobError, get_kind
from apps.jobs.models import Job, JobStatus

logger = logging.getLogger(__name__)


class JobCancelled(Exception):
    """The job was asked to stop; raised by `raise_if_cancelled` between steps."""


class LeaseLost(Exception):
    """Another attempt owns the job now; this run must stop writing."""


class JobSnoozed(Exception):
    """The job asked to be run again later (`JobContext.snooze`), without using an attempt."""

    def __init__(self, seconds: float):
        super().__init__(f"snoozed for {seconds:g}s")
        self.seconds = seconds


MAX_SNOOZE_S = 24 * 3600


class JobContext:
    """What an executor may know and do about its job: params, attempt, progress, cancellation."""

    def __init__(self, job: Job):
        self.job_id = job.id
        self.attempt = job.attempt
        self.params = job.params
        self.kind = job.kind
        self.organization_id = job.organization_id
        self._cancel_requested = threading.Event()
        self._lease_lost = threading.Event()
        self._last_progress_write = 0.0

    def report_progress(self, fraction: float, message: str = "") -> None:
        # Throttled: a job reporting per row would otherwise turn into a write per row.
        # Completion is written by the finish itself, in the same row update.
        if fraction >= 1.0:
            return
        now = time.monotonic()
        if now - self._last_progress_write < settings.JOBS_PROGRESS_MIN_INTERVAL_SECONDS:
            return
        self._last_progress_write = now
        try:
            if not services.job_progress(job_id=self.job_id, attempt=self.attempt, progress=fraction, message=message):
                self._refresh_state()
        except (InterfaceError, OperationalError):
            # Progress is advice: a database outage must not fail work that can go on. The
            # connection is dropped so the next write (the finish) starts on a new one.
            logger.warning("job.progress_not_written", extra={"job_id": str(self.job_id)})
            connections.close_all()

    def snooze(self, seconds: float) -> None:
        """Stop now and be claimed again in `seconds` (e.g. a resource is busy), without using an attempt."""
        if not 0 < seconds <= MAX_SNOOZE_S:
            raise ValueError(f"snooze: seconds must be in (0, {MAX_SNOOZE_S}]")
        raise JobSnoozed(seconds)

    def should_cancel(self) -> bool:
        return self._cancel_requested.is_set() or self._lease_lost.is_set()

    def raise_if_cancelled(self) -> None:
        if self._lease_lost.is_set():
            raise LeaseLost()
        if self._cancel_requested.is_set():
            raise JobCancelled()

    def _refresh_state(self) -> None:
        status = services.job_heartbeat(job_id=self.job_id, attempt=self.attempt)
        if status is None:
            self._lease_lost.set()
        elif status == JobStatus.CANCELLING:
            self._cancel_requested.set()


class Heartbeat:
    """Renews the leases of the jobs this process runs, from one thread, and notices cancellation.

    One long-lived thread per process rather than one per job: starting and joining a
    thread on every job was a measurable part of a short job's cost (`manage.py bench
    jobs`). It starts lazily, in the process that runs jobs (a prefork child, never the
    parent that forks it).
    """

    _lock = threading.Lock()
    _watched: set[JobContext] = set()
    _thread: threading.Thread | None = None
    _pid: int | None = None

    def __init__(self, context: JobContext):
        self.context = context

    def __enter__(self):
        cls = type(self)
        with cls._lock:
            if cls._thread is None or cls._pid != os.getpid() or not cls._thread.is_alive():
                cls._watched = set()
                cls._pid = os.getpid()
                cls._thread = threading.Thread(target=cls._run, name="job-heartbeat", daemon=True)
                cls._thread.start()
            cls._watched.add(self.context)
        return self

    def __exit__(self, *exc):
        with type(self)._lock:
            type(self)._watched.discard(self.context)

    @classmethod
    def _run(cls) -> None:
        while True:
            time.sleep(settings.JOBS_HEARTBEAT_SECONDS)
            with cls._lock:
                watched = list(cls._watched)
            for context in watched:
                try:
                    context._refresh_state()
                except Exception:
                    logger.exception("job.heartbeat_failed", extra={"job_id": str(context.job_id)})
                    # This thread's connection may be dead (a PostgreSQL restart): the next
                    # beat starts on a new one instead of failing until the lease is gone.
                    connections.close_all()
            if not watched:
                # Idle: give the connection back rather than hold it between jobs.
                connections.close_all()


def _error(code: str, message: str, details: dict | None = None) -> dict:
    return {"code": code, "message": message, "details": details or {}}


def run_job(*, job_id: str, worker: str) -> str:
    """Claim and run one job. Returns what happened, for logs and tests."""
    with log_context(job_id=str(job_id)):
        outcome = _claim_and_run(job_id=job_id, worker=worker)
    task_events.flush(worker)
    mark_connections_used()
    return outcome


def _claim(claim) -> Job | None:
    """Run a claim, once more on a new connection if the server dropped the old one (restart, idle timeout).

    A claim is one statement that either took a row or did not, so trying it again is safe.
    """
    try:
        return claim()
    except (InterfaceError, OperationalError):
        connections.close_all()
        return claim()


class Turn:
    """A doorbell's turn (run_next): the queue it claims from, until when, and the job its last finish claimed."""

    def __init__(self, *, queue: str, worker: str, task_id: str | None):
        self.queue, self.worker, self.task_id = queue, worker, task_id
        self.started, self.turn_s = time.monotonic(), settings.JOBS_DOORBELL_TURN_SECONDS
        self.claimed_with_finish = False
        self.next_job: Job | None = None

    def has_time(self) -> bool:
        return time.monotonic() - self.started < self.turn_s

    def claim(self) -> Job | None:
        return services.job_claim_next(queue=self.queue, worker=self.worker, task_id=self.task_id)

    def linger(self) -> Job | None:
        """Nothing is eligible after a job: look again for a moment (JOBS_DOORBELL_LINGER_SECONDS) before ending.

        Jobs submitted one by one arrive milliseconds apart, and workers that keep up find
        the queue empty after nearly every job: a turn that ended there made the next job's
        submit publish a doorbell and the worker run a Celery task for it, about 2 ms of CPU
        a job in all (`manage.py bench jobs`, decision 0049). A look is a read-only index
        probe (selectors.queue_has_due_work); only when it finds due work does the turn claim.
        Pauses double from 1 ms to 10 ms; only at the end of a turn that ran work.
        """
        deadline = min(time.monotonic() + settings.JOBS_DOORBELL_LINGER_SECONDS, self.started + self.turn_s)
        pause = 0.001
        while time.monotonic() + pause < deadline:
            time.sleep(pause)
            pause = min(pause * 2, 0.01)
            try:
                due = selectors.queue_has_due_work(queue=self.queue)
            except (InterfaceError, OperationalError):
                connections.close_all()
                return None  # the turn ends; the next doorbell or the ring goes on
            if due and (job := _claim(self.claim)) is not None:
                return job
        return None

    def finish(self, **finish) -> bool:
        """Record a job's end; while the turn has time, claiming the next job in the same statement and commit."""
        self.claimed_with_finish, self.next_job = False, None
        if not self.has_time():
            return _through_outage(services.job_finish, **finish)
        try:
            finished, self.next_job = services.job_finish_and_claim_next(
                **finish, queue=self.queue, task_id=self.task_id
            )
        except (InterfaceError, OperationalError):
            # One transaction, so neither happened (or, if the connection died after the
            # commit, a later finish is fenced and the claimed job's lease runs out): the
            # finish alone, across the outage; the turn claims its next job as usual.
            connections.close_all()
            return _through_outage(services.job_finish, **finish)
        self.claimed_with_finish = True
        return finished


def run_next(*, queue: str, worker: str, task_id: str | None = None) -> dict:
    """A doorbell rang for `queue`: run its best eligible jobs, one after another. Returns what it ran.

    One doorbell serves a turn of up to JOBS_DOORBELL_TURN_SECONDS: after each job the next
    best eligible one is claimed right away, with no broker round trip, so short jobs run
    back to back. A turn that ends with work left rings once for the queue, so the slot's
    chain of turns goes on; a claim that finds nothing ends it. The result (the doorbell's
    in Flower, next to each job's own task, apps.jobs.task_events) names the jobs it ran.
    """
    # Connections were healed by the task_prerun handler (project/celery.py) before this.
    turn, ran = Turn(queue=queue, worker=worker, task_id=task_id), []
    job = _claim(turn.claim)
    while job is not None:
        with log_context(job_id=str(job.id)):
            outcome = _run_claimed(job, worker, doorbell_id=task_id, turn=turn)
        mark_connections_used()
        ran.append(
            {
                "job_id": str(job.id),
                "kind": job.kind,
                "attempt": job.attempt,
                "task": task_events.task_uuid(job.id, job.attempt),
                "outcome": str(outcome),
            }
        )
        if turn.claimed_with_finish:  # the finish claimed the next job, if one was eligible
            job, turn.claimed_with_finish = turn.next_job, False
        elif turn.has_time():
            job = _claim(turn.claim)
        else:
            services.ring_doorbells(queue, 1)
            break
        if job is None:
            job = turn.linger()
    task_events.flush(worker)  # the turn's last attempt's end
    if not ran:
        logger.info("job.nothing_eligible", extra={"queue": queue, "worker": worker})
        mark_connections_used()
        return {"queue": queue, "job_id": None, "outcome": "nothing_eligible", "jobs": []}
    # The first job's fields at the top level: what a doorbell that ran one job always said.
    return {"queue": queue, **ran[0], "jobs": ran}


def _claim_and_run(*, job_id: str, worker: str) -> str:
    try:
        job_uuid = uuid.UUID(str(job_id))
    except ValueError:
        logger.error("job.bad_message", extra={"job_id": job_id})
        return "bad_message"
    job = _claim(partial(services.job_claim, job_id=job_uuid, worker=worker))
    if job is None:
        # A duplicate delivery, a cancelled job, or one another worker holds: nothing to do.
        logger.info("job.not_claimed", extra={"job_id": job_id, "worker": worker})
        return "not_claimed"
    return _run_claimed(job, worker)


def _run_claimed(job: Job, worker: str, *, doorbell_id: str | None = None, turn: Turn | None = None) -> str:
    events = task_events.AttemptEvents(job, worker=worker, doorbell_id=doorbell_id)
    events.started()
    try:
        outcome = _run_attempt(job, worker, turn)
    except BaseException:
        events.ended("crashed")  # the doorbell fails too; the lease decides what becomes of the job
        task_events.flush(worker)
        raise
    events.ended(outcome)
    return outcome


def _run_attempt(job: Job, worker: str, turn: Turn | None = None) -> str:
    kind = get_kind(job.kind)
    if kind is None:
        services.job_finish(
            job_id=job.id,
            attempt=job.attempt,
            status=JobStatus.FAILED,
            worker=worker,
            error=_error("unknown_kind", f"No executor for kind '{job.kind}' on {worker}."),
        )
        return JobStatus.FAILED
    # Whatever the executor and services log from here names the organization too.
    with log_context(organization_id=job.organization_id, kind=job.kind, attempt=job.attempt):
        return _execute(job, kind, worker, turn)


@contextmanager
def time_limits(kind: JobKind):
    """Hold the job to its kind's limits: SoftTimeLimitExceeded at the soft one, the process ends at the hard one.

    A doorbell's Celery limits are those of the longest kind of its queue (it may claim any
    of them), so the limits of the kind it did claim are enforced here, with the same
    effect as Celery's own: the soft limit raises in the job, the hard one ends the process
    (its lease then expires and the reaper decides). Only in a pool process's main thread
    (where Celery runs tasks); a no-op elsewhere, e.g. a test calling the runner in a thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hard_after = max(1, kind.time_limit_s - kind.soft_time_limit_s)

    def soft(signum, frame):
        # From here the job has until the hard limit to stop.
        signal.signal(signal.SIGALRM, hard)
        signal.setitimer(signal.ITIMER_REAL, hard_after)
        raise SoftTimeLimitExceeded(f"soft time limit ({kind.soft_time_limit_s}s) exceeded")

    def hard(signum, frame):
        logger.error("job.hard_time_limit", extra={"kind": kind.name, "time_limit_s": kind.time_limit_s})
        os._exit(1)

    previous = signal.signal(signal.SIGALRM, soft)
    signal.setitimer(signal.ITIMER_REAL, kind.soft_time_limit_s)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _through_outage(write, /, **kwargs):
    """Record a job's outcome even across a short database outage: retried until it lands or the lease is gone.

    Work that finished must be recorded, not run again: a success write lost to a
    PostgreSQL restart used to send the job back for a second attempt. Past the lease the
    reaper may have requeued the job, and the write would be fenced anyway.
    """
    delay, deadline = 0.25, time.monotonic() + settings.JOBS_LEASE_SECONDS
    while True:
        try:
            return write(**kwargs)
        except (InterfaceError, OperationalError):
            if time.monotonic() + delay > deadline:
                raise
            logger.warning("job.write_retried", extra={"job_id": str(kwargs.get("job_id")), "in_s": delay})
            connections.close_all()
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _execute(job: Job, kind: JobKind, worker: str, turn: Turn | None = None) -> str:
    context = JobContext(job)

    def finish(**outcome) -> bool:
        # Fenced by the attempt; in a turn, the next job's claim rides on the same statement.
        written = {"job_id": job.id, "attempt": job.attempt, "worker": worker, **outcome}
        return turn.finish(**written) if turn is not None else _through_outage(services.job_finish, **written)

    try:
        with Heartbeat(context), time_limits(kind):
            result = kind.execute(context)
    except JobCancelled:
        finish(status=JobStatus.CANCELLED)
        return JobStatus.CANCELLED
    except LeaseLost:
        logger.warning("job.lease_lost", extra={"job_id": str(job.id), "attempt": job.attempt})
        return "lease_lost"
    except JobSnoozed as snoozed:
        return _through_outage(
            services.job_snooze, job_id=job.id, attempt=job.attempt, seconds=snoozed.seconds, worker=worker
        )
    except PermanentJobError as exc:
        error = _error(exc.code, exc.message, exc.details)
        finish(status=JobStatus.FAILED, error=error)
        return JobStatus.FAILED
    except SoftTimeLimitExceeded:
        message = f"Exceeded the time limit of {kind.soft_time_limit_s}s for kind '{kind.name}'."
        finish(status=JobStatus.FAILED, error=_error("time_limit", message))
        return JobStatus.FAILED
    except kind.transient_errors as exc:
        return _through_outage(
            services.job_retry_later,
            job_id=job.id,
            attempt=job.attempt,
            worker=worker,
            error=_error("transient_error", str(exc), {"exception": type(exc).__name__}),
        )
    except Exception as exc:
        logger.exception("job.crashed", extra={"job_id": str(job.id), "kind": job.kind})
        finish(
            status=JobStatus.FAILED,
            error=_error("internal_error", f"{type(exc).__name__}: {exc}", {"traceback": traceback.format_exc()}),
        )
        return JobStatus.FAILED
    if isinstance(result, AwaitChildren):
        # Fanned out: the last child to end has the kind's aggregate finish this job.
        if not _through_outage(
            services.job_await_children, job_id=job.id, attempt=job.attempt, worker=worker, children=result.children
        ):
            return "lease_lost"
        return "awaiting_children"
    # Fenced: if another attempt took the job over meanwhile, this write is refused.
    if not finish(status=JobStatus.SUCCEEDED, result=result):
        return "lease_lost"
    return JobStatus.SUCCEEDED
