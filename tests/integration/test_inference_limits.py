"""Request and error limits of the inference path: large inline bodies, oversized bodies as JSON 413, no tracebacks."""

import json

import pytest

from apps.jobs.models import Job, JobStatus
from workers.testing_models import build_test_model

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def scorer(member, tmp_path):
    membership, client = member("owner")
    path = build_test_model("multi_io", tmp_path / "m.onnx")
    with path.open("rb") as handle:
        assert client.post("/api/v1/models/", {"file": handle, "name": "scorer"}, format="multipart").status_code == 201
    return membership, client


@pytest.mark.slow
def test_inline_inputs_near_the_documented_million_values_are_accepted(scorer):
    # Finding 8 of issue 20: a JSON body over 10 MB got an HTML 400, so 1M inline values could not be sent.
    _, client = scorer
    rows = 142_000  # 142,000 x (4 + 3) = 994,000 values, ~14 MB of JSON
    x = [[0.123456789, -1.23456789, 12.3456789, -0.000123456]] * rows
    ids = [[123456, -654321, 42]] * rows
    body = json.dumps({"kind": "inference", "params": {"model": "scorer@1", "inputs": {"x": x, "ids": ids}}})
    assert len(body) > 10 * 1024 * 1024

    response = client.generic("POST", "/api/v1/jobs/", body, content_type="application/json")

    assert response.status_code == 201, response.content[:500]


def test_a_body_over_the_limit_gets_a_json_413_in_the_error_shape(scorer, settings):
    _, client = scorer
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024
    body = json.dumps({"kind": "inference", "params": {"model": "scorer@1", "inputs": {"x": [[1.0] * 4] * 60_000}}})

    response = client.generic("POST", "/api/v1/jobs/", body, content_type="application/json")

    assert response.status_code == 413
    data = response.json()
    assert data["code"] == "request_too_large" and data["fields"] == {}
    assert "1048576" in data["detail"] and "inputs_artifact" in data["detail"]


def test_an_internal_error_shows_no_traceback_in_the_api(scorer):
    membership, client = scorer
    job = Job.objects.create(
        organization=membership.organization, owner=membership.user, kind="compile", params={}, queue="cpu"
    )
    error = {"code": "internal_error", "message": "MemoryError: ", "details": {"traceback": "Traceback (most..."}}
    Job.objects.filter(pk=job.pk).update(status=JobStatus.FAILED, error=error)

    body = client.get(f"/api/v1/jobs/{job.pk}/").content.decode()
    listed = client.get("/api/v1/jobs/").content.decode()

    assert "Traceback" not in body and "Traceback" not in listed
    assert "internal_error" in body
