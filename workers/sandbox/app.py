"""The sandbox host's Celery app: broker only, no Django, no database, no secrets.

Run with `celery -A workers.sandbox.app worker -Q sandbox`. A run's request arrives in
the message (this host cannot read the Job row); what the host has to say goes back as
reports on the `sandbox_reports` queue, which a gate on the control workers forwards to
`control`, where a worker with database access claims and finishes the job.

Least privilege (docs/decisions/0046): the host's broker user (SANDBOX_BROKER_URL) may consume
`sandbox`, write `sandbox_reports` and receive remote-control broadcasts, nothing more. So this
worker sends no events (no heartbeat, gossip or mingle: they publish to, or read, the event
stream every worker shares, whose task events carry task arguments), answers no remote-control
request (replies go to queues it may not write; it still obeys broadcasts such as revoke), and
leaves stale deliveries to the reaper (workers.sandbox.broker). Each run report carries a MAC
under the run's token (workers.sandbox.reports): a host can only report runs it was given.
"""

import base64
import logging
import os
import platform
import signal
import sys
import threading
from functools import partial

import celery
from celery import Celery
from celery.apps.worker import Worker
from celery.signals import worker_init, worker_ready, worker_shutdown
from kombu.pidbox import Node
from kombu.utils.objects import cached_property

from project import queues
from workers.sandbox import cgroups, reports
from workers.sandbox.judge import JudgeCase, JudgeRequest, JudgeResult, run_judge
from workers.sandbox.runner import (
    EXIT_NO_WHOLE_RUN_LIMITS,
    INLINE_OUTPUT_BYTES,
    OUTPUT_CHUNK_BYTES,
    SandboxLimits,
    SandboxRequest,
    SandboxRequestError,
    SandboxResult,
    bwrap_available,
    kill_uid_processes,
    run_sandbox,
    sandbox_uid,
)
from workers.sandbox.slots import NoFreeSlot, held_by_this_process, process_slot

logger = logging.getLogger(__name__)


class SandboxWorker(Worker):
    """A worker that publishes no events and exchanges nothing with other workers, however started.

    Heartbeat and task events go to the event stream every worker shares, gossip reads it (task
    events carry task arguments), mingle asks other workers for their state; a sandbox host's broker
    user may do none of it. Forced here rather than left to `--without-*` flags on every command line.
    """

    def __init__(self, *args, **kwargs):
        kwargs.update(without_heartbeat=True, without_gossip=True, without_mingle=True, task_events=False)
        super().__init__(*args, **kwargs)


class QuietNode(Node):
    """This host's remote-control node: obeys broadcasts (a revoke stops a run) and answers none.

    A reply goes to the asker's reply queue, which a sandbox user may not write.
    """

    def reply(self, *args, **kwargs) -> None:
        return None


class SandboxCelery(Celery):
    @cached_property
    def Worker(self):
        return self.subclass_with_self(SandboxWorker)


app = SandboxCelery("switchyard-sandbox")
app.conf.update(queues.celery_config())
app.conf.broker_url = os.environ.get("CELERY_BROKER_URL")
app.conf.worker_send_task_events = False
# The remote-control queue without an expiry: an expiring queue's binding is kept alive through a
# sorted set that every queue's bindings share, which a sandbox user may not write.
app.conf.control_queue_expires = None
if (app.conf.broker_url or "").startswith(("redis://", "rediss://")):
    app.conf.broker_transport = "workers.sandbox.broker:Transport"
    app.conf.broker_transport_options = {**app.conf.broker_transport_options, **queues.SANDBOX_UNACKED_KEYS}
app.control.mailbox.node_cls = QuietNode

REPORT_ROUTE = queues.sandbox_reports_route(app.conf.broker_url or "")
REPORT_RETRY = {"max_retries": 3, "interval_start": 0, "interval_step": 0.5, "interval_max": 2}


def _report(report: str, token: str | None, *args) -> None:
    """Send one report to `sandbox_reports` (never `control`: this host's broker user cannot write it)."""
    try:
        with app.producer_or_acquire() as producer:
            producer.publish(
                reports.report_body(report, list(args), token),
                serializer="json",
                declare=[],
                retry=True,
                retry_policy=REPORT_RETRY,
                **REPORT_ROUTE,
            )
    except Exception:
        # A lost report is recovered on the control side: the job's lease expires and the
        # reaper requeues or fails it.
        logger.exception("sandbox.report_failed", extra={"report": report})


@app.task(name="sandbox.execute", bind=True, acks_late=True, reject_on_worker_lost=True)
def execute(self, job_id: str, request: dict, token: str = "") -> str:
    """Run one request; `token` is the run's key for its reports (workers.sandbox.reports)."""
    task_id, worker = self.request.id, self.request.hostname
    _report(reports.STARTED, token, job_id, task_id, worker)
    try:
        sandbox_request = _request(request)
    except (SandboxRequestError, TypeError, KeyError, AttributeError) as exc:
        outcome = {"verdict": "internal_error", "message": f"invalid request: {exc}"}
    else:
        # Each pool process holds one slot of the host (and so one uid) for its lifetime, claimed
        # with a host-wide lock: no other worker or stack on this host runs in it.
        try:
            slot = process_slot()
        except (NoFreeSlot, OSError) as exc:
            logger.exception("sandbox.slot_unavailable")
            outcome = {"verdict": "internal_error", "message": f"no sandbox slot: {exc}", "infrastructure_error": True}
        else:
            cancelled = threading.Event()
            previous = signal.signal(signal.SIGTERM, partial(_kill_slot, slot, cancelled))
            try:
                if isinstance(sandbox_request, JudgeRequest):
                    judged = run_judge(sandbox_request, slot=slot, cancelled=cancelled.is_set)
                else:
                    result = run_sandbox(sandbox_request, slot=slot)
            finally:
                signal.signal(signal.SIGTERM, previous)
            if isinstance(sandbox_request, JudgeRequest):
                outcome = judged.to_message()
                _send_output_files(job_id, task_id, token, judged, outcome)
            else:
                outcome = result.to_message()
                _send_long_streams(job_id, task_id, token, result, outcome)
    _report(reports.FINISHED, token, job_id, task_id, worker, outcome)
    return outcome["verdict"]


def _request(request: dict) -> SandboxRequest | JudgeRequest:
    """The message's request: one run, or a judge submission when it carries test cases."""
    limits = SandboxLimits(**request.get("limits", {}))
    if "test_cases" not in request:
        return SandboxRequest(
            source=request["source"], files=request.get("files", {}), stdin=request.get("stdin", ""), limits=limits
        )
    cases = tuple(
        JudgeCase(
            stdin=case.get("stdin", ""),
            expected_output=case["expected_output"],
            limits=SandboxLimits(**{**request.get("limits", {}), **case["limits"]}) if case.get("limits") else None,
        )
        for case in request["test_cases"]
    )
    return JudgeRequest(
        source=request["source"],
        test_cases=cases,
        files=request.get("files", {}),
        limits=limits,
        compare=request.get("compare", "lines"),
        output_dir=request.get("output_dir"),
    )


def _send_output_files(job_id: str, task_id: str, token: str, judged: JudgeResult, outcome: dict) -> None:
    """Each file a case left in its output folder goes to `control` in chunks, before the outcome.

    The outcome names each file's stream (`file-<case>-<n>`) and chunk count; `control` keeps it as
    the artifact `case-<case>/<path>`.
    """
    for case, message in zip(judged.cases, outcome["cases"], strict=True):
        for number, ((_, data), entry) in enumerate(zip(case.run.files, message["files"], strict=True)):
            stream = f"file-{case.index}-{number}"
            # An empty file is one empty chunk: the artifact exists.
            starts = range(0, max(len(data), 1), OUTPUT_CHUNK_BYTES)
            for index, start in enumerate(starts):
                chunk = base64.b64encode(data[start : start + OUTPUT_CHUNK_BYTES]).decode()
                _report(reports.OUTPUT, token, job_id, task_id, stream, index, chunk)
            entry["stream"], entry["chunks"] = stream, len(starts)


def _send_long_streams(job_id: str, task_id: str, token: str, result: SandboxResult, outcome: dict) -> None:
    """A stream longer than the inline head goes to `control` whole, in chunks, before the outcome.

    This host has no storage and no database; `control` stages the chunks and keeps the stream
    as the job's artifact when the outcome arrives (which says how many chunks to expect).
    """
    for stream in ("stdout", "stderr"):
        raw = getattr(result, f"{stream}_raw")
        if len(raw) <= INLINE_OUTPUT_BYTES:
            continue
        chunks = range(0, len(raw), OUTPUT_CHUNK_BYTES)
        for index, start in enumerate(chunks):
            chunk = base64.b64encode(raw[start : start + OUTPUT_CHUNK_BYTES]).decode()
            _report(reports.OUTPUT, token, job_id, task_id, stream, index, chunk)
        outcome[f"{stream}_artifact_chunks"] = len(chunks)


def _kill_slot(slot: int, cancelled: threading.Event, signum, frame) -> None:
    """Cancel (revoke with SIGTERM): kill the run, keep the pool process.

    Killing the pool process instead would orphan the sandbox: bwrap's outer process has
    already exited, so die-with-parent no longer ties the run to anything. The run then
    ends `killed` and its late report is fenced out (the job is already cancelled); a judge
    submission runs no further case.
    """
    cancelled.set()
    # A judge submission also holds spare slots, where its next cases' sandboxes wait.
    for held in {slot, *held_by_this_process()}:
        kill_uid_processes(sandbox_uid(held))


def _capabilities() -> dict:
    available, bwrap = bwrap_available()
    tree_limit, tree_limit_detail = cgroups.available()
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "providers": [],
        "bwrap": bwrap if available else None,
        # Whether the CPU and memory limits bound a run's whole process tree (a cgroup) or each process.
        "tree_memory_limit": tree_limit,
        "tree_memory_limit_detail": tree_limit_detail,
    }


def check_whole_run_limits() -> bool:
    """True when runs get whole-tree CPU and memory limits; False when weaker limits were accepted.

    Without a cgroup, `memory_mb` bounds each process but not the tree (nor memfd or tmpfs pages),
    and `cpu_seconds` bounds each process but not children taking turns: a host that cannot do
    better must say so explicitly (SANDBOX_ACCEPT_WEAK_LIMITS=1), or the worker does not start.
    """
    ok, detail = cgroups.available()
    if ok:
        logger.info("sandbox.whole_run_limits", extra={"cgroup": detail})
        return True
    if cgroups.weak_limits_accepted():
        logger.warning(
            "sandbox.weak_limits_accepted",
            extra={
                "reason": detail,
                "consequence": "cpu_seconds and memory_mb bound each process, not the run; "
                "memory in memfds and children taking turns on the CPU are not bounded",
            },
        )
        return False
    logger.critical(
        "sandbox.whole_run_limits_unavailable",
        extra={
            "reason": detail,
            "fix": f"give the worker a delegated cgroup (docs/sandbox.md), or set {cgroups.ACCEPT_WEAK_SETTING}=1 "
            "to run with per-process limits only",
        },
    )
    return False


@worker_init.connect
def _refuse_without_whole_run_limits(sender=None, **kwargs):
    if not check_whole_run_limits() and not cgroups.weak_limits_accepted():
        # Before any consumer starts: no run is taken that the host cannot bound. Said on stderr
        # too: the worker's log handlers may not print `extra`.
        sys.stderr.write(
            f"sandbox.whole_run_limits_unavailable: {cgroups.available()[1]}; give the worker a delegated "
            f"cgroup (docs/sandbox.md) or set {cgroups.ACCEPT_WEAK_SETTING}=1 to accept per-process limits\n"
        )
        sys.stderr.flush()
        os._exit(EXIT_NO_WHOLE_RUN_LIMITS)


# The WorkerHost row's heartbeat: often enough for it, rarely enough to cost nothing.
HOST_HEARTBEAT_SECONDS = 16.0


@worker_ready.connect
def _register(sender=None, **kwargs):
    queue_names = [q.name for q in sender.task_consumer.queues] if sender.task_consumer else []
    _report(
        reports.HOST,
        None,
        sender.hostname,
        "ready",
        queue_names,
        _capabilities(),
        f"celery {celery.__version__}",
        os.getpid(),
    )
    # This worker sends no event heartbeats (SandboxWorker): its own timer keeps the row fresh.
    sender.timer.call_repeatedly(HOST_HEARTBEAT_SECONDS, _heartbeat, (sender.hostname,))


def _heartbeat(hostname: str) -> None:
    _report(reports.HOST, None, hostname, "heartbeat", [], {}, "", 0)


@worker_shutdown.connect
def _stopped(sender=None, **kwargs):
    _report(reports.HOST, None, sender.hostname, "stopped", [], {}, "", 0)
