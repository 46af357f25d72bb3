"""The scheduler's claim: the best eligible job of a queue, in one statement (no workers needed)."""

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from apps.jobs import services
from apps.jobs.models import Job, JobStatus

pytestmark = pytest.mark.django_db(transaction=True)


def submit(membership, priority=5, **fields) -> Job:
    job, _ = services.job_submit(membership=membership, kind="sleep", params={}, priority=priority, publish=False)
    if fields:
        Job.objects.filter(pk=job.pk).update(**fields)
    return job


def test_the_claim_takes_the_highest_priority_then_the_oldest(member):
    membership, _ = member("developer")
    low_old, low_new = submit(membership, priority=1), submit(membership, priority=1)
    high = submit(membership, priority=9)
    middle = submit(membership, priority=5)

    order = [services.job_claim_next(queue="cpu", worker="cpu@test") for _ in range(4)]

    assert [job.pk for job in order] == [high.pk, middle.pk, low_old.pk, low_new.pk]
    assert services.job_claim_next(queue="cpu", worker="cpu@test") is None
    assert all(job.status == JobStatus.RUNNING and job.attempt == 1 for job in order)


def test_a_job_is_not_claimed_before_its_run_after_by_the_database_clock(member):
    membership, _ = member("developer")
    later = submit(membership, priority=9, run_after=timezone.now() + timedelta(hours=1))
    now = submit(membership, priority=0)

    assert services.job_claim_next(queue="cpu", worker="cpu@test").pk == now.pk
    assert services.job_claim_next(queue="cpu", worker="cpu@test") is None
    Job.objects.filter(pk=later.pk).update(run_after=timezone.now() - timedelta(seconds=1))
    claimed = services.job_claim_next(queue="cpu", worker="cpu@test")
    assert claimed.pk == later.pk and claimed.run_after is None


def test_other_queues_exhausted_and_ended_jobs_are_not_eligible(member):
    membership, _ = member("developer")
    submit(membership, queue="gpu")
    submit(membership, attempt=3, max_attempts=3)
    submit(membership, status=JobStatus.CANCELLED)
    assert services.job_claim_next(queue="cpu", worker="cpu@test") is None
    assert services.job_claim_next(queue="gpu", worker="gpu@test") is not None


def test_concurrent_claims_take_different_jobs(member):
    membership, _ = member("developer")
    jobs = [submit(membership) for _ in range(8)]
    claimed, barrier = [], threading.Barrier(8)

    def claim():
        barrier.wait()
        try:
            job = services.job_claim_next(queue="cpu", worker=f"cpu@{threading.get_ident()}")
            claimed.append(job.pk if job else None)
        finally:
            connection.close()

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed, key=str) == sorted((job.pk for job in jobs), key=str)


def test_the_claim_records_the_doorbell_that_ran_the_job(member):
    membership, _ = member("developer")
    job = submit(membership)
    claimed = services.job_claim_next(queue="cpu", worker="cpu@test", task_id="doorbell-1")
    assert claimed.pk == job.pk and claimed.task_id == "doorbell-1"
    assert list(claimed.events.values_list("to_status", flat=True)) == ["queued", "running"]


def test_leases_are_judged_by_the_database_clock(member, settings):
    """A heartbeat sets the lease from PostgreSQL's now(), whatever this process's clock says."""
    from unittest import mock

    membership, _ = member("developer")
    submit(membership)
    job = services.job_claim_next(queue="cpu", worker="cpu@test")
    skewed = timezone.now() + timedelta(hours=2)
    with mock.patch("django.utils.timezone.now", return_value=skewed):
        assert services.job_heartbeat(job_id=job.pk, attempt=job.attempt) == JobStatus.RUNNING
    job.refresh_from_db()
    assert job.lease_expires_at < timezone.now() + timedelta(seconds=settings.JOBS_LEASE_SECONDS + 30)
