"""A doorbell's turn: each finish claims the next job in the same statement, and a turn looks again before it ends."""

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from apps.jobs import runner, services
from apps.jobs.models import Job, JobEvent, JobStatus, OrganizationUsage

pytestmark = pytest.mark.django_db(transaction=True)


def submit(membership, **fields) -> Job:
    job, _ = services.job_submit(membership=membership, kind="sleep", params={}, publish=False)
    if fields:
        Job.objects.filter(pk=job.pk).update(**fields)
    return job


def finish_and_claim(job: Job, attempt: int | None = None) -> tuple[bool, Job | None]:
    return services.job_finish_and_claim_next(
        job_id=job.pk,
        attempt=job.attempt if attempt is None else attempt,
        status=JobStatus.SUCCEEDED,
        result={"slept_s": 0},
        worker="cpu@test",
        queue="cpu",
        task_id="doorbell-1",
    )


def transitions(job: Job) -> list[tuple[str, str, int]]:
    events = JobEvent.objects.filter(job=job).order_by("created_at", "id")
    return list(events.values_list("from_status", "to_status", "attempt"))


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "plain"])
def test_one_statement_ends_a_job_and_claims_the_next_each_with_its_event(member, settings, prepared):
    settings.DB_PREPARED_STATEMENTS = prepared
    membership, _ = member("developer")
    first, second = submit(membership), submit(membership)
    running = services.job_claim_next(queue="cpu", worker="cpu@test")
    assert running.pk == first.pk

    finished, claimed = finish_and_claim(running)

    assert finished and claimed.pk == second.pk
    assert (claimed.status, claimed.attempt, claimed.task_id) == (JobStatus.RUNNING, 1, "doorbell-1")
    first.refresh_from_db()
    assert (first.status, first.result, first.lease_expires_at) == (JobStatus.SUCCEEDED, {"slept_s": 0}, None)
    assert transitions(first) == [("", "queued", 0), ("queued", "running", 1), ("running", "succeeded", 1)]
    assert transitions(second) == [("", "queued", 0), ("queued", "running", 1)]
    # Nothing left: the finish still lands, and no job comes back.
    assert finish_and_claim(claimed) == (True, None)
    assert Job.objects.get(pk=second.pk).status == JobStatus.SUCCEEDED


def test_a_fenced_finish_changes_nothing_and_the_next_job_is_still_claimed(member):
    membership, _ = member("developer")
    first, second = submit(membership), submit(membership)
    running = services.job_claim_next(queue="cpu", worker="cpu@test")

    finished, claimed = finish_and_claim(running, attempt=running.attempt + 1)  # another attempt's token

    assert not finished and claimed.pk == second.pk
    first.refresh_from_db()
    assert first.status == JobStatus.RUNNING and first.result is None
    assert transitions(first)[-1] == ("queued", "running", 1)


def test_the_finished_job_no_longer_holds_its_organizations_slot(member):
    """The claim in the finish's statement counts the limits as if the finish had committed first."""
    from apps.accounts.services import organization_quota_set

    membership, _ = member("developer")
    organization_quota_set(organization=membership.organization, actor=None, running_jobs={"cpu": 1})
    submit(membership), submit(membership)
    running = services.job_claim_next(queue="cpu", worker="cpu@test")
    assert services.job_claim_next(queue="cpu", worker="cpu@test") is None  # at its limit

    finished, claimed = finish_and_claim(running)

    assert finished and claimed is not None
    assert Job.objects.filter(organization=membership.organization, status=JobStatus.RUNNING).count() == 1


def test_the_finished_job_no_longer_holds_its_concurrency_key(member):
    membership, _ = member("developer")
    keyed = [
        services.job_submit(
            membership=membership, kind="sleep", params={}, concurrency_key="customer-7", publish=False
        )[0]
        for _ in range(2)
    ]
    running = services.job_claim_next(queue="cpu", worker="cpu@test")
    assert running.pk == keyed[0].pk
    assert services.job_claim_next(queue="cpu", worker="cpu@test") is None  # the key's one slot is taken

    assert finish_and_claim(running)[1].pk == keyed[1].pk


def test_the_finished_attempts_time_counts_in_the_fair_share_of_the_claim_beside_it(member):
    """As if the finish had committed first: its wall time is now its organization's cost."""
    heavy, _ = member("developer")
    light, _ = member("developer")
    submit(heavy)
    running = services.job_claim_next(queue="cpu", worker="cpu@test")
    Job.objects.filter(pk=running.pk).update(started_at=timezone.now() - timedelta(seconds=100))
    heavy_next = submit(heavy)
    light_next = submit(light)
    OrganizationUsage.objects.update_or_create(
        organization=light.organization, queue="cpu", defaults={"cost_s": 50.0, "updated_at": timezone.now()}
    )

    finished, claimed = finish_and_claim(running)

    # heavy: 100 s just finished; light: 50 s. Leaving the finishing attempt out would rank heavy at 0.
    assert finished and claimed.pk == light_next.pk
    assert services.job_claim_next(queue="cpu", worker="cpu@test").pk == heavy_next.pk
    usage = OrganizationUsage.objects.get(organization=heavy.organization, queue="cpu")
    assert 99.0 < usage.cost_s < 110.0


def test_a_turn_looks_again_before_it_ends_so_a_job_submitted_meanwhile_shares_it(member, settings):
    """Workers that keep up find the queue empty after each job; the turn lingers instead of ending there."""
    settings.JOBS_DOORBELL_TURN_SECONDS = 60
    # Generous beside the few milliseconds between the first job's end and the next submit;
    # the turn also lingers this long after the second job, so the test takes about as long.
    settings.JOBS_DOORBELL_LINGER_SECONDS = 5
    membership, _ = member("developer")
    first = submit(membership)
    outcome = {}

    def turn():
        try:
            outcome.update(runner.run_next(queue="cpu", worker="cpu@test", task_id="doorbell-1"))
        finally:
            connection.close()

    thread = threading.Thread(target=turn)
    thread.start()
    deadline = time.monotonic() + 30
    while Job.objects.get(pk=first.pk).status != JobStatus.SUCCEEDED:
        assert time.monotonic() < deadline, "the turn did not run its first job"
        time.sleep(0.05)
    second = submit(membership)  # after the turn found the queue empty
    thread.join(timeout=60)

    assert not thread.is_alive()
    assert [ran["job_id"] for ran in outcome["jobs"]] == [str(first.pk), str(second.pk)]
    assert Job.objects.get(pk=second.pk).status == JobStatus.SUCCEEDED


def test_a_turn_that_found_nothing_ends_at_once(member, settings):
    settings.JOBS_DOORBELL_LINGER_SECONDS = 30
    started = time.monotonic()
    assert runner.run_next(queue="cpu", worker="cpu@test")["outcome"] == "nothing_eligible"
    assert time.monotonic() - started < 20  # no lingering for a doorbell that ran nothing


def test_the_submits_doorbell_count_is_the_brokers_at_every_priority(member, queue_depth):
    """The count a submit makes on Redis (one kept client, a plain pipeline) sums the same lists as kombu's."""
    from apps.jobs.services import dispatch

    membership, _ = member("developer")
    for priority in (0, 3, 5, 9, 9):
        services.job_submit(membership=membership, kind="sleep", params={}, priority=priority)
    dispatch.ring_doorbells("cpu", 2)
    waiting = queue_depth("cpu")
    assert waiting >= 3  # the submits' doorbells (their priorities) and the ring's
    assert dispatch._broker_ready_count("cpu") == waiting
    assert dispatch._broker_ready_count("gpu") == queue_depth("gpu")
