"""Bulk submit: all jobs or none, every bad item named by index and field, doorbells without one publish per job."""

import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from apps.accounts.services import organization_quota_set
from apps.jobs.models import Job, JobEvent

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_thousand_jobs_in_one_request_in_order_with_few_doorbells(member, queue_depth, settings, broker):
    settings.JOBS_DOORBELLS_AHEAD = 8
    membership, client = member("developer")
    body = {"jobs": [{"kind": "sleep", "params": {"duration_s": 0}, "priority": i % 10} for i in range(1000)]}
    response = client.post("/api/v1/jobs/bulk", body, format="json")
    assert response.status_code == 201, response.json()
    jobs = response.json()["jobs"]
    assert len(jobs) == 1000 and [job["priority"] for job in jobs] == [i % 10 for i in range(1000)]
    assert Job.objects.filter(organization=membership.organization, status="queued").count() == 1000
    assert JobEvent.objects.filter(job__organization=membership.organization, to_status="queued").count() == 1000
    assert queue_depth("cpu") == 8  # the queue's missing doorbells, not one per job


def test_one_bad_item_refuses_the_whole_request_and_names_each_problem(member):
    _, client = member("developer")
    body = {
        "jobs": [
            {"kind": "sleep", "params": {}},
            {"kind": "sleep", "params": {"duration_s": "long"}},
            {"kind": "nope"},
            {"kind": "sleep", "priority": "5"},
            "not an object",
        ]
    }
    response = client.post("/api/v1/jobs/bulk", body, format="json")
    assert response.status_code == 400
    fields = response.json()["fields"]
    assert set(fields) >= {"jobs[1].params.duration_s", "jobs[2].kind", "jobs[3].priority"}
    assert any(name.startswith("jobs[4].") for name in fields)
    assert "jobs[0]" not in " ".join(fields)
    assert Job.objects.count() == 0


def test_the_batch_size_is_bounded(member, settings):
    _, client = member("developer")
    too_many = {"jobs": [{"kind": "sleep"}] * (settings.JOBS_BULK_MAX + 1)}
    response = client.post("/api/v1/jobs/bulk", too_many, format="json")
    assert response.status_code == 400 and "jobs" in response.json()["fields"]
    empty = client.post("/api/v1/jobs/bulk", {"jobs": []}, format="json")
    assert empty.status_code == 400
    assert Job.objects.count() == 0


def test_quotas_are_checked_once_for_the_whole_batch(member):
    membership, client = member("developer")
    organization_quota_set(organization=membership.organization, actor=None, concurrent_jobs={"sleep": 5})
    response = client.post("/api/v1/jobs/bulk", {"jobs": [{"kind": "sleep"}] * 6}, format="json")
    assert response.status_code == 429
    assert "this request adds 6" in response.json()["detail"]
    assert Job.objects.count() == 0
    assert client.post("/api/v1/jobs/bulk", {"jobs": [{"kind": "sleep"}] * 5}, format="json").status_code == 201


def test_a_role_that_may_not_submit_a_kind_is_refused_for_the_whole_batch(member):
    _, client = member("viewer")
    response = client.post("/api/v1/jobs/bulk", {"jobs": [{"kind": "sleep"}]}, format="json")
    assert response.status_code == 403 and response.json()["detail"].startswith("jobs[0]:")
    assert Job.objects.count() == 0


def test_cli_submits_a_file_of_jobs_all_or_none(member, tmp_path, capsys):
    membership, _ = member("developer")
    lines = tmp_path / "jobs.jsonl"
    lines.write_text("\n".join(json.dumps({"kind": "sleep", "params": {"duration_s": 0}}) for _ in range(3)) + "\n")
    call_command("jobs", "submit", "--from-file", str(lines), "--as", membership.user.username)
    assert "submitted 3 jobs (3 on cpu)" in capsys.readouterr().out
    assert Job.objects.count() == 3

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"kind": "sleep"}, {"kind": "sleep", "params": {"duration_s": -1}}]))
    with pytest.raises(CommandError) as refused:
        call_command("jobs", "submit", "--from-file", str(bad), "--as", membership.user.username)
    assert "jobs[1].params.duration_s" in str(refused.value)
    assert Job.objects.count() == 3
