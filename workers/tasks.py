"""Thin Celery entry points: claim the job, call its executor, finish it (all in apps.jobs.runner)."""

from celery import shared_task


@shared_task(name="workers.run_job", bind=True, acks_late=True, reject_on_worker_lost=True)
def run_job(self, job_id: str) -> str:
    from apps.jobs.runner import run_job as run

    return run(job_id=job_id, worker=self.request.hostname or "unknown")
