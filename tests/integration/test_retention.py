"""Retention: `manage.py prune` removes rows and files past retention and nothing else (files on disk)."""

import hashlib
import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from apps.accounts.models import AuditEvent
from apps.accounts.services import organization_quota_set
from apps.core.artifact_storage import store_bytes
from apps.jobs import services, tasks
from apps.jobs.models import Artifact, ControlCount, Job, JobEvent, Schedule, WorkerHost
from apps.jobs.services.schedules import schedule_create

# Transactional: files are removed once their rows' transaction commits (on_commit).
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def media(settings, tmp_path) -> Path:
    settings.MEDIA_ROOT = str(tmp_path / "media")
    settings.JOBS_RETENTION_DAYS = 30
    settings.AUDIT_RETENTION_DAYS = 365
    settings.PRUNE_BATCH_SIZE = 2  # several batches even for this handful of rows
    settings.PRUNE_BATCH_PAUSE_SECONDS = 0
    return Path(settings.MEDIA_ROOT)


def job_with_files(membership, *, days_ago: float, status: str = "succeeded", parent=None, files: int = 1) -> Job:
    job, _ = services.job_submit(membership=membership, kind="sleep", params={}, parent=parent)
    finished = timezone.now() - timedelta(days=days_ago)
    Job.objects.filter(pk=job.pk).update(
        status=status,
        created_at=finished - timedelta(minutes=1),
        finished_at=finished if status in ("succeeded", "failed", "cancelled") else None,
        attempt=1,
    )
    JobEvent.objects.create(job=job, from_status="queued", to_status="running", attempt=1)
    for index in range(files):
        data = os.urandom(1000 + index)
        name = f"out-{index}.bin"
        stored = store_bytes(services.job_output_name(job_id=job.id, attempt=1, name=name), data)
        Artifact.objects.create(
            organization=membership.organization,
            job=job,
            role="output",
            name=name,
            file=stored,
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            attempt=1,
        )
    return Job.objects.get(pk=job.pk)


def files_of(job: Job, media: Path) -> list[Path]:
    return sorted((media / "artifacts" / str(job.pk)).rglob("out-*.bin"))


def aged_file(path: Path, *, hours: float, size: int = 500) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    then = time.time() - hours * 3600
    os.utime(path, (then, then))
    return path


@pytest.fixture
def world(member, media):
    """Rows and files of every kind the prune must remove, and of every kind it must keep."""
    home, _ = member("developer")
    other, _ = member("developer")
    organization_quota_set(organization=other.organization, actor=None, job_retention_days=60)
    w = {
        "old": job_with_files(home, days_ago=40, files=2),
        "old_failed": job_with_files(home, days_ago=31, status="failed"),
        "recent": job_with_files(home, days_ago=5, status="failed"),
        "old_queued": job_with_files(home, days_ago=40, status="queued"),
        "old_running": job_with_files(home, days_ago=40, status="running"),
        "other_kept": job_with_files(other, days_ago=40),  # its organization keeps jobs 60 days
        "other_old": job_with_files(other, days_ago=70),
    }
    sweep = job_with_files(home, days_ago=40)
    w["sweep"] = sweep
    w["sweep_children"] = [job_with_files(home, days_ago=40, parent=sweep) for _ in range(3)]
    busy = job_with_files(home, days_ago=40)
    w["busy_sweep"] = busy
    w["busy_children"] = [
        job_with_files(home, days_ago=40, parent=busy),
        job_with_files(home, days_ago=40, parent=busy, status="running"),
    ]
    schedule = schedule_create(membership=home, name="s", kind="sleep", params={}, interval_seconds=60)
    Schedule.objects.filter(pk=schedule.pk).update(last_job=w["old"])
    w["schedule"] = schedule
    now = timezone.now()
    w["audit_old"] = AuditEvent.objects.create(action="x.old", target_type="t", target_id="1")
    w["audit_kept"] = AuditEvent.objects.create(action="x.kept", target_type="t", target_id="2")
    AuditEvent.objects.filter(pk=w["audit_old"].pk).update(created_at=now - timedelta(days=400))
    AuditEvent.objects.filter(pk=w["audit_kept"].pk).update(created_at=now - timedelta(days=100))
    artifacts = media / "artifacts"
    w["orphan_old"] = aged_file(artifacts / str(w["recent"].pk) / "attempt-1" / "replaced.bin", hours=7)
    w["orphan_young"] = aged_file(artifacts / "loose" / "young.bin", hours=1)
    w["unfinished_file"] = aged_file(artifacts / str(w["old_running"].pk) / "attempt-1" / "writing.bin", hours=7)
    return w


PRUNED = ("old", "old_failed", "other_old", "sweep")
KEPT = ("recent", "old_queued", "old_running", "other_kept", "busy_sweep")


def test_prune_removes_rows_and_files_past_retention_and_nothing_else(world, media):
    pruned_jobs = [world[name] for name in PRUNED] + world["sweep_children"]
    kept_jobs = [world[name] for name in KEPT] + world["busy_children"]
    pruned_files = [path for job in pruned_jobs for path in files_of(job, media)]
    kept_files = [path for job in kept_jobs for path in files_of(job, media)]
    assert len(pruned_files) == 8 and len(kept_files) == 7

    report = services.jobs_prune()

    assert not Job.objects.filter(pk__in=[job.pk for job in pruned_jobs]).exists()
    assert not JobEvent.objects.filter(job_id__in=[job.pk for job in pruned_jobs]).exists()
    assert not Artifact.objects.filter(job_id__in=[job.pk for job in pruned_jobs]).exists()
    assert not any(path.exists() for path in pruned_files)
    assert not (media / "artifacts" / str(world["old"].pk)).exists()  # its empty folders too
    assert Job.objects.filter(pk__in=[job.pk for job in kept_jobs]).count() == len(kept_jobs)
    assert all(path.exists() for path in kept_files)
    assert JobEvent.objects.filter(job_id__in=[job.pk for job in kept_jobs]).count() == 2 * len(kept_jobs)
    schedule = Schedule.objects.get(pk=world["schedule"].pk)
    assert schedule.last_job is None  # the schedule stays; its link to the pruned job is cleared
    assert not AuditEvent.objects.filter(pk=world["audit_old"].pk).exists()
    assert AuditEvent.objects.filter(pk=world["audit_kept"].pk).exists()
    assert not world["orphan_old"].exists()
    assert world["orphan_young"].exists() and world["unfinished_file"].exists()

    assert report["jobs"] == len(pruned_jobs) == 7
    assert report["job_events"] == 2 * 7
    assert report["artifacts"] == 8
    assert report["artifact_bytes"] == sum(1000 + i for i in (0, 1)) + 6 * 1000
    assert (report["orphan_files"], report["orphan_bytes"], report["audit_events"]) == (1, 500, 1)
    assert services.jobs_prune()["jobs"] == 0  # nothing left to do


def test_a_dry_run_reports_the_same_figures_and_removes_nothing(world, media, capsys):
    jobs, events, artifacts = Job.objects.count(), JobEvent.objects.count(), Artifact.objects.count()
    files = sorted(media.rglob("*.bin"))

    call_command("prune", "--dry-run")
    dry = capsys.readouterr().out

    assert (Job.objects.count(), JobEvent.objects.count(), Artifact.objects.count()) == (jobs, events, artifacts)
    assert sorted(media.rglob("*.bin")) == files
    call_command("prune")
    done = capsys.readouterr().out
    assert "WOULD REMOVE" in dry and "REMOVED" in done
    assert dry.splitlines()[1:] == done.splitlines()[1:], (dry, done)
    assert "jobs_job                            7" in done
    assert "artifact file bytes              8001" in done


def test_the_periodic_prune_task_records_its_counts_for_metrics(world, media):
    tasks.prune()
    totals = dict(ControlCount.objects.filter(task="prune").values_list("name", "value"))
    assert totals["jobs_pruned"] == 7 and totals["audit_events_pruned"] == 1
    text = Client().get("/metrics").content.decode()
    assert 'switchyard_pruned_rows_total{table="jobs_job"} 7.0' in text
    assert 'switchyard_control_runs_total{task="prune"} 1.0' in text
    assert "switchyard_pruned_bytes_total 8501.0" in text


def test_workers_not_heard_from_for_the_retention_lose_their_rows(media, settings, capsys):
    settings.WORKER_HOSTS_RETENTION_DAYS = 7
    now = timezone.now()
    WorkerHost.objects.create(hostname="cpu-101@old", queues=["cpu"], last_heartbeat_at=now - timedelta(days=8))
    WorkerHost.objects.create(hostname="cpu-102@recent", queues=["cpu"], last_heartbeat_at=now - timedelta(days=6))
    WorkerHost.objects.create(hostname="cpu-103@alive", queues=["cpu"], last_heartbeat_at=now)

    call_command("prune", "--dry-run")
    assert "jobs_workerhost                     1" in capsys.readouterr().out
    assert WorkerHost.objects.count() == 3

    tasks.prune()
    assert set(WorkerHost.objects.values_list("hostname", flat=True)) == {"cpu-102@recent", "cpu-103@alive"}
    totals = dict(ControlCount.objects.filter(task="prune").values_list("name", "value"))
    assert totals["worker_hosts_pruned"] == 1
    assert 'switchyard_pruned_rows_total{table="jobs_workerhost"} 1.0' in Client().get("/metrics").content.decode()
