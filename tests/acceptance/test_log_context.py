"""Every log line of a job names the job, its Celery task and its organization, in web and worker alike."""

import io
import json
import logging
import time

import pytest
from django.conf import settings
from pythonjsonlogger.json import JsonFormatter

from apps.core.logs import TaskContextFilter
from apps.jobs.models import Job

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture
def web_log():
    """What the web process writes, through the same filter and JSON formatter as settings.LOGGING."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(TaskContextFilter())
    options = {key: value for key, value in settings.LOGGING["formatters"]["json"].items() if key != "()"}
    handler.setFormatter(JsonFormatter(options.pop("format"), **options))
    logging.getLogger().addHandler(handler)
    yield stream
    logging.getLogger().removeHandler(handler)


def test_web_and_worker_lines_carry_job_task_and_organization(start_worker, member, web_log):
    membership, client = member("developer")
    response = client.post(
        "/api/v1/jobs/", {"kind": "sleep", "params": {"duration_s": 0.1}}, format="json", HTTP_X_REQUEST_ID="req-42"
    )
    assert response.status_code == 201 and response["X-Request-ID"] == "req-42"
    job = Job.objects.get(pk=response.json()["id"])

    web = [line for line in json_lines(web_log.getvalue()) if line["message"] == "job.submitted"]
    assert len(web) == 1
    assert web[0]["job_id"] == str(job.id) and web[0]["organization_id"] == membership.organization_id
    assert web[0]["request_id"] == "req-42"

    worker = start_worker("cpu")
    deadline = time.monotonic() + 30
    while Job.objects.get(pk=job.pk).status != "succeeded":
        assert time.monotonic() < deadline, "job did not succeed"
        time.sleep(0.1)
    worker.stop()
    lines = [line for line in json_lines(worker.log()) if line.get("job_id") == str(job.id)]
    assert {"job.claimed", "job.finished"} <= {line["message"] for line in lines}
    for line in lines:
        assert line["organization_id"] == membership.organization_id, line
        assert line["task_id"] == job.task_id, line


def test_an_unsafe_request_id_is_replaced(client):
    response = client.get("/healthz", HTTP_X_REQUEST_ID="bad id\nwith newline")
    assert response["X-Request-ID"] != "bad id\nwith newline" and len(response["X-Request-ID"]) == 32
