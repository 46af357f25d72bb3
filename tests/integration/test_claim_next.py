"""The scheduler's claim: the best eligible job of a queue, in one statement (no workers needed)."""

import math
import threading
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
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


def test_an_organization_at_its_running_limit_is_passed_over_not_waited_for(member):
    from apps.accounts.services import organization_quota_set

    flooder, client = member("developer")
    other, _ = member("developer")
    organization_quota_set(organization=flooder.organization, actor=None, running_jobs={"cpu": 2})
    flood = [submit(flooder, priority=9) for _ in range(5)]
    theirs = submit(other, priority=0)

    claimed = [services.job_claim_next(queue="cpu", worker="cpu@test") for _ in range(4)]

    assert [job.pk if job else None for job in claimed] == [flood[0].pk, flood[1].pk, theirs.pk, None]
    held = client.get(f"/api/v1/jobs/{flood[2].pk}/").json()["wait_reason"]
    assert held == {
        "code": "organization_limit",
        "message": "Your organization runs 2 of at most 2 jobs at once on 'cpu'.",
    }
    services.job_finish(job_id=flood[0].pk, attempt=1, status=JobStatus.SUCCEEDED)
    assert services.job_claim_next(queue="cpu", worker="cpu@test").pk == flood[2].pk


def test_jobs_sharing_a_concurrency_key_run_within_its_limit(member):
    membership, client = member("developer")
    first, second = (
        services.job_submit(
            membership=membership, kind="sleep", params={}, concurrency_key="customer-42", publish=False
        )[0]
        for _ in range(2)
    )
    unkeyed = submit(membership, priority=0)

    assert services.job_claim_next(queue="cpu", worker="cpu@test").pk == first.pk
    assert services.job_claim_next(queue="cpu", worker="cpu@test").pk == unkeyed.pk  # `second` is held
    assert services.job_claim_next(queue="cpu", worker="cpu@test") is None
    assert client.get(f"/api/v1/jobs/{second.pk}/").json()["wait_reason"]["code"] == "key_limit"


def test_submit_takes_run_after_and_a_concurrency_key_through_rest(member):
    _, client = member("developer")
    later = (timezone.now() + timedelta(minutes=10)).isoformat()
    body = client.post(
        "/api/v1/jobs/",
        {"kind": "sleep", "params": {}, "run_after": later, "concurrency_key": "nightly", "concurrency_limit": 2},
        format="json",
    ).json()
    assert body["concurrency_key"] == "nightly" and body["concurrency_limit"] == 2 and body["run_after"]
    assert services.job_claim_next(queue="cpu", worker="cpu@test") is None

    refused = client.post("/api/v1/jobs/", {"kind": "sleep", "concurrency_limit": 2}, format="json")
    assert refused.status_code == 400 and "concurrency_limit" in refused.json()["fields"]
    too_late = (timezone.now() + timedelta(days=40)).isoformat()
    refused = client.post("/api/v1/jobs/", {"kind": "sleep", "run_after": too_late}, format="json")
    assert refused.status_code == 400 and "run_after" in refused.json()["fields"]


def test_a_doorbell_carries_the_longest_limit_and_the_runner_holds_the_job_to_its_kind(member):
    import time

    from celery.exceptions import SoftTimeLimitExceeded

    from apps.jobs.kinds import JobKind, all_kinds
    from apps.jobs.runner import time_limits

    membership, _ = member("developer")
    job = submit(membership)
    _, options = services.dispatch.run_message(job)
    longest = max(kind.time_limit_s for kind in all_kinds().values() if kind.message is None)
    # A job may start up to one turn into its doorbell's task.
    turn = math.ceil(django_settings.JOBS_DOORBELL_TURN_SECONDS)
    assert options["soft_time_limit"] == longest + turn and options["time_limit"] > longest + turn

    quick = JobKind(
        name="quick",
        description="",
        params_serializer=None,
        execute=None,
        pick_queue=None,
        soft_time_limit_s=1,
        time_limit_s=30,
    )
    started = time.monotonic()
    with pytest.raises(SoftTimeLimitExceeded), time_limits(quick):
        time.sleep(20)
    assert time.monotonic() - started < 15  # raised at the soft limit, not after the sleep


def _usage(organization, cost_s: float) -> None:
    from apps.jobs.models import OrganizationUsage

    OrganizationUsage.objects.update_or_create(
        organization=organization, queue="cpu", defaults={"cost_s": cost_s, "updated_at": timezone.now()}
    )


def test_fair_share_prefers_the_organization_furthest_below_its_share(member):
    heavy, _ = member("developer")
    light, _ = member("developer")
    flood = [submit(heavy) for _ in range(5)]
    late = [submit(light) for _ in range(2)]
    _usage(heavy.organization, 100.0)

    order = [services.job_claim_next(queue="cpu", worker="cpu@test").pk for _ in range(3)]

    # The light organization's newer jobs go first; age decides only between equals.
    assert order == [late[0].pk, late[1].pk, flood[0].pk]


def test_fair_share_divides_recent_cost_by_the_weight(member):
    from apps.accounts.services import organization_quota_set

    paying, _ = member("developer")
    other, _ = member("developer")
    organization_quota_set(organization=paying.organization, actor=None, share_weight=2.0)
    theirs = submit(other)  # older
    mine = submit(paying)
    _usage(paying.organization, 100.0)  # 100 / 2 = 50
    _usage(other.organization, 60.0)  # 60 / 1 = 60

    assert services.job_claim_next(queue="cpu", worker="cpu@test").pk == mine.pk
    assert services.job_claim_next(queue="cpu", worker="cpu@test").pk == theirs.pk


def test_priority_comes_before_fair_share_and_finishing_records_the_cost(member):
    from apps.jobs.models import OrganizationUsage

    heavy, _ = member("developer")
    light, _ = member("developer")
    urgent = submit(heavy, priority=9)
    submit(light, priority=5)
    _usage(heavy.organization, 1000.0)

    claimed = services.job_claim_next(queue="cpu", worker="cpu@test")
    assert claimed.pk == urgent.pk
    services.job_finish(job_id=claimed.pk, attempt=1, status=JobStatus.SUCCEEDED)
    usage = OrganizationUsage.objects.get(organization=heavy.organization, queue="cpu")
    assert 999.0 < usage.cost_s < 1001.0  # decayed by a moment, plus this attempt's wall time
