"""Queue pause/resume and "why is my job waiting?", from the same rules as the claim."""

import re
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from apps.accounts.models import AuditEvent
from apps.core.errors import PermissionDenied
from apps.jobs import services
from apps.jobs.models import Job
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def operator():
    return UserFactory(username="root", is_staff=True, is_superuser=True)


@pytest.fixture
def live_cpu_host():
    services.worker_host_register(hostname="cpu@live", queues=["cpu"], capabilities={}, version="test", pid=1)


def submit(membership, **fields) -> Job:
    job, _ = services.job_submit(membership=membership, kind="sleep", params={}, publish=False)
    if fields:
        Job.objects.filter(pk=job.pk).update(**fields)
    return Job.objects.get(pk=job.pk)


def reason(client, job) -> dict | None:
    return client.get(f"/api/v1/jobs/{job.pk}/").json()["wait_reason"]


def test_a_paused_queue_is_not_claimed_from_until_resumed(member, operator):
    membership, client = member("developer")
    job = submit(membership)
    services.queue_set_paused(queue="cpu", paused=True, actor=operator, reason="driver upgrade")

    assert services.job_claim_next(queue="cpu", worker="cpu@test") is None
    assert reason(client, job) == {"code": "queue_paused", "message": "Queue 'cpu' is paused: driver upgrade."}
    assert {"name": "cpu", "paused": True, "reason": "driver upgrade", "queued": 1} in client.get(
        "/api/v1/queues/"
    ).json()

    services.queue_set_paused(queue="cpu", paused=False, actor=operator)
    assert services.job_claim_next(queue="cpu", worker="cpu@test").pk == job.pk
    actions = list(AuditEvent.objects.filter(organization=None).values_list("action", "actor__username"))
    assert ("queue.paused", "root") in actions and ("queue.resumed", "root") in actions


def test_only_platform_operators_pause_queues_and_only_pulled_queues(member, operator):
    membership, _ = member("owner")
    with pytest.raises(PermissionDenied):
        services.queue_set_paused(queue="cpu", paused=True, actor=membership.user)
    from apps.core.errors import DomainError

    with pytest.raises(DomainError) as refused:
        services.queue_set_paused(queue="sandbox", paused=True, actor=operator)
    assert "queue" in refused.value.fields


def test_every_wait_rule_is_reported_as_the_reason(member, live_cpu_host):
    membership, client = member("developer")
    later = submit(membership, run_after=timezone.now() + timedelta(minutes=5))
    delayed = reason(client, later)
    assert delayed["code"] == "run_after"
    assert 290 <= int(re.search(r"in (\d+) s", delayed["message"]).group(1)) <= 300

    exhausted = submit(membership, attempt=3, max_attempts=3)
    assert reason(client, exhausted)["code"] == "attempts_exhausted"

    first, second = submit(membership, priority=9), submit(membership, priority=1)
    assert reason(client, first) == {
        "code": "behind",
        "message": "Behind 0 eligible job(s) of 'cpu' that the claim takes first (higher priority, "
        "or your organization's own jobs queued earlier).",
        "ahead": 0,
        "sharing": 0,
    }
    assert reason(client, second)["ahead"] == 1  # `first` outranks it; `later` and `exhausted` are not eligible

    gpu_job = submit(membership, queue="gpu")
    assert reason(client, gpu_job)["code"] == "no_live_host"

    services.job_claim_next(queue="cpu", worker="cpu@live")
    assert reason(client, first) is None  # running: nothing to explain


def test_cli_lists_pauses_and_resumes_queues_as_a_superuser(member, operator, capsys):
    membership, _ = member("developer")
    submit(membership)
    call_command("queues", "pause", "gpu", "--reason", "maintenance", "--as", "root")
    call_command("queues", "list")
    listing = capsys.readouterr().out
    assert "gpu        paused" in listing and "maintenance" in listing and "cpu        running        1" in listing
    call_command("queues", "resume", "gpu", "--as", "root")
    assert "gpu: running" in capsys.readouterr().out

    with pytest.raises(CommandError) as refused:
        call_command("queues", "pause", "cpu", "--as", membership.user.username)
    assert "not a superuser" in str(refused.value)


def test_jobs_show_prints_the_wait_reason(member, capsys):
    membership, _ = member("developer")
    job = submit(membership, run_after=timezone.now() + timedelta(minutes=5))
    call_command("jobs", "show", str(job.pk), "--as", membership.user.username)
    assert "waiting: Not before" in capsys.readouterr().out


def test_queues_are_paused_and_resumed_from_the_admin(client, operator):
    from apps.jobs.models import QueueState

    QueueState.objects.get_or_create(name="cpu")
    client.force_login(operator)
    client.post("/admin/jobs/queuestate/", {"action": "pause_queues", "_selected_action": ["cpu"]})
    assert QueueState.objects.get(name="cpu").paused
    client.post("/admin/jobs/queuestate/", {"action": "resume_queues", "_selected_action": ["cpu"]})
    assert not QueueState.objects.get(name="cpu").paused
    assert AuditEvent.objects.filter(action="queue.paused", actor=operator).exists()


def test_operators_pause_and_resume_queues_through_rest(member, operator):
    from rest_framework.test import APIClient

    membership, member_client = member("owner")
    job = submit(membership)
    client = APIClient()
    client.force_login(operator)

    paused = client.patch("/api/v1/queues/cpu/", {"paused": True, "reason": "driver upgrade"}, format="json")
    assert paused.status_code == 200
    assert paused.json() == {"name": "cpu", "paused": True, "reason": "driver upgrade", "queued": 1}
    assert services.job_claim_next(queue="cpu", worker="cpu@test") is None
    assert member_client.get("/api/v1/queues/cpu/").json()["paused"] is True
    assert reason(member_client, job)["code"] == "queue_paused"

    resumed = client.patch("/api/v1/queues/cpu/", {"paused": False}, format="json")
    assert resumed.status_code == 200 and resumed.json()["paused"] is False
    assert services.job_claim_next(queue="cpu", worker="cpu@test").pk == job.pk
    actions = list(AuditEvent.objects.filter(organization=None).values_list("action", flat=True))
    assert "queue.paused" in actions and "queue.resumed" in actions


def test_pausing_through_rest_is_refused_clearly(member, operator):
    from rest_framework.test import APIClient

    _, owner_client = member("owner")
    refused = owner_client.patch("/api/v1/queues/cpu/", {"paused": True}, format="json")
    assert refused.status_code == 403 and refused.json()["code"] == "permission_denied"
    assert "platform operators" in refused.json()["detail"]

    client = APIClient()
    client.force_login(operator)
    sandbox = client.patch("/api/v1/queues/sandbox/", {"paused": True}, format="json")
    assert sandbox.status_code == 400 and "queue" in sandbox.json()["fields"]
    unknown = client.patch("/api/v1/queues/nope/", {"paused": True}, format="json")
    assert unknown.status_code == 404 and "cpu" in unknown.json()["detail"]
    loose = client.patch("/api/v1/queues/cpu/", {"paused": "yes"}, format="json")
    assert loose.status_code == 400 and "paused" in loose.json()["fields"]
    from apps.jobs.models import QueueState

    assert not QueueState.objects.filter(paused=True).exists()


def test_behind_counts_only_the_jobs_the_claim_would_take_first(member, live_cpu_host):
    """Jobs held by their organization's limit are not ahead; other organizations at the same priority share."""
    from apps.accounts.services import organization_quota_set

    mine, client = member("developer")
    limited, _ = member("developer")
    peer, _ = member("developer")
    organization_quota_set(organization=limited.organization, actor=None, running_jobs={"cpu": 1})
    running = submit(limited, priority=9)
    services.job_claim_next(queue="cpu", worker="cpu@live")  # takes it: `limited` is at its limit now
    assert Job.objects.get(pk=running.pk).status == "running"
    held = [submit(limited, priority=9) for _ in range(3)]  # higher priority, but held by the limit
    submit(mine, priority=5)
    job = submit(mine, priority=5)
    submit(peer, priority=5)
    submit(peer, priority=7)

    why = reason(client, job)
    assert why["code"] == "behind"
    assert why["ahead"] == 2  # peer's priority-7 job, and my own earlier job; not `held`
    assert why["sharing"] == 1  # peer has work at my priority: fair share decides between us
    assert "fair share" in why["message"]
    assert all(Job.objects.get(pk=h.pk).status == "queued" for h in held)


def test_a_start_rate_holds_jobs_queued_and_says_so(member, live_cpu_host):
    """starts_per_minute: the claim passes over a kind that started its quota in the last 60 s (database clock)."""
    from apps.accounts.services import organization_quota_set

    limited, client = member("developer")
    other, _ = member("developer")
    organization_quota_set(organization=limited.organization, actor=None, starts_per_minute={"sleep": 2})
    mine = [submit(limited, priority=9) for _ in range(3)]
    theirs = submit(other, priority=0)

    taken = [services.job_claim_next(queue="cpu", worker="cpu@live") for _ in range(3)]
    assert [job.pk for job in taken] == [mine[0].pk, mine[1].pk, theirs.pk]  # the third of mine waits
    assert services.job_claim_next(queue="cpu", worker="cpu@live") is None
    why = reason(client, mine[2])
    assert why["code"] == "rate_limited" and "started 2 sleep jobs in the last minute, at most 2" in why["message"]
    assert client.get("/api/v1/quota").json()["starts_per_minute"] == {"sleep": {"limit": 2, "used": 2}}

    # The window slides: once the starts are older than 60 s, the next one may start.
    Job.objects.filter(pk__in=[mine[0].pk, mine[1].pk]).update(started_at=timezone.now() - timedelta(seconds=61))
    assert services.job_claim_next(queue="cpu", worker="cpu@live").pk == mine[2].pk


def test_the_ring_rings_for_nothing_a_limit_holds(member, queue_depth):
    from apps.accounts.services import organization_quota_set

    limited, _ = member("developer")
    organization_quota_set(organization=limited.organization, actor=None, starts_per_minute={"sleep": 1})
    for _ in range(3):
        submit(limited)
    Job.objects.filter(organization=limited.organization).update(status="queued")
    first = Job.objects.filter(organization=limited.organization).first()
    Job.objects.filter(pk=first.pk).update(status="succeeded", started_at=timezone.now())
    assert services.jobs_ring() == {}  # both remaining jobs are held by the rate
    assert queue_depth("cpu") == 0
