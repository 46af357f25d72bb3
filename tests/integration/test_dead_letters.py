"""Dead letters: failures the system caused, told apart from the jobs' own, on every surface, retryable in bulk."""

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from apps.jobs import services
from apps.jobs.models import Job, JobStatus

pytestmark = pytest.mark.django_db(transaction=True)


def submitted(membership) -> Job:
    return services.job_submit(membership=membership, kind="sleep", params={}, publish=False)[0]


def dead_letter(membership) -> Job:
    """Claimed on its last attempt by a worker that then vanished: the reaper fails it."""
    job = submitted(membership)
    Job.objects.filter(pk=job.pk).update(max_attempts=1)
    services.job_claim(job_id=job.pk, worker="cpu@gone")
    Job.objects.filter(pk=job.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=5))
    services.jobs_reap()
    return Job.objects.get(pk=job.pk)


def own_failure(membership, code="runtime_error") -> Job:
    job = submitted(membership)
    claimed = services.job_claim(job_id=job.pk, worker="cpu@a")
    error = {"code": code, "message": "program exited with code 1", "details": {}}
    services.job_finish(job_id=job.pk, attempt=claimed.attempt, status=JobStatus.FAILED, error=error)
    return Job.objects.get(pk=job.pk)


def test_the_system_failures_and_the_jobs_own_are_told_apart(member, client):
    membership, api = member("developer")
    dead = dead_letter(membership)
    own = own_failure(membership)
    crashed = own_failure(membership, code="internal_error")
    assert (dead.status, dead.failure) == ("failed", "system")
    assert dead.error["code"] == "attempts_exhausted"
    assert own.failure == "user"  # a sandbox program's own runtime error is not an operations failure
    assert crashed.failure == "system"

    listed = api.get("/api/v1/jobs/?failure=system").json()["results"]
    assert {job["id"] for job in listed} == {str(dead.pk), str(crashed.pk)}
    assert api.get(f"/api/v1/jobs/{own.pk}/").json()["failure"] == "user"
    assert api.get("/api/v1/jobs/?failure=bogus").status_code == 400

    metrics = client.get("/metrics").content.decode()
    assert 'switchyard_jobs_failed{failure="system",kind="sleep"} 2.0' in metrics
    assert 'switchyard_jobs_failed{failure="user",kind="sleep"} 1.0' in metrics


def test_dead_letters_are_listed_and_retried_in_bulk_from_the_cli(member, capsys):
    membership, _ = member("developer")
    dead = [dead_letter(membership) for _ in range(2)]
    own = own_failure(membership)
    user = membership.user.username

    call_command("jobs", "list", "--failure", "system", "--as", user)
    listing = capsys.readouterr().out
    assert all(str(job.pk) in listing for job in dead) and str(own.pk) not in listing

    call_command("jobs", "retry", "--dead-letters", "--as", user)
    assert "retried 2 dead-letter job(s)" in capsys.readouterr().out
    for job in dead:
        job.refresh_from_db()
        assert (job.status, job.failure, job.error) == ("queued", "", None)
    assert Job.objects.get(pk=own.pk).status == "failed"


def test_the_dashboard_separates_the_systems_failures_from_the_jobs_own(member, client):
    from tests.factories import UserFactory

    membership, _ = member("developer")
    dead_letter(membership)
    own_failure(membership)
    client.force_login(UserFactory(username="ops", is_staff=True, is_superuser=True))
    response = client.get("/admin/operations/")
    assert response.status_code == 200
    rows = {(row["failure"], row["code"]): row["n"] for row in response.context["failures_by_code"]}
    assert rows == {("system", "attempts_exhausted"): 1, ("user", "runtime_error"): 1}
    html = response.content.decode()
    assert "(dead letter)" in html and "the job's own" in html and "system failed" in html
