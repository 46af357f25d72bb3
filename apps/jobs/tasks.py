"""Housekeeping tasks on the `control` queue."""

from celery import shared_task

from apps.jobs import services


@shared_task(name="jobs.reap", ignore_result=True)
def reap() -> dict:
    return services.jobs_reap()


# Connects the WorkerHost signals in every worker that loads the tasks.
from apps.jobs import workerhost  # noqa: E402, F401
