"""Thin Celery entry points: claim a job, call its executor, finish it (all in apps.jobs.runner)."""

from celery import shared_task


@shared_task(name="workers.run_job", bind=True, acks_late=True, reject_on_worker_lost=True)
def run_job(self, job_id: str) -> str:
    from apps.jobs.runner import run_job as run

    return run(job_id=job_id, worker=self.request.hostname or "unknown")


@shared_task(name="workers.claim_next", bind=True, acks_late=True, reject_on_worker_lost=True)
def claim_next(self, queue: str) -> str:
    """A doorbell: run the best eligible job of `queue`, if any."""
    from apps.jobs.runner import run_next

    return run_next(queue=queue, worker=self.request.hostname or "unknown", task_id=self.request.id)
