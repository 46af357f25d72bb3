"""The Celery app for every host that may talk to the database (cpu, gpu, control, beat)."""

import os
from functools import cached_property

from celery import Celery
from celery.signals import task_prerun, worker_init

from project import queues

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings.local")


class SwitchyardCelery(Celery):
    @cached_property
    def Beat(self):
        """`celery beat` that stops between ticks (project.beat_scheduler.Beat)."""
        return self.subclass_with_self("project.beat_scheduler:Beat")


app = SwitchyardCelery("switchyard")
# Broker URL and other per-environment values come from Django settings (CELERY_*);
# the queue layout and reliability settings are the same everywhere.
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(queues.celery_config())
app.autodiscover_tasks(["apps.core", "apps.jobs", "workers"])


def _add_sandbox_report_gate() -> None:
    # Control workers also read what sandbox hosts report (they may not write `control` itself).
    from apps.jobs.report_gate import SandboxReportGate

    app.steps["consumer"].add(SandboxReportGate)


_add_sandbox_report_gate()


@worker_init.connect
def refuse_unsafe_time_limits(sender=None, **kwargs):
    """A hard limit past the broker's redelivery window would get a running job delivered twice."""
    limit = sender.app.conf.task_time_limit or 0
    if limit > queues.MAX_TASK_TIME_LIMIT_S:
        raise SystemExit(
            f"task_time_limit={limit}s exceeds {queues.MAX_TASK_TIME_LIMIT_S}s, "
            f"the longest limit safe with visibility_timeout={queues.VISIBILITY_TIMEOUT_S}s"
        )


@task_prerun.connect
def heal_database_connections(**kwargs):
    """Before every task, drop a database connection that broke since the last one (e.g. a PostgreSQL restart).

    Celery's Django fixup closes connections only every CELERY_DB_REUSE_MAX tasks, so a
    control worker used to fail every reaper run on a dead connection until restarted.
    A connection used without error a moment ago is kept without a check (apps.core.db).
    """
    from apps.core.db import close_old_connections_between_jobs

    close_old_connections_between_jobs()
