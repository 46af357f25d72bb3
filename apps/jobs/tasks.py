"""Housekeeping tasks on the `control` queue."""

from celery import shared_task

from apps.core.logs import log_context
from apps.jobs import services, task_events
from apps.jobs.services.control import control_run


def _reap_counts(result: dict) -> dict[str, int]:
    if result.get("skipped"):
        return {"skipped": 1}  # another beat's reaper holds the lock
    return {
        "leases_expired": result["requeued"] + result["failed"] + result["cancelled"],
        "requeued": result["requeued"],
        "failed": result["failed"],
        "cancelled": result["cancelled"],
        "redispatched": result["redispatched"],
        "doorbells": result["rung"],
    }


@shared_task(name="jobs.reap", ignore_result=True)
def reap() -> dict:
    return control_run("reap", services.jobs_reap, counts=_reap_counts)


@shared_task(name="jobs.ring", ignore_result=True)
def ring() -> dict:
    return control_run("ring", services.jobs_ring, counts=lambda rung: {"doorbells": sum(rung.values())})


@shared_task(name="jobs.dispatch_schedules", ignore_result=True)
def dispatch_schedules() -> dict:
    return control_run("dispatch_schedules", services.schedules_dispatch, counts=dict)


@shared_task(name="jobs.prune", ignore_result=True)
def prune() -> dict:
    return control_run("prune", services.jobs_prune, counts=services.prune_counts)


@shared_task(name="jobs.children_changed", bind=True, ignore_result=True, acks_late=True)
def children_changed(self, parent_id: str) -> str:
    with log_context(job_id=parent_id):
        return services.job_children_changed(parent_id=parent_id, worker=self.request.hostname or "control")


# A sandbox host's reports arrive on `sandbox_reports`; the gate (apps.jobs.report_gate) forwards
# each as one of these tasks with the payload and MAC untouched, and they act only on a report
# whose MAC checks out (services.sandbox_report_open; anything else is refused and audited).


@shared_task(name="jobs.sandbox_started", ignore_result=True)
def sandbox_started(payload: str, mac: str | None) -> None:
    args = services.sandbox_report_open(report="started", payload=payload, mac=mac)
    if args is None:
        return
    job_id, task_id, worker = args
    with log_context(job_id=job_id):
        job = services.remote_run_started(job_id=job_id, task_id=task_id, worker=worker)
        task_events.remote_attempt_started(job, worker=worker)


@shared_task(name="jobs.sandbox_output", ignore_result=True, acks_late=True)
def sandbox_output(payload: str, mac: str | None) -> None:
    args = services.sandbox_report_open(report="output", payload=payload, mac=mac)
    if args is None:
        return
    job_id, task_id, stream, index, chunk = args
    with log_context(job_id=job_id):
        services.remote_run_output(job_id=job_id, task_id=task_id, stream=stream, index=index, chunk=chunk)


# The chunks of a long stream are sent before the outcome, but another control process may
# still be storing them: wait up to ~20 s for them, then finish without the artifact.
SANDBOX_OUTPUT_WAIT_RETRIES = 40


@shared_task(name="jobs.sandbox_finished", bind=True, ignore_result=True, acks_late=True)
def sandbox_finished(self, payload: str, mac: str | None) -> None:
    args = services.sandbox_report_open(report="finished", payload=payload, mac=mac)
    if args is None:
        return
    job_id, task_id, worker, outcome = args
    with log_context(job_id=job_id):
        try:
            recorded = services.remote_run_finished(
                job_id=job_id,
                task_id=task_id,
                worker=worker,
                outcome=outcome,
                allow_incomplete_output=self.request.retries >= SANDBOX_OUTPUT_WAIT_RETRIES,
            )
        except services.RemoteOutputIncomplete as exc:
            raise self.retry(exc=exc, countdown=0.5, max_retries=SANDBOX_OUTPUT_WAIT_RETRIES) from exc
        if recorded:
            task_events.remote_attempt_ended(job_id=job_id, worker=worker)


@shared_task(name="jobs.sandbox_host_report", ignore_result=True)
def sandbox_host_report(payload: str) -> None:
    services.sandbox_host_report(payload=payload)


@shared_task(name="jobs.sandbox_report_refused", ignore_result=True)
def sandbox_report_refused(report: str, reason: str) -> None:
    """What the gate could not even forward (not a report, or one of no known kind), audited."""
    services.sandbox_report_refuse(report=report, reason=reason)


@shared_task(name="jobs.worker_host_report", ignore_result=True)
def worker_host_report(hostname: str, event: str, queues: list, capabilities: dict, version: str, pid: int) -> None:
    services.worker_host_report(
        hostname=hostname, event=event, queues=queues, capabilities=capabilities, version=version, pid=pid
    )


# Connects the WorkerHost signals in every worker that loads the tasks.
from apps.jobs import workerhost  # noqa: E402, F401
