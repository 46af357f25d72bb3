"""PostgreSQL schedules, the broker rings: real workers, a real broker (both brokers with -m broker)."""

import os
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis
from django.db import transaction

from apps.jobs import services
from apps.jobs.models import Job, JobEvent
from project import queues
from tests.acceptance.test_job_contract import FAST_CONTRACT, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def sleep_job(membership, priority=5, **params) -> Job:
    return services.job_submit(membership=membership, kind="sleep", params=params, priority=priority)[0]


def lose_every_message(settings, broker) -> None:
    if settings.CELERY_BROKER_URL.startswith("redis"):
        redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()
    else:
        with broker.connection_for_write() as conn:
            for queue in queues.TASK_QUEUES:
                queue(conn.default_channel).purge()


def test_priority_is_exact_under_a_backlog(start_worker, member):
    """500 low-priority jobs queued, 2 busy workers: 10 urgent jobs all start before any further low one."""
    membership, _ = member("developer")
    low = [sleep_job(membership, priority=0, duration_s=0.02) for _ in range(500)]
    start_worker("cpu", concurrency=2, env=FAST_CONTRACT)
    wait_for(lambda: Job.objects.filter(status="succeeded").count() >= 20, 60, "workers did not start consuming")

    with transaction.atomic():  # all ten become visible to the claim at one instant
        urgent = [sleep_job(membership, priority=9, duration_s=0.02) for _ in range(10)]
    visible_at = datetime.now(UTC)
    wait_for(lambda: Job.objects.filter(pk__in=[j.pk for j in urgent], status="succeeded").count() == 10, 60, "urgent")

    last_urgent_start = max(Job.objects.filter(pk__in=[j.pk for j in urgent]).values_list("started_at", flat=True))
    overtaken = Job.objects.filter(
        pk__in=[j.pk for j in low], started_at__gt=visible_at, started_at__lt=last_urgent_start
    ).count()
    assert overtaken == 0
    assert Job.objects.filter(pk__in=[j.pk for j in low], status="queued").exists(), "backlog ran out too soon"


def test_a_flushed_broker_costs_seconds_not_minutes(start_worker, member, settings, broker, tmp_path):
    """FLUSHALL with 200 jobs queued: the ring (beat, every 2 s) restores doorbells; all succeed within 30 s."""
    membership, _ = member("developer")
    jobs = [sleep_job(membership, duration_s=0.01) for _ in range(200)]
    lose_every_message(settings, broker)
    assert Job.objects.filter(status="queued").count() == 200

    start_worker(
        "cpu,control",
        concurrency=2,
        env={**FAST_CONTRACT, "JOBS_RING_INTERVAL_SECONDS": "2"},
        extra_args=["--beat", f"--schedule={tmp_path / 'beat-schedule'}"],
    )
    up = time.monotonic()
    wait_for(
        lambda: Job.objects.filter(pk__in=[j.pk for j in jobs], status="succeeded").count() == 200,
        90,
        "jobs left behind after the flush",
        poll=0.5,
    )
    assert time.monotonic() - up < 30 + 10  # 30 s once up; the worker's own start is inside the margin
    for job in jobs:
        assert JobEvent.objects.filter(job=job, to_status="succeeded").count() == 1


def test_a_long_backlog_gets_no_duplicate_doorbells(member, queue_depth, settings, broker):
    """Doorbells are turns that run jobs back to back: JOBS_DOORBELLS_AHEAD of them cover any backlog."""
    settings.JOBS_DOORBELLS_AHEAD = 16
    membership, _ = member("developer")
    for _ in range(300):
        sleep_job(membership)
    assert queue_depth("cpu") == 16  # one doorbell per submit until enough wait, then none
    for _ in range(5):
        services.jobs_ring()
    assert queue_depth("cpu") == 16  # the ring adds none while doorbells cover the backlog

    lose_every_message(settings, broker)
    services.jobs_ring()
    assert queue_depth("cpu") == 16
    services.jobs_ring()
    assert queue_depth("cpu") == 16


def test_one_doorbell_runs_a_whole_backlog_turn_after_turn(start_worker, member, settings, queue_depth):
    """One doorbell, no ring: each turn runs jobs back to back and rings again when its time is up."""
    settings.JOBS_DOORBELLS_AHEAD = 1
    membership, _ = member("developer")
    jobs = [sleep_job(membership, duration_s=0.02) for _ in range(60)]
    assert queue_depth("cpu") == 1
    # No beat: nothing but the turns themselves can ring again.
    start_worker("cpu", concurrency=1, env={**FAST_CONTRACT, "JOBS_DOORBELL_TURN_SECONDS": "1"})
    wait_for(lambda: Job.objects.filter(pk__in=[j.pk for j in jobs], status="succeeded").count() == 60, 90, "jobs")
    workers = set(Job.objects.filter(pk__in=[j.pk for j in jobs]).values_list("task_id", flat=True))
    # 60 jobs of 0.02 s outlast one 1 s turn; a turn runs jobs until its second is up, so
    # even a loaded machine runs several jobs per turn.
    assert 2 <= len(workers) < 60


def test_a_delayed_retry_is_not_claimed_early_and_rings_when_due(start_worker, member):
    """A transient failure sets run_after (backoff, database clock); the job waits for it, then runs."""
    membership, _ = member("developer")
    start_worker("cpu", env={**FAST_CONTRACT, "JOBS_RETRY_BACKOFF_SECONDS": "2", "JOBS_RETRY_BACKOFF_MAX_SECONDS": "2"})
    job = sleep_job(membership, fail_first_attempts=1)
    wait_for(lambda: Job.objects.get(pk=job.pk).status == "succeeded", 60, "job did not succeed")

    requeued = JobEvent.objects.get(job=job, from_status="running", to_status="queued").created_at
    second_start = JobEvent.objects.get(job=job, to_status="running", attempt=2).created_at
    # Backoff is uniform in [ceiling/2, ceiling] = [1, 2] s: never before 1 s, and rung when due.
    assert second_start - requeued >= timedelta(seconds=1)
    assert second_start - requeued < timedelta(seconds=2 + 3)


def test_pause_stops_claims_at_once_and_resume_restarts_them(start_worker, member):
    from tests.factories import UserFactory

    operator = UserFactory(username="root", is_superuser=True, is_staff=True)
    membership, _ = member("developer")
    start_worker("cpu", env=FAST_CONTRACT)
    sleep_job(membership)
    wait_for(lambda: Job.objects.filter(status="succeeded").count() == 1, 60, "worker did not start")

    services.queue_set_paused(queue="cpu", paused=True, actor=operator)
    paused_at = datetime.now(UTC)
    held = [sleep_job(membership, duration_s=0.01) for _ in range(5)]
    time.sleep(3)  # the doorbells are delivered and find nothing eligible
    assert not Job.objects.filter(pk__in=[j.pk for j in held]).exclude(status="queued").exists()
    assert not Job.objects.filter(started_at__gt=paused_at).exists()

    services.queue_set_paused(queue="cpu", paused=False, actor=operator)  # rings on commit
    wait_for(lambda: Job.objects.filter(pk__in=[j.pk for j in held], status="succeeded").count() == 5, 30, "resume")


def test_an_organization_limit_holds_across_workers_and_never_idles_them(start_worker, member):
    """Limit 2 for A across 4 worker processes: never 3 of A running; B's work fills the other slots."""
    from apps.accounts.services import organization_quota_set

    flooder, _ = member("developer")
    other, _ = member("developer")
    organization_quota_set(organization=flooder.organization, actor=None, running_jobs={"cpu": 2})
    for _ in range(2):
        start_worker("cpu", concurrency=2, env=FAST_CONTRACT)
    # Submitted once all four processes are up, so the sampling below sees the whole run.
    flood = [sleep_job(flooder, priority=9, duration_s=1) for _ in range(10)]
    theirs = [sleep_job(other, priority=0, duration_s=1) for _ in range(8)]
    everything = [job.pk for job in flood + theirs]

    most_of_theirs_at_once, samples = 0, 0
    deadline = time.monotonic() + 120
    while Job.objects.filter(pk__in=everything, status="succeeded").count() < len(everything):
        assert time.monotonic() < deadline, "jobs did not finish"
        running = Job.objects.filter(pk__in=everything, status="running")
        mine = running.filter(organization=flooder.organization).count()
        assert mine <= 2, f"{mine} of the limited organization's jobs running at once"
        most_of_theirs_at_once = max(most_of_theirs_at_once, running.filter(organization=other.organization).count())
        samples += 1
        time.sleep(0.05)
    assert samples >= 5  # sampled while the jobs ran (each sample is a few queries on a loaded machine)
    # A's limit left two of the four processes to B (priority 0, yet not starved behind A's priority 9).
    assert most_of_theirs_at_once >= 2


def test_a_snoozed_job_runs_again_later_without_using_an_attempt(start_worker, member):
    membership, _ = member("developer")
    start_worker("cpu", env=FAST_CONTRACT)
    # One attempt only: if snoozing used it, the job could never run again.
    job = services.job_submit(membership=membership, kind="sleep", params={"snooze_first_s": 1.5}, max_attempts=1)[0]
    wait_for(lambda: Job.objects.get(pk=job.pk).status == "succeeded", 60, "snoozed job did not succeed")

    job.refresh_from_db()
    assert job.attempt == 2 and job.max_attempts == 2 and job.error is None
    events = list(JobEvent.objects.filter(job=job).values_list("from_status", "to_status", "message"))
    assert [(a, b) for a, b, _ in events] == [
        ("", "queued"),
        ("queued", "running"),
        ("running", "queued"),
        ("queued", "running"),
        ("running", "succeeded"),
    ]
    assert "snoozed for 1.5s (no attempt used)" in events[2][2]
    snoozed_at = JobEvent.objects.get(job=job, from_status="running", to_status="queued").created_at
    again = JobEvent.objects.get(job=job, to_status="running", attempt=2).created_at
    assert again - snoozed_at >= timedelta(seconds=1.5)


def test_one_organizations_flood_does_not_starve_another(start_worker, member):
    """A floods the queue first; B's later jobs start within a few job durations, not behind A's backlog."""
    flooder, _ = member("developer")
    latecomer, _ = member("developer")
    flood = [sleep_job(flooder, duration_s=0.05) for _ in range(400)]
    start_worker("cpu", concurrency=2, env=FAST_CONTRACT)
    wait_for(lambda: Job.objects.filter(pk__in=[j.pk for j in flood], status="succeeded").count() >= 40, 60, "A")

    late = [sleep_job(latecomer, duration_s=0.05) for _ in range(10)]
    wait_for(lambda: Job.objects.filter(pk__in=[j.pk for j in late], status="succeeded").count() == 10, 60, "B")

    waits = [
        (job.started_at - job.created_at).total_seconds() for job in Job.objects.filter(pk__in=[j.pk for j in late])
    ]
    still_queued = Job.objects.filter(pk__in=[j.pk for j in flood], status="queued").count()
    # FIFO would have put B behind A's remaining backlog; fair share runs it next.
    assert still_queued >= 100, "the flood ran out before B was served: the test proves nothing"
    assert max(waits) < 10, waits


@pytest.mark.one_broker
def test_bench_fairness_reports_waits_and_shares_and_cleans_up(broker):
    import io

    from django.core.management import call_command

    out = io.StringIO()
    call_command("bench", "fairness", "--flood", "80", "--late", "5", "--share-jobs", "120", stdout=out)
    summary = dict(pair.split("=") for pair in out.getvalue().strip().splitlines()[-1].split())
    assert float(summary["b_wait_p95_s"]) < float(summary["b_wait_fifo_s"])
    assert 0.6 < float(summary["share_ratio_1_1"]) < 1.6
    # Twice the weight gets clearly more (the figures for the docs come from longer runs).
    assert float(summary["share_ratio_2_1"]) > 1.2 * float(summary["share_ratio_1_1"])
    assert not Job.objects.exists()


def _a_start_rate_holds(start_worker, member, tmp_path, *, per_minute: int, starts: int) -> None:
    from apps.accounts.services import organization_quota_set

    membership, _ = member("developer")
    organization_quota_set(organization=membership.organization, actor=None, starts_per_minute={"sleep": per_minute})
    jobs = [sleep_job(membership, duration_s=0.01) for _ in range(starts + per_minute)]
    start_worker(
        "cpu,control",
        concurrency=2,
        env={**FAST_CONTRACT, "JOBS_RING_INTERVAL_SECONDS": "1"},
        extra_args=["--beat", f"--schedule={tmp_path / 'beat-schedule'}"],
    )
    started = Job.objects.filter(pk__in=[j.pk for j in jobs], started_at__isnull=False)
    minutes = (starts - 1) // per_minute
    wait_for(lambda: started.count() >= starts, 60 * minutes + 60, "the rate let too few jobs start")
    times = sorted(started.values_list("started_at", flat=True))
    # Any per_minute + 1 consecutive starts span a minute (less a second for claims that waited on each other).
    for first, last in zip(times, times[per_minute:], strict=False):
        assert last - first >= timedelta(seconds=59), f"{per_minute + 1} starts within {last - first}"
    assert Job.objects.filter(pk__in=[j.pk for j in jobs], status="queued").exists()


@pytest.mark.one_broker
def test_a_start_rate_holds_with_real_workers(start_worker, member, tmp_path):
    """starts_per_minute 3, enough jobs for 2 minutes: never 4 starts in 60 s, and the 4th starts once allowed."""
    _a_start_rate_holds(start_worker, member, tmp_path, per_minute=3, starts=4)


@pytest.mark.skipif(not os.environ.get("SWITCHYARD_LONG_TESTS"), reason="3 minutes: set SWITCHYARD_LONG_TESTS=1")
def test_a_start_rate_holds_for_three_minutes(start_worker, member, tmp_path):
    _a_start_rate_holds(start_worker, member, tmp_path, per_minute=10, starts=31)
