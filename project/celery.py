"""The Celery app for every host that may talk to the database (cpu, gpu, control, beat)."""

import os

from celery import Celery
from celery.signals import worker_init

from project import queues

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings.local")

app = Celery("switchyard")
# Broker URL and other per-environment values come from Django settings (CELERY_*);
# the queue layout and reliability settings are the same everywhere.
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(queues.celery_config())
app.autodiscover_tasks(["apps.core", "apps.jobs", "workers"])


@worker_init.connect
def refuse_unsafe_time_limits(sender=None, **kwargs):
    """A hard limit past the broker's redelivery window would get a running job delivered twice."""
    limit = sender.app.conf.task_time_limit or 0
    if limit > queues.MAX_TASK_TIME_LIMIT_S:
        raise SystemExit(
            f"task_time_limit={limit}s exceeds {queues.MAX_TASK_TIME_LIMIT_S}s, "
            f"the longest limit safe with visibility_timeout={queues.VISIBILITY_TIMEOUT_S}s"
        )
