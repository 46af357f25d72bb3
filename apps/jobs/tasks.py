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


@shared_task(name="jobs.sandbox_started", ignore_result=True)
def sandbox_started(job_id: str, task_id: str, worker: str) -> None:
    with log_context(job_id=job_id):
        job = services.remote_run_started(job_id=job_id, task_id=task_id, worker=worker)
        task_events.remote_attempt_started(job, worker=worker)


@shared_task(name="jobs.sandbox_output", ignore_result=True, acks_late=True)
def sandbox_output(job_id: str, task_id: str, stream: str, index: int, chunk: str) -> None:
    with log_context(job_id=job_id):
        services.remote_run_output(job_id=job_id, task_id=task_id, stream=stream, index=index, chunk=chunk)


# The chunks of a long stream are sent before the outcome, but another control process may
# still be storing them: wait up to ~20 s for them, then finish without the artifact.
SANDBOX_OUTPUT_WAIT_RETRIES = 40


@shared_task(name="jobs.sandbox_finished", bind=True, ignore_result=True, acks_late=True)
def sandbox_finished(self, job_id: str, task_id: str, worker: str, outcome: dict) -> None:
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


@shared_task(name="jobs.worker_host_report", ignore_result=True)
def worker_host_report(hostname: str, event: str, queues: list, capabilities: dict, version: str, pid: int) -> None:
    services.worker_host_report(
        hostname=hostname, event=event, queues=queues, capabilities=capabilities, version=version, pid=pid
    )


# Connects the WorkerHost signals in every worker that loads the tasks.
from apps.jobs import workerhost  # noqa: E402, F401
