from datetime import timedelta

import pytest
from django.utils import timezone

from apps.jobs import services
from apps.jobs.models import Job, JobEvent, JobStatus

pytestmark = pytest.mark.django_db(transaction=True)


def submit(client, body=None, **headers):
    return client.post(
        "/api/v1/jobs/", body or {"kind": "sleep", "params": {"duration_s": 0}}, format="json", **headers
    )


def test_submit_records_the_job_and_its_first_event_and_publishes_once(member, queue_depth):
    membership, client = member("developer")
    response = submit(client, {"kind": "sleep", "params": {"duration_s": 1.5, "steps": 3}, "priority": 7})
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == "queued" and body["queue"] == "cpu" and body["priority"] == 7
    assert body["params"] == {
        "duration_s": 1.5,
        "steps": 3,
        "queue": "cpu",
        "fail_first_attempts": 0,
        "snooze_first_s": 0.0,
    }
    job = Job.objects.get(pk=body["id"])
    assert job.organization == membership.organization and job.owner == membership.user
    assert list(job.events.values_list("to_status", flat=True)) == ["queued"]
    assert queue_depth("cpu") == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "sleep", "params": {"duration_s": -1}}, "params.duration_s"),
        ({"kind": "sleep", "params": {"duration_s": "soon"}}, "params.duration_s"),
        ({"kind": "sleep", "params": {"steps": 0}}, "params.steps"),
        ({"kind": "sleep", "params": {"bogus": 1}}, "params.bogus"),
        ({"kind": "sleep", "params": {"queue": "moon"}}, "params.queue"),
        ({"kind": "teleport", "params": {}}, "kind"),
        ({"kind": "sleep", "params": [1, 2]}, "params"),
        ({"kind": "sleep", "params": {}, "priority": 12}, "priority"),
    ],
)
def test_invalid_submit_is_400_with_the_field_and_leaves_no_row_and_no_message(member, queue_depth, body, field):
    _, client = member("developer")
    response = submit(client, body)
    assert response.status_code == 400
    error = response.json()
    assert error["code"] == "invalid"
    assert field in error["fields"], error
    assert error["detail"].startswith(field)
    assert Job.objects.count() == 0
    assert queue_depth("cpu") == 0 and queue_depth("control") == 0


def test_idempotency_key_returns_the_same_job(member, queue_depth):
    _, client = member("developer")
    first = submit(client, HTTP_IDEMPOTENCY_KEY="order-42")
    second = submit(client, HTTP_IDEMPOTENCY_KEY="order-42")
    assert first.status_code == 201 and second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    assert Job.objects.count() == 1 and queue_depth("cpu") == 1


def test_idempotency_keys_are_per_organization(member):
    _, client_a = member("developer")
    _, client_b = member("developer")
    a = submit(client_a, HTTP_IDEMPOTENCY_KEY="k")
    b = submit(client_b, HTTP_IDEMPOTENCY_KEY="k")
    assert a.status_code == b.status_code == 201
    assert a.json()["id"] != b.json()["id"]


def test_another_organizations_job_is_404_everywhere(member):
    _, owner_client = member("developer")
    _, stranger = member("admin")
    job_id = submit(owner_client).json()["id"]
    for method, path in [
        ("get", f"/api/v1/jobs/{job_id}/"),
        ("get", f"/api/v1/jobs/{job_id}/events"),
        ("get", f"/api/v1/jobs/{job_id}/artifacts"),
        ("post", f"/api/v1/jobs/{job_id}/cancel"),
        ("post", f"/api/v1/jobs/{job_id}/retry"),
    ]:
        response = getattr(stranger, method)(path)
        assert response.status_code == 404, (path, response.status_code)
        assert response.json() == {"detail": "No such job.", "code": "not_found", "fields": {}}
    assert stranger.get("/api/v1/jobs/").json()["results"] == []


def test_viewer_may_read_but_not_submit(member):
    membership, _ = member("developer")
    _, viewer = member("viewer", organization=membership.organization)
    response = submit(viewer)
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"


def test_developer_may_not_cancel_a_colleagues_job_but_an_operator_may(member):
    membership, client = member("developer")
    _, colleague = member("developer", organization=membership.organization)
    _, operator = member("operator", organization=membership.organization)
    job_id = submit(client).json()["id"]
    assert colleague.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 403
    response = operator.post(f"/api/v1/jobs/{job_id}/cancel")
    assert response.status_code == 202 and response.json()["status"] == "cancelled"


def test_cancel_of_a_queued_job_is_immediate(member):
    _, client = member("developer")
    job_id = submit(client).json()["id"]
    response = client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert response.status_code == 202
    assert response.json()["status"] == "cancelled"
    assert client.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 409
    events = client.get(f"/api/v1/jobs/{job_id}/events").json()["results"]
    assert [(e["from_status"], e["to_status"]) for e in events] == [("", "queued"), ("queued", "cancelled")]


def test_list_filters_and_cursor_pagination(member):
    _, client = member("developer")
    ids = [submit(client).json()["id"] for _ in range(5)]
    client.post(f"/api/v1/jobs/{ids[0]}/cancel")
    page = client.get("/api/v1/jobs/?page_size=2").json()
    assert len(page["results"]) == 2 and page["next"]
    seen = [job["id"] for job in page["results"]]
    while page["next"]:
        page = client.get(page["next"]).json()
        seen += [job["id"] for job in page["results"]]
    assert sorted(seen) == sorted(ids)
    cancelled = client.get("/api/v1/jobs/?status=cancelled").json()["results"]
    assert [job["id"] for job in cancelled] == [ids[0]]
    assert len(client.get("/api/v1/jobs/?status=queued&kind=sleep&queue=cpu").json()["results"]) == 4
    future = (timezone.now() + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    assert client.get("/api/v1/jobs/", {"created_after": future}).json()["results"] == []


def test_full_queue_answers_503_with_retry_after(member, settings, monkeypatch):
    settings.JOBS_QUEUE_MAX_BACKLOG = 2
    monkeypatch.setattr(services.submit, "BACKLOG_CACHE_SECONDS", 0)
    _, client = member("developer")
    submit(client)
    submit(client)
    response = submit(client)
    assert response.status_code == 503
    assert response["Retry-After"] == "30"
    assert "holds 2 queued jobs" in response.json()["detail"]
    assert response.json()["details"]["cap"] == "queue_backlog"
    assert Job.objects.count() == 2


def test_one_organizations_flood_meets_its_own_cap_before_the_queues(member, settings, monkeypatch):
    settings.JOBS_ORGANIZATION_MAX_BACKLOG = 2
    settings.JOBS_QUEUE_MAX_BACKLOG = 10
    monkeypatch.setattr(services.submit, "BACKLOG_CACHE_SECONDS", 0)
    _, flooder = member("developer")
    _, bystander = member("developer")
    submit(flooder)
    submit(flooder)
    refused = submit(flooder)
    assert refused.status_code == 503 and refused["Retry-After"] == "30"
    assert refused.json()["details"]["cap"] == "organization_backlog"
    assert "Your organization has 2 jobs queued on 'cpu'" in refused.json()["detail"]
    assert submit(bystander).status_code == 201  # the queue itself still has room for everyone else


def test_openapi_schema_lists_the_job_endpoints(client):
    document = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    for path in [
        "/api/v1/jobs/",
        "/api/v1/jobs/{job_id}/",
        "/api/v1/jobs/{job_id}/cancel",
        "/api/v1/jobs/{job_id}/retry",
        "/api/v1/jobs/{job_id}/events",
        "/api/v1/jobs/{job_id}/artifacts",
    ]:
        assert path in document["paths"], path


# --- the contract, service by service ----------------------------------------------------------


def make_job(member, **params):
    membership, _ = member("developer")
    job, _ = services.job_submit(membership=membership, kind="sleep", params=params)
    return membership, job


def test_claim_is_conditional_a_second_claim_finds_nothing(member):
    _, job = make_job(member)
    first = services.job_claim(job_id=job.id, worker="cpu@a")
    assert first is not None and first.attempt == 1 and first.status == "running"
    assert services.job_claim(job_id=job.id, worker="cpu@b") is None


def test_finish_is_fenced_by_the_attempt(member):
    _, job = make_job(member)
    claimed = services.job_claim(job_id=job.id, worker="cpu@a")
    assert not services.job_finish(job_id=job.id, attempt=claimed.attempt + 1, status="succeeded", result={})
    assert services.job_finish(job_id=job.id, attempt=claimed.attempt, status="succeeded", result={"ok": 1})
    assert not services.job_finish(job_id=job.id, attempt=claimed.attempt, status="failed")
    job.refresh_from_db()
    assert job.status == "succeeded" and job.result == {"ok": 1}


def test_reaper_requeues_an_expired_lease_and_fences_out_the_old_attempt(member):
    _, job = make_job(member)
    claimed = services.job_claim(job_id=job.id, worker="cpu@dead")
    Job.objects.filter(pk=job.id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert services.jobs_reap()["requeued"] == 1
    job.refresh_from_db()
    assert job.status == "queued"
    second = services.job_claim(job_id=job.id, worker="cpu@alive")
    assert second.attempt == claimed.attempt + 1
    assert not services.job_progress(job_id=job.id, attempt=claimed.attempt, progress=0.5)
    assert services.job_heartbeat(job_id=job.id, attempt=claimed.attempt) is None


def test_reaper_fails_a_job_whose_attempts_are_exhausted_and_it_can_be_retried(member):
    membership, job = make_job(member)
    Job.objects.filter(pk=job.id).update(max_attempts=1)
    services.job_claim(job_id=job.id, worker="cpu@dead")
    Job.objects.filter(pk=job.id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert services.jobs_reap()["failed"] == 1
    job.refresh_from_db()
    assert job.status == "failed" and job.error["code"] == "attempts_exhausted"
    retried = services.job_retry(job=job, actor=membership)
    assert retried.status == "queued" and retried.max_attempts > retried.attempt == 1


def test_the_ring_restores_a_lost_doorbell_at_once(member, queue_depth):
    make_job(member)
    from project.celery import app

    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge("cpu")
    assert queue_depth("cpu") == 0
    assert services.jobs_reap()["rung"] == 1  # no waiting period: the state says a doorbell is missing
    assert queue_depth("cpu") == 1
    assert services.jobs_ring() == {}  # and one is enough


def test_only_one_reaper_runs_at_a_time(member):
    with services.leader_turn("reaper", seconds=60) as mine:
        assert mine
        assert services.jobs_reap() == {"skipped": True}
    assert services.jobs_reap() != {"skipped": True}  # given back at the end of the turn


def test_cancelling_a_running_job_marks_it_cancelling_and_the_heartbeat_reports_it(member):
    membership, job = make_job(member)
    claimed = services.job_claim(job_id=job.id, worker="cpu@a")
    services.job_cancel(job=job, actor=membership)
    assert services.job_heartbeat(job_id=job.id, attempt=claimed.attempt) == "cancelling"
    assert JobEvent.objects.filter(job=job, to_status="cancelling").count() == 1
    assert Job.objects.get(pk=job.id).status == JobStatus.CANCELLING
