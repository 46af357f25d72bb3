"""`/metrics` shows what the control path did: runs, errors, last success age, leases expired, schedules fired."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from apps.jobs import services, tasks
from apps.jobs.models import ControlRun, Job, Schedule
from apps.jobs.services.control import control_run
from apps.jobs.services.schedules import schedule_create

pytestmark = pytest.mark.django_db


def scrape() -> str:
    return Client().get("/metrics").content.decode()


def value(text: str, sample: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(sample + " "))
    return float(line.rsplit(" ", 1)[1])


def test_reaper_ring_and_dispatcher_runs_and_what_they_did_are_in_metrics(member, broker):
    membership, _ = member("developer")
    job, _ = services.job_submit(membership=membership, kind="sleep", params={})
    # A worker died holding the job: its lease ran out a minute ago.
    Job.objects.filter(pk=job.pk).update(
        status="running", attempt=1, lease_expires_at=timezone.now() - timedelta(minutes=1)
    )
    schedule = schedule_create(membership=membership, name="s", kind="sleep", params={}, interval_seconds=60)
    Schedule.objects.filter(pk=schedule.pk).update(next_run_at=timezone.now() - timedelta(seconds=1))

    tasks.reap()
    tasks.ring()
    tasks.dispatch_schedules()

    text = scrape()
    for task in ("reap", "ring", "dispatch_schedules"):
        assert value(text, f'switchyard_control_runs_total{{task="{task}"}}') == 1
        assert value(text, f'switchyard_control_run_errors_total{{task="{task}"}}') == 0
        assert 0 <= value(text, f'switchyard_control_last_success_age_seconds{{task="{task}"}}') < 60
    assert value(text, "switchyard_leases_expired_total") == 1
    assert value(text, "switchyard_jobs_requeued_total") == 1
    assert value(text, "switchyard_schedules_fired_total") == 1
    rung = value(text, 'switchyard_doorbells_rung_total{task="reap"}') + value(
        text, 'switchyard_doorbells_rung_total{task="ring"}'
    )
    assert rung >= 0  # the requeue's own doorbell covers the job, so the ring may add none


def test_a_failing_run_counts_as_an_error_and_a_dead_reaper_shows_as_a_growing_age():
    def broken() -> dict:
        raise RuntimeError("database unreachable")

    with pytest.raises(RuntimeError):
        control_run("reap", broken, counts=dict)
    ControlRun.objects.filter(task="reap").update(last_success_at=timezone.now() - timedelta(minutes=10))

    text = scrape()
    assert value(text, 'switchyard_control_run_errors_total{task="reap"}') == 1
    assert value(text, 'switchyard_control_last_success_age_seconds{task="reap"}') >= 600
    assert "RuntimeError: database unreachable" in ControlRun.objects.get(task="reap").last_error
